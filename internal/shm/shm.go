//go:build linux

// Package shm is the memory the master and its workers share: a memfd
// mapped MAP_SHARED in every process, holding the scoreboard (and, later,
// the accept mutexes).
//
// A memfd rather than a file in /dev/shm: it has no name to collide with or
// to leak when a process is killed, it is passed to workers as an inherited
// descriptor like the listening sockets, and it lives exactly as long as
// some process holds it open.
package shm

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Region is a shared mapping of a memfd.
type Region struct {
	file *os.File
	mem  []byte
}

// Create makes a new zeroed memfd of size bytes and maps it read-write.
// The descriptor is close-on-exec; pass File() to children explicitly.
func Create(name string, size int) (*Region, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("shm: memfd_create %s: %w", name, err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: size %s to %d bytes: %w", name, size, err)
	}
	return mapFile(os.NewFile(uintptr(fd), name), size, true)
}

// Open maps an existing shared region from f, which it takes ownership of.
// writable=false maps it read-only, as a status reader should.
func Open(f *os.File, writable bool) (*Region, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("shm: stat %s: %w", f.Name(), err)
	}
	return mapFile(f, int(st.Size), writable)
}

func mapFile(f *os.File, size int, writable bool) (*Region, error) {
	if size <= 0 {
		f.Close()
		return nil, fmt.Errorf("shm: %s is empty", f.Name())
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, prot, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("shm: mmap %s: %w", f.Name(), err)
	}
	return &Region{file: f, mem: mem}, nil
}

// File is the memfd, for passing to a child process.
func (r *Region) File() *os.File { return r.file }

// Bytes is the mapped memory.
func (r *Region) Bytes() []byte { return r.mem }

// Close unmaps the region and closes the descriptor.
func (r *Region) Close() error {
	err := unix.Munmap(r.mem)
	r.mem = nil
	if cerr := r.file.Close(); err == nil {
		err = cerr
	}
	return err
}
