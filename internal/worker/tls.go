//go:build linux

package worker

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/herd-run/herd/internal/proto"
)

// tlsConfig is the worker's TLS configuration, for Go's crypto/tls: the
// certificate the master read from its files (Spec.TLSPEM) and the
// program's own tls.Config (if any), TLS 1.2 and 1.3 with Go's defaults
// (which Mozilla's "intermediate" profile agrees with), HTTP/2 negotiated
// by ALPN with HTTP/1.1 after it, and the session ticket keys the master
// sends, so that a session resumes on whichever worker the next connection
// reaches.
func (w *proc) tlsConfig(base *tls.Config) (*tls.Config, error) {
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	if w.spec.TLSPEM > 0 {
		pem, err := proto.ReadTLSFiles(w.spec.TLSPEM)
		if err != nil {
			return nil, err
		}
		cert, err := tls.X509KeyPair(pem, pem)
		clear(pem)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	if len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return nil, errors.New("tls: no certificate")
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if len(cfg.NextProtos) == 0 {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	// The master sends its keys as soon as it has started the worker; wait
	// for them, briefly, so the first sessions already resume anywhere.
	select {
	case keys := <-w.ctrl.tickets:
		cfg.SetSessionTicketKeys(keys)
	case <-time.After(2 * time.Second):
		w.log.Warn("tls: no session ticket keys from the master; sessions resume only on this worker")
	}
	go func() {
		for keys := range w.ctrl.tickets { // rotations
			cfg.SetSessionTicketKeys(keys)
		}
	}()
	return cfg, nil
}

// decodeTicketKeys reads a proto.TicketKeys text: 32-byte keys, newest first.
func decodeTicketKeys(text string) ([][32]byte, error) {
	b, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(b) == 0 || len(b)%32 != 0 {
		return nil, errors.New("worker: bad ticket keys")
	}
	keys := make([][32]byte, len(b)/32)
	for i := range keys {
		copy(keys[i][:], b[32*i:])
	}
	return keys, nil
}

// redirectHTTPS answers every plain request with a permanent redirect to
// the same host, path and query over HTTPS on port (":443" is left out).
func redirectHTTPS(port string) http.Handler {
	if port == ":443" {
		port = ""
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
			if strings.Contains(h, ":") {
				host = "[" + h + "]"
			}
		}
		http.Redirect(w, r, "https://"+host+port+r.URL.RequestURI(), http.StatusMovedPermanently)
	})
}
