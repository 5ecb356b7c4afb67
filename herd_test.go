//go:build linux && !herd_oneprocess

package herd_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/herd-run/herd"
)

// Workers are this test binary executed again (the os/exec helper-process
// pattern). A worker must build the same Server its master did, so each
// test names its server in HERD_TEST_SERVER, which workers inherit, and
// TestMain builds that server in the worker instead of running tests.
func TestMain(m *testing.M) {
	if herd.IsWorker() {
		switch os.Getenv("HERD_TEST_SERVER") {
		case "":
			Example()
		case "slow":
			slowServer().Start()
		case "unix":
			unixServer().Start()
		case "admin":
			adminServer().Start()
		case "nohandler":
			(&herd.Server{Listen: []string{"127.0.0.1:0"}}).Start()
		case "tls":
			tlsServer().Start()
		case "hooks":
			hooksServer().Start()
		case "appmetrics":
			appMetricsServer().Start()
		case "writers":
			writersServer().Start()
		}
		os.Exit(3) // Start does not return in a worker
	}
	// Under -race, a process that exits sleeps a second first (GORACE's
	// atexit_sleep_ms), keeping a killed worker's connections open; the
	// tests' processes must exit when they say.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

func slowServer() *herd.Server {
	return &herd.Server{
		Listen:  []string{"127.0.0.1:0"},
		Workers: 2,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				time.Sleep(time.Second)
			}
			io.WriteString(w, "done "+r.URL.Path)
		}),
	}
}

// slowGet sends a GET in the background; its answer's body, or the
// error's text, comes on the channel.
func slowGet(url string) <-chan string {
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(url)
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	return got
}

// waitActive waits until a worker holds a connection.
func waitActive(srv *herd.Server) {
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Total.Active == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// Shutdown, like SIGQUIT, lets a request that is being handled finish.
func TestShutdownFinishesSlowRequest(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "slow")
	srv := slowServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.Addrs()[0]
	got := slowGet(base + "/slow")
	waitActive(srv)
	start := time.Now()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if body := <-got; body != "done /slow" {
		t.Errorf("in-flight request got %q, want its full answer", body)
	}
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before the slow request could finish", waited)
	}
	if _, err := http.Get(base + "/"); err == nil {
		t.Errorf("server still answers after Shutdown")
	}
}

// Close, like SIGTERM, does not wait for requests: the slow request's
// connection is closed without an answer.
func TestCloseDoesNotWait(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "slow")
	srv := slowServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + srv.Addrs()[0] + "/slow")
		if err == nil {
			resp.Body.Close()
		}
		got <- err
	}()
	waitActive(srv)
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err == nil {
		t.Errorf("the slow request was answered: Close waited for it")
	}
}

// Start reports a busy address as an error, in one line, and starts nothing.
func TestStartBusyAddress(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "slow")
	first := slowServer()
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second := slowServer()
	second.Listen = first.Addrs()
	err := second.Start()
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second Start on %v: %v, want address already in use", first.Addrs(), err)
	}
}

func TestStartNeedsHandler(t *testing.T) {
	if err := (&herd.Server{}).Start(); err == nil {
		t.Fatal("Start with no Handler succeeded")
	}
}

// A program that stops its server with Shutdown when it gets SIGTERM, as
// Go services do, gets a graceful stop: herd hears the same TERM, and both
// ask for the same thing. (TERM used to be herd's fast stop, racing the
// program's Shutdown.)
func TestShutdownOnOwnSIGTERM(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "slow")
	srv := slowServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	defer signal.Stop(term)
	stopped := make(chan error, 1)
	go func() {
		<-term
		stopped <- srv.Shutdown(context.Background())
	}()
	got := slowGet("http://" + srv.Addrs()[0] + "/slow")
	waitActive(srv)
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	if body := <-got; body != "done /slow" {
		t.Errorf("in-flight request got %q across SIGTERM and Shutdown, want its full answer", body)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// Workers that cannot start make Start fail with their own error, reported
// once, after a few tries — not a master retrying for ever, and not
// "<nil>". (Here the workers build a Server without a Handler, the trap of
// a worker that does not build what its master built.)
func TestStartReportsWorkersOwnError(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "nohandler")
	var log strings.Builder
	var mu sync.Mutex
	srv := slowServer()
	srv.Logger = slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return log.Write(p)
	}), nil))
	start := time.Now()
	err := srv.Start()
	if err == nil {
		srv.Close()
		t.Fatal("Start succeeded with workers that cannot serve")
	}
	if !strings.Contains(err.Error(), "Server.Handler is nil") || strings.Contains(err.Error(), "<nil>") {
		t.Errorf("Start: %v; want the workers' own error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(log.String(), "a worker failed to start"); n != 1 {
		t.Errorf("the failure was reported %d times, want once:\n%s", n, log.String())
	}
	if n := strings.Count(log.String(), "\n"); n > 10 {
		t.Errorf("%d log lines for a failed start:\n%s", n, log.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// tlsServer serves HTTPS only, with the program's own tls.Config (its
// certificate from the files the test made, named in HERD_TEST_CERT).
func tlsServer() *herd.Server {
	files := strings.Split(os.Getenv("HERD_TEST_CERT"), ",")
	cert, err := tls.LoadX509KeyPair(files[0], files[1])
	if err != nil {
		panic(err)
	}
	s := slowServer()
	s.Listen, s.TLSListen = nil, []string{"127.0.0.1:0"}
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	return s
}

// writersServer's handler says which of net/http's optional interfaces
// its ResponseWriter has, streams with w.(http.Flusher), and hijacks with
// w.(http.Hijacker) — the way net/http's documentation and WebSocket
// libraries ask for them — on a plain and a TLS listener, with an access
// log.
func writersServer() *herd.Server {
	files := strings.Split(os.Getenv("HERD_TEST_CERT"), ",")
	cert, err := tls.LoadX509KeyPair(files[0], files[1])
	if err != nil {
		panic(err)
	}
	return &herd.Server{
		Listen: []string{"127.0.0.1:0"}, TLSListen: []string{"127.0.0.1:0"}, Workers: 1,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		AccessLog: os.Getenv("HERD_TEST_LOG"),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/kinds":
				_, flusher := w.(http.Flusher)
				_, hijacker := w.(http.Hijacker)
				_, pusher := w.(http.Pusher)
				_, readerFrom := w.(io.ReaderFrom)
				_, stringWriter := w.(io.StringWriter)
				_, closeNotifier := w.(interface{ CloseNotify() <-chan bool }) // http.CloseNotifier, deprecated
				fmt.Fprintf(w, "flusher=%v hijacker=%v pusher=%v readerfrom=%v stringwriter=%v closenotifier=%v",
					flusher, hijacker, pusher, readerFrom, stringWriter, closeNotifier)
			case "/stream":
				f, ok := w.(http.Flusher)
				if !ok {
					http.Error(w, "streaming unsupported", 500)
					return
				}
				io.WriteString(w, "event one\n")
				f.Flush()
				select { // the client reads the event while the handler waits
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			case "/hijack":
				h, ok := w.(http.Hijacker)
				if !ok {
					http.Error(w, "hijacking unsupported", 500)
					return
				}
				c, rw, err := h.Hijack()
				if err != nil {
					return
				}
				defer c.Close()
				rw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nhijacked\n")
				rw.Flush()
			}
		}),
	}
}

// A handler finds on its ResponseWriter what net/http's own offers:
// Flusher, Hijacker on HTTP/1 and Pusher on HTTP/2, ReaderFrom (where
// sendfile happens), StringWriter and the deprecated CloseNotifier (gin's
// Context.Stream asserts it, and panics without). Before, herd's wrappers
// that count answers and write the access log hid all but ReaderFrom, so a
// handler that streamed with w.(http.Flusher), or a WebSocket library that
// asked for w.(http.Hijacker), failed under herd and worked under net/http.
func TestHandlersSeeWhatNetHTTPOffers(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := certFiles(t, dir)
	logFile := filepath.Join(dir, "access.log")
	t.Setenv("HERD_TEST_SERVER", "writers")
	t.Setenv("HERD_TEST_CERT", certFile+","+keyFile)
	t.Setenv("HERD_TEST_LOG", logFile)
	srv := writersServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	plain, secure := "http://"+srv.Addrs()[0], "https://"+srv.Addrs()[1]
	h1 := &http.Client{Timeout: 10 * time.Second}
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	for _, tc := range []struct {
		client *http.Client
		url    string
		proto  int
		want   string
	}{
		{h1, plain + "/kinds", 1, "flusher=true hijacker=true pusher=false readerfrom=true stringwriter=true closenotifier=true"},
		{h2, secure + "/kinds", 2, "flusher=true hijacker=false pusher=true readerfrom=true stringwriter=true closenotifier=true"},
	} {
		resp, err := tc.client.Get(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != tc.proto || string(body) != tc.want {
			t.Errorf("%s over %s: %q; want %q", tc.url, resp.Proto, body, tc.want)
		}
	}
	for _, base := range []struct {
		client *http.Client
		url    string
	}{{h1, plain}, {h2, secure}} {
		resp, err := base.client.Get(base.url + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		resp.Body.Close()
		if resp.StatusCode != 200 || line != "event one\n" || err != nil {
			t.Errorf("%s/stream: %d %q %v; want the event while the handler still runs", base.url, resp.StatusCode, line, err)
		}
	}
	resp, err := h1.Get(plain + "/hijack")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hijacked\n" {
		t.Errorf("/hijack: %d %q", resp.StatusCode, body)
	}
	// The access log still has each answer's status and body bytes.
	want := `"GET /kinds HTTP/1.1" 200 92`
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, _ := os.ReadFile(logFile)
		if strings.Contains(string(b), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the access log has no %q:\n%s", want, b)
		}
	}
}

// The library honours TLSConfig: the TLS listener serves HTTPS, with
// HTTP/2 by ALPN; a TLSConfig with no TLS listener to serve it on is an
// error, never plain HTTP.
func TestLibraryTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := certFiles(t, dir)
	t.Setenv("HERD_TEST_SERVER", "tls")
	t.Setenv("HERD_TEST_CERT", certFile+","+keyFile)
	srv := tlsServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	resp, err := (&http.Client{Transport: tr}).Get("https://" + srv.Addrs()[0] + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(body) != "done /x" {
		t.Errorf("%s %q, want HTTP/2 and the handler's answer", resp.Proto, body)
	}

	plain := slowServer()
	plain.TLSConfig = tlsServer().TLSConfig
	if err := plain.Check(); err == nil || !strings.Contains(err.Error(), "no TLS listener") {
		t.Errorf("TLSConfig without TLSListen: %v", err)
	}
}

// certFiles writes a self-signed certificate and its key (selfSigned) as
// PEM files in dir.
func certFiles(t *testing.T, dir string) (certFile, keyFile string) {
	certPEM, keyPEM := selfSigned(t)
	certFile, keyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	return certFile, keyFile
}

func selfSigned(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// hooksServer notes each worker's start and stop in files under
// HERD_TEST_DIR, answers with its identity, and fails to start in the
// generation HERD_TEST_FAIL_GEN names.
// startHooks starts hooksServer, whose workers note what happens to them
// in the directory it returns.
func startHooks(t *testing.T) (*herd.Server, string) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("HERD_TEST_SERVER", "hooks")
	t.Setenv("HERD_TEST_DIR", dir)
	srv := hooksServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	return srv, dir
}

func hooksServer() *herd.Server {
	dir := os.Getenv("HERD_TEST_DIR")
	note := func(what string, w herd.WorkerInfo) {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s-%d-%d-%d", what, w.Slot, w.Generation, w.Workers)), nil, 0o644)
	}
	s := slowServer()
	s.DrainTimeout = time.Second
	s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/wait" { // until the request's context ends
			start := time.Now()
			select {
			case <-r.Context().Done():
				os.WriteFile(filepath.Join(dir, fmt.Sprintf("ctx-done-%d", time.Since(start).Milliseconds()/100)), nil, 0o644)
			case <-time.After(5 * time.Second):
			}
			return
		}
		me, ok := herd.CurrentWorker()
		fmt.Fprintf(w, "%d %d %d %v", me.Slot, me.Generation, me.Workers, ok)
	})
	s.OnWorkerStart = func(w herd.WorkerInfo) error {
		if os.Getenv("HERD_TEST_FAIL_GEN") == strconv.Itoa(w.Generation) {
			return errors.New("no database")
		}
		note("start", w)
		return nil
	}
	s.OnWorkerStop = func(w herd.WorkerInfo) { note("stop", w) }
	// /hijack takes the connection over, as a WebSocket server does; the
	// server no longer tracks it, and RegisterOnShutdown is how the
	// program closes it when the worker drains.
	var mu sync.Mutex
	var hijacked []net.Conn
	s.ConfigureServer = func(srv *http.Server) {
		srv.RegisterOnShutdown(func() {
			os.WriteFile(filepath.Join(dir, "on-shutdown"), nil, 0o644)
			mu.Lock()
			defer mu.Unlock()
			for _, c := range hijacked {
				c.Close()
			}
		})
	}
	inner := s.Handler
	s.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hijack" {
			inner.ServeHTTP(w, r)
			return
		}
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		// Known to the shutdown function before the client hears of it:
		// the client's next step may be the stop that runs that function.
		mu.Lock()
		hijacked = append(hijacked, c)
		mu.Unlock()
		rw.WriteString("hijacked\n")
		rw.Flush()
	})
	return s
}

// A drain runs the functions the program gave RegisterOnShutdown: here one
// closes a hijacked connection, which the server no longer tracks and the
// drain would otherwise wait for until its timeout.
func TestRegisterOnShutdownRuns(t *testing.T) {
	srv, dir := startHooks(t)
	c, err := net.Dial("tcp", srv.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	if line, err := br.ReadString('\n'); line != "hijacked\n" {
		t.Fatalf("read %q, %v", line, err)
	}
	start := time.Now()
	srv.Shutdown(context.Background())
	if d := time.Since(start); d > 800*time.Millisecond {
		t.Errorf("stopped after %v: the drain waited for the hijacked connection (1s drain timeout)", d)
	}
	if _, err := os.Stat(filepath.Join(dir, "on-shutdown")); err != nil {
		t.Error("the RegisterOnShutdown function did not run")
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("the hijacked connection: %v, want EOF (closed by the hook)", err)
	}
}

// Workers know who they are, run OnWorkerStart before they are ready and
// OnWorkerStop after they finish, across a reload; an OnWorkerStart that
// fails fails the reload, and the running generation serves on.
func TestWorkerHooksAndIdentity(t *testing.T) {
	srv, dir := startHooks(t)
	defer srv.Close()
	has := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	for _, f := range []string{"start-0-1-2", "start-1-1-2"} {
		if !has(f) {
			t.Errorf("no %s: OnWorkerStart did not run before the workers were ready", f)
		}
	}
	if _, ok := herd.CurrentWorker(); ok {
		t.Error("the master thinks it is a worker")
	}
	answer := func() string {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + srv.Addrs()[0] + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if a := answer(); a != "0 1 2 true" && a != "1 1 2 true" {
		t.Errorf("a worker answers %q, want its slot, generation 1, 2 slots", a)
	}
	srv.Reload()
	for deadline := time.Now().Add(10 * time.Second); !(has("stop-0-1-2") && has("stop-1-1-2")); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("OnWorkerStop did not run in the old generation")
		}
	}
	if !has("start-0-2-2") || !has("start-1-2-2") {
		t.Error("the new generation's OnWorkerStart did not run")
	}
	t.Setenv("HERD_TEST_FAIL_GEN", "3")
	srv.Reload()
	time.Sleep(500 * time.Millisecond) // the reload starts and its workers fail
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		st := srv.Stats()
		if st.Generation == 2 && len(st.Live) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a reload whose OnWorkerStart failed: generation %d, %d live", st.Generation, len(st.Live))
		}
	}
	if a := answer(); !strings.HasSuffix(a, " 2 2 true") {
		t.Errorf("after the failed reload a worker answers %q", a)
	}
}

// The two-tests trap: a test binary with no TestMain starts a Server in a
// test; its workers run the tests again from the first and reached that
// first test's Start, serving the wrong handler. Now such a worker says so
// and the Start in the test fails with the reason.
func TestTestBinaryTrap(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a test binary")
	}
	out, err := exec.Command("go", "test", "-count=1", "./testdata/trap").CombinedOutput()
	if err == nil {
		t.Fatalf("the trap package passed:\n%s", out)
	}
	if !strings.Contains(string(out), "not from TestMain") || strings.Contains(string(out), "wrong handler served") {
		t.Errorf("output:\n%s", out)
	}
}

// A request in flight when the server drains keeps its context until the
// drain timeout, and loses it then (the server's base context ends with
// serving).
func TestDrainKeepsRequestContexts(t *testing.T) {
	srv, dir := startHooks(t)
	go http.Get("http://" + srv.Addrs()[0] + "/wait")
	waitActive(srv)
	start := time.Now()
	srv.Shutdown(context.Background())
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("stopped after %v, before the 1s drain timeout", d)
	}
	ents, _ := os.ReadDir(dir)
	var ended []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ctx-done-") {
			ended = append(ended, e.Name())
		}
	}
	// ctx-done-N: the context ended after N tenths of a second: at the drain
	// timeout, not when the drain began.
	tenths := -1
	if len(ended) == 1 {
		fmt.Sscanf(ended[0], "ctx-done-%d", &tenths)
	}
	if tenths < 9 {
		t.Errorf("request contexts ended: %v; want one, after about 1s", ended)
	}
}

// Before Start, the methods that need a running server say so; none
// panics (Wait did, dereferencing the absent running state).
func TestMethodsBeforeStart(t *testing.T) {
	srv := slowServer()
	if err := srv.Wait(); err == nil {
		t.Error("Wait before Start: no error")
	}
	if err := srv.Shutdown(context.Background()); err == nil {
		t.Error("Shutdown before Start: no error")
	}
	if err := srv.Close(); err == nil {
		t.Error("Close before Start: no error")
	}
	srv.Reload()
	if len(srv.Addrs()) != 0 || srv.AdminAddr() != "" || len(srv.Stats().Live) != 0 {
		t.Error("a server not started reports addresses or workers")
	}
}

// unixServer is slowServer on the unix socket HERD_TEST_SOCK.
func unixServer() *herd.Server {
	s := slowServer()
	s.Listen = []string{"unix:" + os.Getenv("HERD_TEST_SOCK")}
	return s
}

// The default strategy for a Handler is reuseport, so the kernel spreads
// connections over the workers: with "go" every worker's netpoller races
// for a shared socket, and the first awake takes all that are queued — a
// burst of keep-alive connections (wrk's 64) all landed on one of two
// workers in some runs. On a unix socket, where reuseport cannot serve,
// the default is "go".
func TestDefaultStrategySpreadsConnections(t *testing.T) {
	t.Setenv("HERD_TEST_SERVER", "slow")
	srv := slowServer()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if s := srv.Stats().Strategy; s != "reuseport" {
		t.Errorf("default strategy for a Handler on TCP: %q, want reuseport", s)
	}
	// 32 keep-alive connections at once, each answered and held open:
	// hashed over two sockets, all 32 on one has odds of 2 in 4 billion.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 32 {
		c, err := net.Dial("tcp", srv.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	for _, c := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	var active []uint64
	for _, w := range srv.Stats().Live {
		active = append(active, w.Active)
	}
	if len(active) != 2 || active[0] == 0 || active[1] == 0 {
		t.Errorf("32 keep-alive connections per worker: %v, want both workers holding some", active)
	}

	sock := filepath.Join(t.TempDir(), "herd.sock")
	t.Setenv("HERD_TEST_SERVER", "unix")
	t.Setenv("HERD_TEST_SOCK", sock)
	us := unixServer()
	if err := us.Start(); err != nil {
		t.Fatal(err)
	}
	defer us.Close()
	if s := us.Stats().Strategy; s != "go" {
		t.Errorf("default strategy for a Handler on a unix socket: %q, want go", s)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := c.Get("http://x/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "done /" {
		t.Errorf("on the unix socket: %q", b)
	}
}
