//go:build herd_oneprocess

package herd_test

import (
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/herd-run/herd"
)

// Off Linux a Server serves its Handler in one process. The same code is
// tested here, on Linux, under the herd_oneprocess tag (CI:
// go test -tags herd_oneprocess .).
func TestOneProcess(t *testing.T) {
	srv := &herd.Server{Listen: []string{"127.0.0.1:0"}, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "one "+r.URL.Path)
	})}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + srv.Addrs()[0] + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "one /x" {
		t.Errorf("got %q", b)
	}
	if len(herd.Strategies()) != 0 || len(srv.Stats().Live) != 0 || srv.AdminAddr() != "" {
		t.Errorf("strategies %v, stats %+v", herd.Strategies(), srv.Stats())
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Wait(); err != nil {
		t.Errorf("Wait after Shutdown: %v", err)
	}
	if _, err := http.Get("http://" + srv.Addrs()[0] + "/x"); err == nil {
		t.Error("still serving after Shutdown")
	}
}
