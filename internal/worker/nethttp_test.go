package worker

import (
	"net"
	"testing"
)

// The nethttp heartbeat follows the serving path: it stops while
// connections wait in the hand-off and nothing takes them.
func TestHandoffServing(t *testing.T) {
	h := newHandoff(&net.TCPAddr{})
	alive := h.serving()
	if !alive() {
		t.Fatal("idle: nothing waits, the worker is alive")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	h.push(a)
	if alive() {
		t.Error("a connection waits and none was taken: not alive")
	}
	if _, err := h.Accept(); err != nil {
		t.Fatal(err)
	}
	h.push(b)
	if !alive() {
		t.Error("one was taken since the last beat: alive")
	}
	if alive() {
		t.Error("the next waits and nothing was taken since: not alive")
	}
}
