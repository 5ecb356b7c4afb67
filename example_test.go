//go:build linux && !herd_oneprocess

package herd_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/herd-run/herd"
)

// A prefork server in one call. The program runs as the master and again as
// each worker; in a worker, Start serves and exits the process, so the code
// after it runs only in the master.
func Example() {
	srv := &herd.Server{
		Listen:  []string{"127.0.0.1:0"}, // port 0: any free port; Addrs says which
		Workers: 2,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "hello from a worker")
		}),
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}

	resp, err := http.Get("http://" + srv.Addrs()[0] + "/")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Print(string(body))
	fmt.Println(srv.Stats().Total.Requests, "request counted")

	// As SIGQUIT would: stop accepting, finish requests, exit.
	if err := srv.Shutdown(context.Background()); err != nil {
		log.Fatal(err)
	}
	// Output:
	// hello from a worker
	// 1 request counted
}

// Per-worker setup and identity: OnWorkerStart runs in each worker before
// it takes connections (an error fails the start, or the reload, and the
// running workers serve on), and CurrentWorker tells a handler which worker
// it runs in.
func ExampleServer_OnWorkerStart() {
	srv := &herd.Server{
		Listen: []string{":8080"},
		OnWorkerStart: func(w herd.WorkerInfo) error {
			log.Printf("worker %d of %d, generation %d: opening its database pool", w.Slot, w.Workers, w.Generation)
			return nil // an error here: this worker does not start
		},
		OnWorkerStop: func(w herd.WorkerInfo) { log.Printf("worker %d: closing its pool", w.Slot) },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			me, _ := herd.CurrentWorker()
			fmt.Fprintf(w, "served by worker %d\n", me.Slot)
		}),
	}
	log.Fatal(srv.ListenAndServe())
}

// Testing with herd: the workers are the test binary run again, so the
// Server a test starts must be built in TestMain when herd.IsWorker — a
// worker that reaches Start inside a test refuses to serve (it would
// serve the first test's Server), and Start in the test returns why.
//
//	func TestMain(m *testing.M) {
//		if herd.IsWorker() {
//			newServer().Start() // serves, then exits the worker
//		}
//		os.Exit(m.Run())
//	}
//
//	func TestServer(t *testing.T) {
//		srv := newServer()
//		if err := srv.Start(); err != nil {
//			t.Fatal(err)
//		}
//		defer srv.Close()
//		// ... requests to srv.Addrs()[0]
//	}
func ExampleIsWorker() {}

// A graceful stop on the program's own SIGTERM: herd hears it too, and
// both ask for the same graceful stop (a second TERM is the fast one).
func ExampleServer_Shutdown() {
	srv := &herd.Server{Listen: []string{":8080"}, Handler: http.NotFoundHandler()}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	<-term
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil { // in-flight requests finish first
		log.Print(err)
	}
}

// The worker's own http.Server: timeouts, and RegisterOnShutdown for the
// connections the server no longer tracks (WebSockets, hijacked
// connections), which a draining worker would otherwise wait for until
// DrainTimeout. The functions run when the worker drains.
func ExampleServer_ConfigureServer() {
	var sockets sync.Map // the hijacked connections of this worker
	srv := &herd.Server{
		Listen:  []string{":8080"},
		Handler: http.NotFoundHandler(),
		ConfigureServer: func(s *http.Server) {
			s.ReadHeaderTimeout = 10 * time.Second
			s.RegisterOnShutdown(func() {
				sockets.Range(func(c, _ any) bool {
					c.(net.Conn).Close() // a WebSocket server would send a close frame first
					return true
				})
			})
		},
	}
	log.Fatal(srv.ListenAndServe())
}
