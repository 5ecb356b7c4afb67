// Command library serves the same two handlers — "hello world" and a 4 KiB
// body — as one plain net/http process, as herd.Server (prefork, the
// library's defaults), or as fasthttp's prefork, for bench/library.sh. It
// is a module of its own so that herd does not depend on fasthttp.
package main

import (
	"bytes"
	"flag"
	"log"
	"net/http"

	"github.com/herd-run/herd"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/prefork"
)

var (
	hello = []byte("Hello, world\n")
	body  = bytes.Repeat([]byte("x"), 4096)
)

func main() {
	mode := flag.String("mode", "herd", "plain, herd or fasthttp")
	listen := flag.String("listen", "127.0.0.1:8080", "address")
	pid := flag.String("pid", "", "herd: pid file")
	strategy := flag.String("strategy", "", "herd: accept strategy (default: the library's)")
	procs := flag.Int("procs", 0, "herd: each worker's GOMAXPROCS (default: the library's)")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) { w.Write(hello) })
	mux.HandleFunc("/4k", func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
	switch *mode {
	case "plain":
		log.Fatal(http.ListenAndServe(*listen, mux))
	case "herd":
		srv := &herd.Server{Listen: []string{*listen}, Handler: mux, PIDFile: *pid, Strategy: *strategy, WorkerProcs: *procs}
		log.Fatal(srv.ListenAndServe())
	case "fasthttp":
		s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
			switch string(ctx.Path()) {
			case "/hello":
				ctx.Write(hello)
			case "/4k":
				ctx.Write(body)
			default:
				ctx.SetStatusCode(404)
			}
		}}
		log.Fatal(prefork.New(s).ListenAndServe(*listen))
	default:
		log.Fatalf("mode %q: want plain, herd or fasthttp", *mode)
	}
}
