package httpd

import (
	"testing"
	"time"

	"github.com/herd-run/herd/internal/shm"
)

// BenchmarkAnswer builds the answer to a GET of a cached small file, the
// engine's hot path apart from syscalls: go test ./internal/httpd -run '^$'
// -bench Answer -benchmem reports its allocations per request.
func BenchmarkAnswer(b *testing.B) {
	root, _ := siteRoot(b)
	files, err := newFileCache(root, false)
	if err != nil {
		b.Fatal(err)
	}
	defer files.close()
	region, err := shm.Create("bench", shm.Size(1))
	if err != nil {
		b.Fatal(err)
	}
	defer region.Close()
	board, _ := shm.NewScoreboard(region.Bytes(), 1)
	e := &Engine{files: files, cfg: Config{Stats: board.Record(board.Claim(0, 1, 0))}}
	e.tick()
	c := &conn{out: make([]byte, 0, 512)}
	var req request
	raw := []byte("GET /hello.txt HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
	if complete, perr := parseInto(&req, raw); !complete || perr != nil {
		b.Fatal("parse", perr)
	}
	b.ReportAllocs()
	for b.Loop() {
		e.now = time.Now()
		e.answer(c, &req)
		if c.status != 200 {
			b.Fatal(c.status)
		}
	}
}
