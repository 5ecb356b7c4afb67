//go:build linux

package httpd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Where openat2 is missing (ENOSYS: an old kernel, or a seccomp filter
// such as systemd 252's SystemCallFilter=) files are opened through
// os.Root, with the same containment: each name gives what openat2 gives.
func TestOpenWithoutOpenat2(t *testing.T) {
	root, _ := siteRoot(t)
	base := filepath.Dir(root)
	os.Symlink("hello.txt", filepath.Join(root, "alias.txt"))  // inside: served
	os.Symlink("docs", filepath.Join(root, "docs-link"))       // a directory inside
	os.Symlink("../secret.txt", filepath.Join(root, "up.txt")) // climbs out
	os.Symlink(base, filepath.Join(root, "outside"))           // a directory outside
	os.Symlink("loop-b", filepath.Join(root, "loop-a"))        // a loop
	os.Symlink("loop-a", filepath.Join(root, "loop-b"))
	if err := unix.Mkfifo(filepath.Join(root, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	names := []string{"hello.txt", "alias.txt", "docs/index.html", "docs-link/index.html", "docs", "missing",
		"hello.txt/x", "leak.txt", "up.txt", "outside/secret.txt", "loop-a", "pipe"}
	type result struct {
		dir bool
		err error
		n   int64
	}
	open := func(noOpenat2, follow bool) map[string]result {
		c, err := newFileCache(root, follow)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		c.noOpenat2 = noOpenat2
		got := map[string]result{}
		for _, name := range names {
			done := make(chan struct{})
			go func() { // a FIFO must not block the open
				defer close(done)
				f, dir, err := c.open(name, time.Now())
				r := result{dir: dir, err: err}
				if f != nil {
					r.n = f.size
				}
				got[name] = r
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("open %s blocked (noOpenat2=%v)", name, noOpenat2)
			}
		}
		return got
	}
	for _, follow := range []bool{false, true} {
		want, got := open(false, follow), open(true, follow)
		for _, name := range names {
			if want[name] != got[name] {
				t.Errorf("follow=%v %s: without openat2 %+v, with it %+v", follow, name, got[name], want[name])
			}
		}
		if !follow && (want["leak.txt"].err != errEscape || want["up.txt"].err != errEscape || want["hello.txt"].n != 13) {
			t.Errorf("the reference itself is wrong: %+v", want)
		}
	}
}
