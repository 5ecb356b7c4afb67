//go:build linux && !herd_oneprocess

package herd_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"

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
