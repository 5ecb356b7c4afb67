//go:build linux

package httpd

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// fileCache is the native engine's open file cache (nginx's
// open_file_cache): open descriptors with their size, modification time,
// ETag and type, and the bytes of small files, so a hot file costs no
// open(2) or stat(2) per request. An entry is checked against the disk
// again once it is older than `valid`; at most `max` entries are kept.
// It belongs to one event loop and needs no lock.
type fileCache struct {
	path    string // the document root as configured, perhaps through a symlink
	root    int    // O_PATH descriptor of the directory path named when last checked
	rootID  [2]uint64
	follow  bool
	valid   time.Duration
	max     int
	entries map[string]*file

	// noOpenat2: openat2 answered ENOSYS (a kernel before 5.6, or a
	// seccomp filter that does not know the call): files are opened
	// through fsRoot, Go's os.Root on the same directory, instead.
	noOpenat2 bool
	fsRoot    *os.Root

	// shortLogged: running out of descriptors was logged; reset when a
	// file opens again, so each episode is logged once.
	shortLogged bool
}

// file is one cached file. refs counts the responses still sending it; a
// replaced or evicted file closes its descriptor when the last one ends.
type file struct {
	name    string // relative to the root
	fd      int
	size    int64
	mtime   time.Time
	ino     uint64
	etag    string
	lastMod string // Last-Modified, formatted once
	ctype   string
	gz      string // the name of its precompressed sibling
	small   []byte // the whole content, for files up to smallFile
	checked time.Time
	refs    int
	dead    bool
	dir     bool  // a directory: no descriptor kept
	err     error // a remembered failure (missing, forbidden): no descriptor
}

const smallFile = 16 << 10

var (
	errEscape     = errors.New("path escapes the root")
	errNotRegular = errors.New("not a regular file") // a FIFO, device or socket: never opened for reading
)

func newFileCache(root string, follow bool) (*fileCache, error) {
	c := &fileCache{path: root, root: -1, follow: follow, valid: time.Second, max: 4096, entries: map[string]*file{}}
	if _, err := c.refreshRoot(); err != nil {
		return nil, err
	}
	return c, nil
}

// refreshRoot follows the document root's path to the directory it names
// now. A deploy that switches a symlink (current -> release-2 ->
// release-3) or renames a new tree into place is served from the next
// check on, as nginx resolves its root per request; the engine checks
// twice a second, which costs one stat(2). Files cached from the old tree
// are dropped; answers still sending them finish. If the path cannot be
// opened (a root removed before its successor is in place) the old
// directory keeps being served and err says why.
func (c *fileCache) refreshRoot() (changed bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(c.path, &st); err != nil {
		return false, fmt.Errorf("root %s: %w", c.path, err)
	}
	if c.root >= 0 && c.rootID == [2]uint64{st.Dev, st.Ino} {
		return false, nil
	}
	fd, err := unix.Open(c.path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("root %s: %w", c.path, err)
	}
	if err := unix.Fstat(fd, &st); err != nil { // what was opened, if it changed again since
		unix.Close(fd)
		return false, fmt.Errorf("root %s: %w", c.path, err)
	}
	if c.root >= 0 {
		unix.Close(c.root)
		for _, f := range c.entries {
			c.drop(f)
		}
	}
	if c.fsRoot != nil {
		c.fsRoot.Close()
		c.fsRoot = nil
	}
	c.root, c.rootID = fd, [2]uint64{st.Dev, st.Ino}
	return true, nil
}

// openAt opens name under the root with flags: with openat2, so that the
// kernel refuses any resolution that leaves the root — ".." and symlinks
// included, containment that no string check can match — unless
// following symlinks is allowed. Where openat2 is missing it is Go's
// os.Root that walks the path, a component at a time with O_NOFOLLOW,
// resolving symlinks itself and refusing what leaves the root. (herd's
// own systemd unit found it missing: under its SystemCallFilter=, with
// this machine's systemd 252, the call answered ENOSYS, and every file
// was a 500.)
func (c *fileCache) openAt(name string, flags int) (int, error) {
	if !c.noOpenat2 {
		how := unix.OpenHow{Flags: uint64(flags), Resolve: unix.RESOLVE_NO_MAGICLINKS}
		if !c.follow {
			how.Resolve |= unix.RESOLVE_BENEATH
		}
		fd, err := unix.Openat2(c.root, name, &how)
		switch err {
		case unix.ENOSYS:
			c.noOpenat2 = true
		case unix.EXDEV, unix.ELOOP:
			return -1, errEscape
		default:
			return fd, err
		}
	}
	if c.follow {
		fd, err := unix.Openat(c.root, name, flags, 0)
		if err == unix.ELOOP {
			err = errEscape // as openat2 answers it
		}
		return fd, err
	}
	if c.fsRoot == nil {
		r, err := os.OpenRoot("/proc/self/fd/" + strconv.Itoa(c.root)) // the very directory c.root is
		if err != nil {
			if r, err = os.OpenRoot(c.path); err != nil {
				return -1, err
			}
		}
		c.fsRoot = r
	}
	f, err := c.fsRoot.OpenFile(name, flags, 0)
	if err != nil {
		var errno unix.Errno
		if !errors.As(err, &errno) || errno == unix.ELOOP || errno == unix.EXDEV {
			return -1, errEscape // os.Root's "path escapes from parent"
		}
		return -1, errno
	}
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	// A copy of the descriptor: Fd would make it blocking, and the *os.File
	// closes its own.
	if err := rc.Control(func(x uintptr) { fd, derr = unix.FcntlInt(x, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// open returns the file at name (relative, cleaned, no ".."), a directory
// flag, or an error: fs-like ENOENT, or errEscape when the path leads out
// of the root (through a symlink, unless following is allowed).
func (c *fileCache) open(name string, now time.Time) (*file, bool, error) {
	f, ok := c.entries[name]
	if ok && now.Sub(f.checked) >= c.valid {
		if f.err == nil && c.unchanged(f) {
			f.checked = now
		} else {
			c.drop(f) // changed, gone, or a failure worth trying again
			ok = false
		}
	}
	if !ok {
		f = c.load(name, now)
		if f.err != nil && !lasting(f.err) {
			return f.result() // out of descriptors, an I/O error: try again next time
		}
		if len(c.entries) >= c.max {
			for _, old := range c.entries { // evict an arbitrary entry
				c.drop(old)
				break
			}
		}
		c.entries[name] = f
	}
	return f.result()
}

// lookup is open for a name held as bytes: a cached entry still fresh is
// found without allocating (indexing a map with string(b) does not copy b).
func (c *fileCache) lookup(name []byte, now time.Time) (*file, bool, error) {
	if f, ok := c.entries[string(name)]; ok && now.Sub(f.checked) < c.valid {
		return f.result()
	}
	return c.open(string(name), now)
}

// lasting reports whether a failure to open describes the file rather
// than the moment, and may be remembered until the entry is checked again.
func lasting(err error) bool {
	switch err {
	case unix.ENOENT, unix.ENOTDIR, unix.ENAMETOOLONG, unix.ENXIO, unix.EACCES, unix.EPERM, errEscape, errNotRegular:
		return true
	}
	return false
}

// result is what open returns for the entry.
func (f *file) result() (*file, bool, error) {
	switch {
	case f.err != nil:
		return nil, false, f.err
	case f.dir:
		return nil, true, nil
	}
	return f, false, nil
}

// unchanged: the path still names the same file, same size and time.
func (c *fileCache) unchanged(f *file) bool {
	var st unix.Stat_t
	return unix.Fstatat(c.root, f.name, &st, 0) == nil && st.Ino == f.ino &&
		st.Size == f.size && st.Mtim == unix.NsecToTimespec(f.mtime.UnixNano())
}

// load opens name under the root. Failures are remembered too (a missing
// .gz sibling is looked for on every request), until the entry is checked
// again.
//
// The open is non-blocking: opening a FIFO for reading blocks until a
// writer appears, and the loop would hang with it (nginx opens with
// O_NONBLOCK for the same reason). Anything but a regular file or a
// directory is then refused. On a regular file O_NONBLOCK changes nothing
// (pread and sendfile from a disk file do not return EAGAIN), so it stays.
func (c *fileCache) load(name string, now time.Time) *file {
	f := &file{name: name, fd: -1, checked: now}
	fd, err := c.openAt(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK)
	if err != nil {
		f.err = err
		return f
	}
	c.shortLogged = false
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		f.err = err
		return f
	}
	f.size, f.ino = st.Size, st.Ino
	f.mtime = time.Unix(st.Mtim.Unix())
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		unix.Close(fd)
		f.dir = true
		return f
	case unix.S_IFREG:
	default:
		unix.Close(fd)
		f.err = errNotRegular // devices, fifos, sockets: never
		return f
	}
	f.fd = fd
	f.etag = fmt.Sprintf(`"%x-%x"`, f.mtime.Unix(), st.Size) // nginx's form
	f.lastMod = f.mtime.UTC().Format(http.TimeFormat)
	f.ctype = contentType(name)
	f.gz = name + ".gz"
	if st.Size <= smallFile {
		buf := make([]byte, st.Size)
		if n, err := unix.Pread(fd, buf, 0); err == nil && int64(n) == st.Size {
			f.small = buf
		}
	}
	return f
}

// dirEntry is one entry of a directory listing.
type dirEntry struct {
	Name    string
	Dir     bool
	Size    int64
	ModTime time.Time
}

// readDir lists the directory name, sorted by name, opened with the same
// containment as files. Entries that vanish while being read are left out.
func (c *fileCache) readDir(name string) ([]dirEntry, error) {
	fd, err := c.openAt(name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NONBLOCK)
	if err != nil {
		return nil, err
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	list := make([]dirEntry, 0, len(names))
	for _, n := range names {
		// Relative to the directory's descriptor: os.DirEntry.Info would
		// look the name up by path again, from the working directory.
		var st unix.Stat_t
		if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
			continue
		}
		list = append(list, dirEntry{Name: n, Dir: st.Mode&unix.S_IFMT == unix.S_IFDIR, Size: st.Size,
			ModTime: time.Unix(st.Mtim.Unix())})
	}
	slices.SortFunc(list, func(a, b dirEntry) int { return strings.Compare(a.Name, b.Name) })
	return list, nil
}

// drop removes f from the cache, closing it now or when its last response ends.
func (c *fileCache) drop(f *file) {
	if c.entries[f.name] == f {
		delete(c.entries, f.name)
	}
	f.dead = true
	if f.refs == 0 && f.fd >= 0 {
		unix.Close(f.fd)
	}
}

func (c *fileCache) release(f *file) {
	f.refs--
	if f.dead && f.refs == 0 && f.fd >= 0 {
		unix.Close(f.fd)
	}
}

func (c *fileCache) close() {
	for _, f := range c.entries {
		c.drop(f)
	}
	unix.Close(c.root)
	if c.fsRoot != nil {
		c.fsRoot.Close()
	}
}

func contentType(name string) string {
	if t := mime.TypeByExtension(path.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// plainPath returns the name a request target stands for when its path
// needs no decoding or cleaning — the common case — as a subslice of the
// target, so that a cached file is found without allocating. It refuses
// (ok=false: use cleanPath) a path with an escape, a backslash, a NUL, an
// empty segment, a segment starting with a dot, or a trailing slash.
func plainPath(target []byte) (name []byte, ok bool) {
	if i := bytes.IndexAny(target, "?#"); i >= 0 {
		target = target[:i]
	}
	if len(target) < 2 || target[0] != '/' || target[len(target)-1] == '/' {
		return nil, false
	}
	for i, c := range target {
		switch {
		case c == '%' || c == '\\' || c == 0:
			return nil, false
		case c == '/' && (target[i+1] == '/' || target[i+1] == '.'):
			return nil, false // the last byte is not a slash, so i+1 exists
		}
	}
	return target[1:], true
}

// cleanPath turns a request target's path into a name relative to the
// root: percent-decoded, "." and ".." resolved lexically (so nothing can
// climb above "/"), without the leading slash. dir reports a trailing
// slash, or a last segment "." or ".." (the name is then a directory's).
// A NUL, a bad escape or a backslash is refused.
func cleanPath(target []byte) (name string, dir bool, ok bool) {
	p := string(target)
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if !strings.HasPrefix(p, "/") {
		return "", false, false
	}
	if strings.IndexByte(p, '%') >= 0 {
		var b strings.Builder
		for i := 0; i < len(p); i++ {
			if p[i] != '%' {
				b.WriteByte(p[i])
				continue
			}
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return "", false, false
			}
			b.WriteByte(unhex(p[i+1])<<4 | unhex(p[i+2]))
			i += 2
		}
		p = b.String()
	}
	if strings.ContainsAny(p, "\x00\\") {
		return "", false, false
	}
	if climbs(p) {
		return "", false, false // "/../x": above the root, a bad request (nginx: 400)
	}
	dir = strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")
	name = strings.TrimPrefix(path.Clean(p), "/")
	if name == "" {
		name = "."
	}
	return name, dir, true
}

// climbs reports whether a decoded path has a ".." segment that would
// leave "/". path.Clean would silently stop at the root; a request that
// tries to climb out of it is refused instead.
func climbs(p string) bool {
	depth := 0
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

func isHex(c byte) bool { return isDigit(c) || 'a' <= c|0x20 && c|0x20 <= 'f' }

func unhex(c byte) byte {
	if isDigit(c) {
		return c - '0'
	}
	return c | 0x20 - 'a' + 10
}

// detach hands over the hold a response has on f for a response that
// another engine will finish: a copy of f with a descriptor of its own,
// outside any cache, closed when that engine releases it. nil if the
// descriptor cannot be duplicated.
func (c *fileCache) detach(f *file) *file {
	fd, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	c.release(f)
	if err != nil {
		return nil
	}
	own := *f
	own.fd, own.refs, own.dead = fd, 1, true
	return &own
}
