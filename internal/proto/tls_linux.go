//go:build linux

package proto

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// TLSFiles reads a certificate chain and its private key (PEM files) into
// a sealed memfd for a worker to inherit. The master reads them, as nginx's
// does, so that a key only root may read — Let's Encrypt's privkey.pem,
// Debian's /etc/ssl/private — serves workers that run as another user; a
// worker reads the memfd once (ReadTLSFiles) and closes it.
func TLSFiles(certFile, keyFile string) (*os.File, error) {
	var pem []byte
	for _, name := range []string{certFile, keyFile} {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		pem = append(append(pem, b...), '\n')
		clear(b)
	}
	fd, err := unix.MemfdCreate("herd-tls", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("tls: memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "herd-tls")
	if _, err := f.Write(pem); err != nil {
		f.Close()
		return nil, fmt.Errorf("tls: memfd: %w", err)
	}
	clear(pem)
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("tls: seal memfd: %w", err)
	}
	return f, nil
}

// ReadTLSFiles reads what TLSFiles wrote, from the inherited descriptor
// fd, and closes it: the certificate chain and the key, both PEM, one after
// the other (crypto/tls's X509KeyPair takes the blocks it wants from each).
func ReadTLSFiles(fd int) ([]byte, error) {
	f := os.NewFile(uintptr(fd), "herd-tls")
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("tls: inherited certificate: %w", err)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("tls: inherited certificate: %w", err)
	}
	return b, nil
}
