package master

import (
	"net"
	"strings"
	"testing"
)

// A reuseport group accepts any socket of the same user that sets
// SO_REUSEPORT: binding a second herd's reuseport sockets to a busy port
// succeeds and the two share connections. checkFree is the bind that
// fails instead, with the usual error.
func TestCheckFreeSeesReuseportGroup(t *testing.T) {
	s, err := socketConfig{Backlog: 8, ReusePort: true}.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if second, err := (socketConfig{Backlog: 8, ReusePort: true}).Listen(s.Addr); err == nil {
		second.Close() // what the check is for: the kernel lets it join
	} else {
		t.Logf("a second reuseport socket was refused anyway: %v", err)
	}
	if err := checkFree(s.Addr); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("checkFree on a listening reuseport group: %v, want address already in use", err)
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	if err := checkFree(addr); err != nil {
		t.Errorf("checkFree on a free port: %v", err)
	}
	if err := checkFree("127.0.0.1:0"); err != nil {
		t.Errorf("checkFree on port 0: %v", err)
	}
}
