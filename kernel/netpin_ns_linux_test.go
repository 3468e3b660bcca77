package kernel

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// setType returns the type ipset lists for set, "" when it does not exist.
func setType(t testing.TB, ns *nstest.NS, set string) string {
	t.Helper()
	out, err := ns.RunErr("ipset", "list", "-t", set)
	if err != nil {
		return ""
	}
	for l := range strings.SplitSeq(out, "\n") {
		if typ, ok := strings.CutPrefix(l, "Type: "); ok {
			return strings.TrimSpace(typ)
		}
	}
	t.Fatalf("ipset list -t %s: no type in %q", set, out)
	return ""
}

// wantSeen waits for a backend's next connection and checks it came from src.
func wantSeen(t testing.TB, seen <-chan netip.AddrPort, src netip.Addr) {
	t.Helper()
	select {
	case got := <-seen:
		if got.Addr() != src {
			t.Errorf("backend saw %s, want %s", got, src)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("backend saw no connection from %s", src)
	}
}

// TestNSPinNetworks checks per-prefix pinning of IPv6 clients: a service
// with IPv6PinPrefix keeps hash:net sets, a pin covers every address of
// the client's network (and no other), Lookup and Unpin take any address
// of it, and turning it off and on again moves the service to sets of the
// other type.
func TestNSPinNetworks(t *testing.T) {
	tp, d, _, seen6 := topoLab(t, 2, Options{})
	// Client6 is 2001:2:0:1::2; the clients added are ::3 to ::10, so
	// ::3 shares Client6's /124 and ::10 is in the next one.
	_, more6 := tp.AddClients(t, 14)
	inside, outside := more6[0], more6[13]
	if inside != netip.MustParseAddr("2001:2:0:1::3") || outside != netip.MustParseAddr("2001:2:0:1::10") {
		t.Fatalf("client addresses %s, %s", inside, outside)
	}
	ctx := context.Background()
	vip := netip.AddrPortFrom(nstest.LBClient6, 80)

	state := func(prefix int) dataplane.State {
		st := labState(2, time.Hour, 1000)
		for i := range st.Services {
			st.Services[i].IPv6PinPrefix = prefix // web, the IPv4 service, ignores it
		}
		return st
	}
	mustSync(t, d, state(124))
	for set, want := range map[string]string{
		"hn6-web6-be0": "hash:net", "hn6-web6-be1": "hash:net", "hni6-web6": "hash:net",
		"ho6-web6-be0": "", "hoi6-web6": "", "ho-web-be0": "hash:ip", "hoi-web": "hash:ip",
	} {
		if got := setType(t, tp.LB, set); got != want {
			t.Errorf("set %s: type %q, want %q", set, got, want)
		}
	}

	// The headers read back as created: the canary's verification
	// leaves the sets alone.
	hs, err := d.sets.headers()
	if err != nil {
		t.Fatal(err)
	}
	pinSpec := setSpec{family: ipv6, timeout: 3600, maxelem: 1000, net: true}
	indexSpec := setSpec{family: ipv6, maxelem: indexMaxelem, index: true, net: true}
	for _, h := range hs {
		switch {
		case strings.HasPrefix(h.name, "hn6-") && !h.is(pinSpec), h.name == "hni6-web6" && !h.is(indexSpec):
			t.Errorf("set %s reads back as %+v (exact %v)", h.name, h.spec, h.exact)
		}
	}

	mustPin(t, d, dataplane.Pin{Service: "web6", Backend: "be1", Client: nstest.Client6, Key: "src=" + nstest.Client6.String()})
	network := netip.MustParseAddr("2001:2:0:1::")
	if out := tp.LB.Run(t, "ipset", "save", "hn6-web6-be1"); !strings.Contains(out, "add hn6-web6-be1 2001:2:0:1::/124 timeout") {
		t.Errorf("hn6-web6-be1 lacks the network 2001:2:0:1::/124:\n%s", out)
	}
	var pins []dataplane.Pin
	if err := d.Pins(ctx, "web6", "", func(p dataplane.Pin) error { pins = append(pins, p); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(pins) != 1 || pins[0].Client != network || pins[0].Backend != "be1" || pins[0].Key != "src="+nstest.Client6.String() {
		t.Errorf("Pins = %+v, want the network %s on be1", pins, network)
	}

	// Both addresses of the network go to be1 in the kernel; the one
	// outside it is not pinned (nothing listens on the VIP).
	for _, src := range []netip.Addr{nstest.Client6, inside} {
		conn, err := dialVIP(ctx, tp, src, vip)
		if err != nil {
			t.Fatalf("client %s of the pinned network: %v", src, err)
		}
		conn.Close()
		wantSeen(t, seen6[1], src)
	}
	if conn, err := dialVIP(ctx, tp, outside, vip); err == nil {
		conn.Close()
		t.Errorf("client %s outside the pinned /124 reached the VIP", outside)
	}
	select {
	case got := <-seen6[0]:
		t.Errorf("be0 saw %s", got)
	case got := <-seen6[1]:
		t.Errorf("be1 saw %s", got)
	default:
	}

	// Lookup and Unpin by any address of the network.
	if p, ok, err := d.Lookup(ctx, "web6", inside); err != nil || !ok || p.Backend != "be1" || p.Client != network {
		t.Errorf("Lookup(%s) = %+v, %v, %v; want be1, client %s", inside, p, ok, err, network)
	}
	if _, ok, err := d.Lookup(ctx, "web6", outside); err != nil || ok {
		t.Errorf("Lookup(%s) = %v, %v; want no pin", outside, ok, err)
	}
	if err := d.Unpin(ctx, "web6", "be1", netip.MustParseAddr("2001:2:0:1::9")); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := d.Lookup(ctx, "web6", nstest.Client6); err != nil || ok {
		t.Errorf("Lookup after Unpin = %v, %v", ok, err)
	}

	// Off: the service is back on hash:ip sets, the network sets are gone,
	// and a pin is one address again.
	mustPin(t, d, dataplane.Pin{Service: "web6", Backend: "be0", Client: inside})
	mustSync(t, d, state(0))
	for set, want := range map[string]string{"ho6-web6-be1": "hash:ip", "hoi6-web6": "hash:ip", "hn6-web6-be1": "", "hni6-web6": ""} {
		if got := setType(t, tp.LB, set); got != want {
			t.Errorf("after turning it off: set %s: type %q, want %q", set, got, want)
		}
	}
	mustPin(t, d, dataplane.Pin{Service: "web6", Backend: "be0", Client: inside})
	if _, ok, _ := d.Lookup(ctx, "web6", nstest.Client6); ok {
		t.Error("a pin of one address covers another")
	}
	conn, err := dialVIP(ctx, tp, inside, vip)
	if err != nil {
		t.Fatalf("client %s pinned by address: %v", inside, err)
	}
	conn.Close()
	wantSeen(t, seen6[0], inside)
	// On again, at /64 this time: every lab client is in one network.
	mustSync(t, d, state(64))
	mustPin(t, d, dataplane.Pin{Service: "web6", Backend: "be0", Client: outside})
	var clients []netip.Addr
	if err := d.Pins(ctx, "web6", "be0", func(p dataplane.Pin) error { clients = append(clients, p.Client); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(clients, []netip.Addr{network}) {
		t.Errorf("pins after turning it on at /64: %v, want [%s]", clients, network)
	}
	conn, err = dialVIP(ctx, tp, nstest.Client6, vip)
	if err != nil {
		t.Fatalf("client %s of the pinned /64: %v", nstest.Client6, err)
	}
	conn.Close()
	wantSeen(t, seen6[0], nstest.Client6)
}
