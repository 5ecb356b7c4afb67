// Package httpd serves static files for `herd serve`, two ways: Static, an
// http.Handler for the nethttp engine (and for any program that embeds
// herd), and Engine, herd's own epoll event loop per worker, the default.
package httpd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"
)

// StaticOptions shape a static file handler.
type StaticOptions struct {
	// FollowSymlinks lets a symlink inside the root point outside it. Off,
	// any path that resolves outside the root — by "..", by an encoded
	// "%2e%2e", or through a symlink — is refused.
	FollowSymlinks bool
	// Autoindex lists a directory that has no index.html. Off, such a
	// directory is 403 Forbidden, as in nginx.
	Autoindex bool
}

// Static serves the files under root: GET and HEAD, index.html for
// directories, Content-Type by extension, ranges and conditional requests
// (net/http's ServeContent), and bodies by sendfile(2), because the files
// handed to net/http are *os.File.
func Static(root string, opts StaticOptions) (http.Handler, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", root, bare(err))
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("root %s: not a directory", root)
	}
	d, err := os.Open(root)
	if err == nil {
		_, err = d.Readdirnames(1)
		d.Close()
	}
	if err != nil && !errors.Is(err, io.EOF) /* an empty root is fine */ {
		return nil, fmt.Errorf("root %s: cannot read: %w", root, bare(err))
	}
	var fsys http.FileSystem
	if opts.FollowSymlinks {
		fsys = http.Dir(root)
	} else {
		r, err := os.OpenRoot(root)
		if err != nil {
			return nil, fmt.Errorf("root %s: %w", root, bare(err))
		}
		fsys = rootFS{r}
	}
	return StaticFS(fsys, opts), nil
}

// StaticFS serves fsys with the same rules as Static; for an embedded
// document root, wrap it with http.FS.
func StaticFS(fsys http.FileSystem, opts StaticOptions) http.Handler {
	if !opts.Autoindex {
		fsys = noListing{fsys}
	}
	files := http.FileServer(fsys)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "405 method not allowed", http.StatusMethodNotAllowed)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// rootFS opens files through an os.Root, which refuses any path, symlinks
// included, that resolves outside the root directory. It returns *os.File
// itself so net/http can send bodies with sendfile(2).
type rootFS struct{ root *os.Root }

func (f rootFS) Open(name string) (http.File, error) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		name = "."
	}
	file, err := f.root.Open(name)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		// Escaping the root ("path escapes from parent") and any other
		// refusal is 403, not the 500 net/http would make of it.
		return nil, fs.ErrPermission
	}
	if err != nil {
		return nil, err
	}
	return file, nil
}

// noListing turns a directory without index.html into 403.
type noListing struct{ fs http.FileSystem }

func (n noListing) Open(name string) (http.File, error) {
	f, err := n.fs.Open(name)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		idx, err := n.fs.Open(path.Join(name, "index.html"))
		if err != nil {
			f.Close()
			return nil, fs.ErrPermission
		}
		idx.Close()
	}
	return f, nil
}

// bare strips the *PathError wrapper, whose path the caller already names,
// so the message is one plain line.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
