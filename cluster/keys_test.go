package cluster

import (
	"net/netip"
	"testing"
)

func TestPinValue(t *testing.T) {
	for _, v := range []pinValue{
		{Backend: "be1", Key: "src=198.18.0.7", Expires: 1767225600123, Node: "lb1", Written: 1767223800123},
		{Backend: "b-2_x", Key: "payload=station 7 with spaces", Expires: 0, Node: "lb2.example", Written: 5},
		{Backend: "be1", Key: "", Node: "n", Written: 1},
	} {
		got, err := decodePin(v.encode())
		if err != nil || got != v {
			t.Errorf("decode(encode(%+v)) = %+v, %v", v, got, err)
		}
	}
	for _, bad := range []string{"", "h1", "h1 be1", "h1 be1 x 1 n k", "h1 be1 1 1", "{\"b\":\"be1\"}", "h1  1 1 n k"} {
		if _, err := decodePin([]byte(bad)); err == nil {
			t.Errorf("decodePin(%q) accepted", bad)
		}
	}
}

func TestKeys(t *testing.T) {
	k := newKeys("/handoff/", "edge-a")
	c := netip.MustParseAddr("2001:2::7")
	key := k.pin("web", c)
	if key != "/handoff/edge-a/pins/web/2001:2::7" {
		t.Errorf("pin key = %q", key)
	}
	if pk, ok := k.parsePin(key); !ok || pk != (pinKey{"web", c}) {
		t.Errorf("parsePin(%q) = %v, %v", key, pk, ok)
	}
	if _, ok := k.parsePin("/handoff/edge-a/pins/web/not-an-ip"); ok {
		t.Error("parsePin accepted a key without an address")
	}
}
