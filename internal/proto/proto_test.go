package proto

import (
	"strings"
	"testing"
)

func TestMessages(t *testing.T) {
	for _, m := range []Msg{{Kind: Ready}, {Kind: Recycle}, {Kind: Gather, Seq: 7}, {Kind: FD, Seq: 1 << 63},
		{Kind: Failed, Text: "root /srv/www: permission denied"}} {
		b := m.Encode()
		if len(b) > MaxMsg {
			t.Errorf("%+v encodes to %d bytes, over MaxMsg", m, len(b))
		}
		if got, err := Decode(b); err != nil || got != m {
			t.Errorf("Decode(%q) = %+v, %v; want %+v", b, got, err, m)
		}
	}
	for _, bad := range []string{"", "ready ", "ready 1", "fd", "fd x", "fd -1", "hello", "FD 1", "ack 1"} {
		if m, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%q) = %+v, want an error", bad, m)
		}
	}
	if got := string(Msg{Kind: FD, Seq: 42}.Encode()); got != "fd 42" {
		t.Errorf("wire form %q", got)
	}
	if long := (Msg{Kind: Failed, Text: strings.Repeat("x", 2*MaxMsg)}).Encode(); len(long) != MaxMsg {
		t.Errorf("a long failure encodes to %d bytes, want MaxMsg", len(long))
	}
}
