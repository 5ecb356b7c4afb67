//go:build linux

package master

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/herd-run/herd/internal/proto"
	"golang.org/x/sys/unix"
)

// Credentials are who workers run as: the master binds its sockets (port
// 80 and below, root-owned paths) as whoever starts it, and each worker
// drops to these before it runs a line of herd — setgroups, setgid and
// setuid happen in the child between fork and exec (os/exec's
// SysProcAttr.Credential), as nginx's workers become "user nobody". A
// worker that serves files as root serves a file of mode 000 to anyone.
type Credentials struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups: the user's, or only GID when a group was named
	Name     string   // for logs
}

// lookupCredentials resolves --user NAME|UID and --group NAME|GID. An empty
// group means the user's primary group and supplementary groups.
func lookupCredentials(userName, groupName string) (*Credentials, error) {
	if userName == "" {
		if groupName != "" {
			return nil, errors.New("--group needs --user")
		}
		return nil, nil
	}
	u, err := lookupUser(userName)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", userName, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	c := &Credentials{UID: uint32(uid), GID: uint32(gid), Name: u.Username}
	if groupName != "" {
		g, err := lookupGroup(groupName)
		if err != nil {
			return nil, fmt.Errorf("group %q: %w", groupName, err)
		}
		n, _ := strconv.ParseUint(g.Gid, 10, 32)
		c.GID, c.Groups = uint32(n), []uint32{uint32(n)}
		return c, nil
	}
	ids, err := u.GroupIds()
	if err != nil {
		ids = []string{u.Gid}
	}
	for _, id := range ids {
		if n, err := strconv.ParseUint(id, 10, 32); err == nil {
			c.Groups = append(c.Groups, uint32(n))
		}
	}
	return c, nil
}

func lookupUser(s string) (*user.User, error) {
	if _, err := strconv.Atoi(s); err == nil {
		return user.LookupId(s)
	}
	return user.Lookup(s)
}

func lookupGroup(s string) (*user.Group, error) {
	if _, err := strconv.Atoi(s); err == nil {
		return user.LookupGroupId(s)
	}
	return user.LookupGroup(s)
}

// sysProcAttr starts a worker as c (nil: as the master).
func (c *Credentials) sysProcAttr() *syscall.SysProcAttr {
	if c == nil {
		return nil
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: c.Groups}}
}

// chown hands a file the master made for its workers to them (flock's lock
// file, the access log).
func (c *Credentials) chown(path string) error {
	if c == nil {
		return nil
	}
	return os.Chown(path, int(c.UID), int(c.GID))
}

// socketOwnership is --socket-mode and --socket-owner for the unix sockets
// the master creates.
type socketOwnership struct {
	mode     os.FileMode // 0: as umask left it
	uid, gid int         // -1: unchanged
}

// parseSocketOwnership checks a mode and reads an owner ("user",
// "user:group", ":group").
func parseSocketOwnership(mode os.FileMode, owner string) (socketOwnership, error) {
	o := socketOwnership{mode: mode, uid: -1, gid: -1}
	if mode&^0o777 != 0 {
		return o, fmt.Errorf("socket mode %#o: want permission bits only, such as 0660", mode)
	}
	if owner == "" {
		return o, nil
	}
	name, group, _ := strings.Cut(owner, ":")
	if name != "" {
		u, err := lookupUser(name)
		if err != nil {
			return o, fmt.Errorf("socket owner %q: %w", owner, err)
		}
		o.uid, _ = strconv.Atoi(u.Uid)
	}
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return o, fmt.Errorf("socket owner %q: %w", owner, err)
		}
		o.gid, _ = strconv.Atoi(g.Gid)
	}
	return o, nil
}

// apply sets the mode and owner of a unix socket file.
func (o socketOwnership) apply(path string) error {
	if o.mode != 0 {
		if err := os.Chmod(path, o.mode); err != nil {
			return err
		}
	}
	if o.uid >= 0 || o.gid >= 0 {
		return os.Lchown(path, o.uid, o.gid)
	}
	return nil
}

// accessibleBy reports whether c (nil: this process) may access path as
// want asks (unix.R_OK, W_OK, X_OK, ORed), by the mode bits as the kernel
// checks them without ACLs — owner, then group, then others — of the file
// and of every directory above it, which c must be able to search.
func accessibleBy(c *Credentials, path string, want uint32) error {
	if c == nil {
		return unix.Access(path, want)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		if err := modeAllows(c, d, unix.X_OK); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
		if d == "/" {
			break
		}
	}
	return modeAllows(c, abs, want)
}

func modeAllows(c *Credentials, path string, want uint32) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return err
	}
	if c.UID == 0 {
		return nil
	}
	bits := st.Mode & 0o7 // others
	switch {
	case st.Uid == c.UID:
		bits = st.Mode >> 6 & 0o7
	case st.Gid == c.GID || slices.Contains(c.Groups, st.Gid):
		bits = st.Mode >> 3 & 0o7
	}
	if bits&want != want {
		return unix.EACCES
	}
	return nil
}

// checkFiles refuses, before anything starts, what a worker would fail on:
// a document root its user cannot read, an access log no one can open.
func checkFiles(cfg Config, c *Credentials) error {
	who := "herd"
	if c != nil {
		who = "user " + c.Name
	}
	if err := checkTLS(cfg); err != nil {
		return err
	}
	if cfg.StaticRoot != "" {
		if err := accessibleBy(c, cfg.StaticRoot, unix.R_OK|unix.X_OK); err != nil {
			return fmt.Errorf("root %s: %s cannot read it: %w", cfg.StaticRoot, who, err)
		}
	}
	if cfg.AccessLog != "" && cfg.AccessLog != "-" {
		target := cfg.AccessLog
		if _, err := os.Stat(target); errors.Is(err, os.ErrNotExist) {
			target = filepath.Dir(target) // it will be created there
			if err := unix.Access(target, unix.W_OK|unix.X_OK); err != nil {
				return fmt.Errorf("access log %s: cannot create it: %w", cfg.AccessLog, err)
			}
			return nil
		}
		if err := unix.Access(target, unix.W_OK); err != nil {
			return fmt.Errorf("access log %s: cannot write it: %w", cfg.AccessLog, err)
		}
	}
	return nil
}

// prepareAccessLog creates the access log, as the master, and gives it to
// the workers' user: they open it themselves (and again on USR1).
func prepareAccessLog(path string, c *Credentials) error {
	if path == "" || path == "-" || c == nil {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("access log: %w", err)
	}
	f.Close()
	return c.chown(path)
}

// checkTLS refuses a TLS configuration that cannot be served: TLS listeners
// without a certificate, a certificate without TLS listeners (never served
// as plain HTTP without a word), a key that does not match its certificate.
func checkTLS(cfg Config) error {
	files := cfg.TLSCert != "" || cfg.TLSKey != ""
	if len(cfg.addresses()) == 0 && (os.Getenv("LISTEN_FDS") != "" || os.Getenv(proto.UpgradeEnv) != "") && (files || cfg.TLSProgram) {
		// systemd's sockets, or an upgrading master's from systemd, may
		// include TLS ones (named "https"): open checks again once it has them.
		return nil
	}
	switch {
	case len(cfg.TLSListen) == 0 && cfg.RedirectHTTPS:
		return errors.New("tls: --redirect-https needs a TLS listener (--tls-listen)")
	case len(cfg.TLSListen) == 0 && (files || cfg.TLSProgram):
		return errors.New("tls: a certificate is given but no TLS listener (--tls-listen)")
	case len(cfg.TLSListen) == 0:
		return nil
	case !files && !cfg.TLSProgram:
		return errors.New("tls: --tls-listen needs --tls-cert and --tls-key")
	case files && (cfg.TLSCert == "" || cfg.TLSKey == ""):
		return errors.New("tls: --tls-cert and --tls-key go together")
	}
	if files {
		if _, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey); err != nil {
			return fmt.Errorf("tls: %s and %s: %w", cfg.TLSCert, cfg.TLSKey, err)
		}
	}
	return nil
}
