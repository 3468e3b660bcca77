package dataplane

import (
	"net/netip"
	"testing"
)

func TestPinKey(t *testing.T) {
	for _, c := range []struct {
		client string
		prefix int
		want   string
	}{
		{"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::"},
		{"2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::"},
		{"2001:db8:1:2:3:4:5:6", 0, "2001:db8:1:2:3:4:5:6"},
		{"2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"},
		{"198.18.0.7", 64, "198.18.0.7"},               // IPv4 clients are pinned by address
		{"::ffff:198.18.0.7", 64, "::ffff:198.18.0.7"}, // and so are mapped ones
	} {
		if got := PinKey(netip.MustParseAddr(c.client), c.prefix); got != netip.MustParseAddr(c.want) {
			t.Errorf("PinKey(%s, %d) = %s, want %s", c.client, c.prefix, got, c.want)
		}
	}
}
