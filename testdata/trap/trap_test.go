// Package trap is a test binary that falls into the trap herd's
// TestTestBinaryTrap checks for: it starts herd Servers inside tests, with
// no TestMain to build them in the workers.
package trap

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/herd-run/herd"
)

func serve(t *testing.T, answer string) {
	srv := &herd.Server{Listen: []string{"127.0.0.1:0"}, Workers: 1,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, answer) })}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	resp, err := http.Get("http://" + srv.Addrs()[0] + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), answer) {
		t.Fatalf("wrong handler served: %q, want %q", b, answer)
	}
}

func TestFirst(t *testing.T)  { serve(t, "first") }
func TestSecond(t *testing.T) { serve(t, "second") }
