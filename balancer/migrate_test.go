package balancer

import (
	"net/netip"
	"testing"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/dataplane"
)

// TestKeyOf: migrations rehash a client by the key its pin's label names;
// labels that name none (hand-made pins) fall back to the client address,
// so hand-pinned clients do not all share one key and one new backend.
func TestKeyOf(t *testing.T) {
	a, b := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:2::7")
	for _, tc := range []struct {
		label  string
		client netip.Addr
		want   string
	}{
		{"sni=a.example", a, "a.example"},
		{"host=b.example", b, "b.example"},
		{"payload=job=7", a, "job=7"},
		{`payload=station\x207`, a, "station 7"},
		{`host=m\xc3\xbcller`, b, "müller"},
		{`payload=a\x22b\x5cc`, a, `a"b\c`},
		{`payload=bad\x2`, a, classifier.SourceKey(a)}, // not Label's form
		{"src=198.18.0.1", a, classifier.SourceKey(a)},
		{"", b, classifier.SourceKey(b)},
		{ManualKey, a, classifier.SourceKey(a)},
		{ManualKey, b, classifier.SourceKey(b)},
	} {
		if got := keyOf(dataplane.Pin{Key: tc.label, Client: tc.client}); got != tc.want {
			t.Errorf("keyOf(%q, %s) = %q, want %q", tc.label, tc.client, got, tc.want)
		}
	}
}
