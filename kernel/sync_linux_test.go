package kernel

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/dataplane"
)

// TestSyncTrustsWhatItWrote checks that a Sync after a successful one
// plans from what it wrote, reading back only the table it writes, and
// creates no set that exists as wanted, while a canary check reads every
// table.
func TestSyncTrustsWhatItWrote(t *testing.T) {
	d, k := syncedFake(t, twoServices())
	ctx := context.Background()
	if k.saves == 0 {
		t.Fatal("the first Sync read no table")
	}
	st := twoServices()
	st.Services[0].Backends = append(st.Services[0].Backends, dataplane.Backend{Name: "be3", Address: netip.MustParseAddrPort("198.19.1.14:80")})
	saves, creates, restores := k.saves, k.creates, k.restore
	mustSync(t, d, st)
	if k.saves != saves+1 {
		t.Errorf("second Sync read %d tables, want 1 (nat, read back after the write)", k.saves-saves)
	}
	if k.creates != creates+1 {
		t.Errorf("second Sync created %d sets, want 1 (ho-web-be3)", k.creates-creates)
	}
	if k.restore != restores+1 {
		t.Errorf("second Sync ran %d restores, want 1 (nat)", k.restore-restores)
	}
	client := netip.MustParseAddr("198.18.0.7")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be3", Client: client})
	if to, ok, err := k.synLands(client, netip.MustParseAddrPort("198.18.1.1:80")); err != nil || !ok || to != netip.MustParseAddrPort("198.19.1.14:80") {
		t.Errorf("SYN of a client pinned to the new backend lands at %v, %v, %v", to, ok, err)
	}

	saves = k.saves
	d.checkCanary(ctx)
	if k.saves-saves != 1 {
		t.Errorf("canary check ran iptables-save %d times, want once (every table)", k.saves-saves)
	}
}

// TestSyncRereadsOnFailure checks that when a restore planned from what
// Sync last wrote fails, because the table changed behind its back, Sync
// reads the table and succeeds.
func TestSyncRereadsOnFailure(t *testing.T) {
	d, k := syncedFake(t, twoServices())
	ctx := context.Background()
	// A foreign rule jumps to api's chain: deleting the chain needs the
	// rule gone first, which only a plan from the table as read knows.
	if err := (fakeTables{k, ipv4}).restore(ctx, []byte("*nat\n:FOREIGN - [0:0]\n-A FOREIGN -j HO-SVC-api\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	st := twoServices()
	st.Services = st.Services[:1]
	var inputs [][]byte
	d.ipt[ipv4] = inputsTables{d.ipt[ipv4], &inputs}
	saves, restores := k.saves, k.restore
	mustSync(t, d, st)
	if k.saves-saves != 2 || k.restore-restores != 2 {
		t.Errorf("Sync ran iptables-save %d times and iptables-restore %d times, want 2 (the tables read, then read back) and 2 (planned from the cache, then from the tables as read)", k.saves-saves, k.restore-restores)
	}
	if nat := k.tableText(ipv4, natTable); strings.Contains(nat, "HO-SVC-api") || !strings.Contains(nat, ":FOREIGN") {
		t.Errorf("nat after removing api:\n%s", nat)
	}
	if d.cache[ipv4][natTable] == nil {
		t.Error("nat cache not restored after the fallback")
	}
	// The fallback still plans with what was last written: it rewrites
	// only the chains that change (it declares api's chains, in nat and
	// filter, to flush them).
	if len(inputs) != 2 || strings.Count(string(inputs[1]), ":HO-SVC-") != 2 {
		t.Errorf("restores:\n%s", bytes.Join(inputs, []byte("--\n")))
	}
}

// TestSyncChecksSets checks that Sync recreates a set destroyed behind its
// back and rebuilds one recreated with another spec, though it trusts its
// tables.
func TestSyncChecksSets(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, twoServices())
	sets := fakeSets{k}
	k.mu.Lock()
	delete(k.sets, "ho-web-be1")
	k.mu.Unlock()
	if err := sets.destroy("ho-api-x"); err == nil {
		t.Fatal("the fake destroyed a set a rule uses")
	}
	k.mu.Lock()
	k.sets["ho-web-be2"].spec.timeout = 5
	k.mu.Unlock()
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be2", Client: netip.MustParseAddr("198.18.0.8"), Key: "kept"})
	k.log = nil
	mustSync(t, d, twoServices())
	k.mu.Lock()
	defer k.mu.Unlock()
	svcs, _ := compile(twoServices())
	want := svcs[1].spec() // web's
	for _, name := range []string{"ho-web-be1", "ho-web-be2"} {
		if s := k.sets[name]; s == nil || s.spec != want {
			t.Errorf("set %s after Sync: %+v, want spec %+v", name, s, want)
		}
	}
	if s := k.sets["ho-web-be2"]; s == nil || len(s.members) != 1 {
		t.Errorf("rebuilt set lost its pin: %+v", s)
	}
	if !slices.Contains(k.log, "create ho-web-be1") || slices.Contains(k.log, "create ho-web-be2") {
		// be2 is rebuilt through a temporary set, not created anew.
		t.Errorf("operations %v, want be1 created and be2 rebuilt", k.log)
	}
}

// inputsTables keeps every restore input.
type inputsTables struct {
	iptables
	inputs *[][]byte
}

func (r inputsTables) restore(ctx context.Context, data []byte) error {
	*r.inputs = append(*r.inputs, slices.Clone(data))
	return r.iptables.restore(ctx, data)
}
