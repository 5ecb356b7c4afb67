//go:build linux

// Package httpd serves static files for `herd serve`, two ways: Static, an
// http.Handler for the nethttp engine (and for any program that embeds
// herd), and Engine, herd's own epoll event loop per worker, the default.
package httpd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Static serves the files under root: GET and HEAD, index.html for
// directories, Content-Type by extension, ranges and conditional requests
// (net/http's ServeContent), and bodies by sendfile(2), because the files
// handed to net/http are *os.File. The root's path is followed to the
// directory it names now, checked at most once a second, as the native
// engine does (a deploy that switches a symlink is served at once).
func Static(root string, opts Options) (http.Handler, error) {
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
	fsys := &rootFS{path: root, follow: opts.FollowSymlinks}
	if !opts.FollowSymlinks {
		if err := fsys.refresh(); err != nil {
			return nil, fmt.Errorf("root %s: %w", root, bare(err))
		}
	}
	return StaticFS(fsys, opts), nil
}

// StaticFS serves fsys with the same rules as Static; for an embedded
// document root, wrap it with http.FS.
func StaticFS(fsys http.FileSystem, opts Options) http.Handler {
	all := fsys
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
		if p := r.URL.Path; !strings.HasSuffix(p, "/") && isDir(all, p) {
			redirectToDir(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// redirectToDir answers a directory's name without its slash the way the
// native engine does (dirLocation): each segment percent-encoded and the
// query kept. net/http's FileServer would write the decoded name into
// Location, so "/a%20dir" went to "a dir/" and "/q%3Fx" to "q?x/", another
// resource; and the redirect comes before the 403 of a directory that may
// not be listed, as in nginx.
func redirectToDir(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(path.Clean(r.URL.Path), "/")
	query := ""
	if r.URL.RawQuery != "" {
		query = "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", dirLocation(name, []byte(query)))
	w.WriteHeader(http.StatusMovedPermanently)
}

func isDir(fsys http.FileSystem, name string) bool {
	f, err := fsys.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	fi, err := f.Stat()
	return err == nil && fi.IsDir()
}

// rootFS opens files under the document root without blocking (a FIFO
// would pin a goroutine and its thread until a writer comes: each such
// request, one more thread), and only regular files and directories. Off
// FollowSymlinks it opens through an os.Root, which refuses any path,
// symlinks included, that resolves outside the root directory; the root
// is reopened when its path names another directory. It returns *os.File
// itself so net/http can send bodies with sendfile(2).
type rootFS struct {
	path   string
	follow bool

	mu      sync.Mutex
	root    atomic.Pointer[os.Root]
	smallMu sync.Mutex
	small   map[string]*smallEntry
	id      os.FileInfo
	checked atomic.Int64 // unix nanoseconds of the last look at path
}

// refresh reopens the root if its path names another directory now.
func (f *rootFS) refresh() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checked.Store(time.Now().UnixNano())
	fi, err := os.Stat(f.path)
	if err != nil {
		return err
	}
	if f.id != nil && os.SameFile(fi, f.id) {
		return nil
	}
	r, err := os.OpenRoot(f.path)
	if err != nil {
		return err
	}
	if fi, err = r.Stat("."); err != nil {
		r.Close()
		return err
	}
	old := f.root.Swap(r)
	f.id = fi
	if old != nil {
		// An Open in progress may still use it: close it later, not now.
		time.AfterFunc(time.Minute, func() { old.Close() })
	}
	return nil
}

func (f *rootFS) Open(name string) (http.File, error) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		name = "."
	}
	now := time.Now()
	if c := f.cached(name, now); c != nil {
		return &memFile{Reader: bytes.NewReader(c.data), info: c.info}, nil
	}
	var file *os.File
	var err error
	if f.follow {
		file, err = os.OpenFile(filepath.Join(f.path, filepath.FromSlash(name)), os.O_RDONLY|unix.O_NONBLOCK, 0)
	} else {
		if time.Now().UnixNano()-f.checked.Load() > int64(time.Second) {
			f.refresh() // on failure, the directory opened last serves on
		}
		file, err = f.root.Load().OpenFile(name, os.O_RDONLY|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return nil, openError(err)
	}
	fi, err := file.Stat()
	if err != nil || !(fi.Mode().IsRegular() || fi.IsDir()) {
		file.Close()
		return nil, fs.ErrNotExist // a FIFO, device or socket: 404, as nginx
	}
	if fi.Mode().IsRegular() && fi.Size() <= smallFile {
		data := make([]byte, fi.Size())
		if n, err := file.ReadAt(data, 0); int64(n) == fi.Size() && (err == nil || err == io.EOF) {
			file.Close()
			f.remember(name, &smallEntry{data: data, info: fi, at: now})
			return &memFile{Reader: bytes.NewReader(data), info: fi}, nil
		}
	}
	return file, nil
}

// The small-file cache of the nethttp handler, as the native engine's open
// file cache: a file of up to smallFile bytes is kept in memory and served
// without open, fstat, read and close, for a second before it is looked at
// again (nginx's open_file_cache_valid).
type smallEntry struct {
	data []byte
	info fs.FileInfo
	at   time.Time
}

const maxSmallEntries = 4096

func (f *rootFS) cached(name string, now time.Time) *smallEntry {
	f.smallMu.Lock()
	defer f.smallMu.Unlock()
	e := f.small[name]
	if e == nil || now.Sub(e.at) >= time.Second {
		return nil
	}
	return e
}

func (f *rootFS) remember(name string, e *smallEntry) {
	f.smallMu.Lock()
	defer f.smallMu.Unlock()
	if f.small == nil || len(f.small) >= maxSmallEntries {
		f.small = map[string]*smallEntry{}
	}
	f.small[name] = e
}

// memFile is a cached small file as net/http's FileServer reads it.
type memFile struct {
	*bytes.Reader
	info fs.FileInfo
}

func (m *memFile) Close() error                       { return nil }
func (m *memFile) Readdir(int) ([]fs.FileInfo, error) { return nil, fs.ErrInvalid }
func (m *memFile) Stat() (fs.FileInfo, error)         { return m.info, nil }

// openError maps a failed open to what net/http answers: 404 for what is
// not there, 500 while the process is out of descriptors (never cached:
// the next request tries again), and 403 for every other refusal,
// escaping the root ("path escapes from parent") included.
func openError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ENOTDIR), errors.Is(err, unix.ENAMETOOLONG),
		errors.Is(err, unix.ENXIO):
		return fs.ErrNotExist
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		return err
	}
	return fs.ErrPermission
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
