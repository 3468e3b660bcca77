package kernel

// Root tests of Sync against the real kernel, each in a fresh network
// namespace.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// TestNSSetHeaders checks that the headers of the sets create makes
// describe them exactly, and that sets with options create does not give
// are not taken for them.
func TestNSSetHeaders(t *testing.T) {
	ns, d, _ := nsLab(t, "ks-", Options{})
	specs := map[string]setSpec{
		"ho-a":  {family: ipv4, timeout: 60, maxelem: 1000},
		"ho-b":  {family: ipv4},
		"ho6-c": {family: ipv6, timeout: maxTimeout, maxelem: 1 << 20},
	}
	for name, spec := range specs {
		if err := d.sets.create(name, spec); err != nil {
			t.Fatal(err)
		}
	}
	foreign := map[string][]string{
		"f-netmask":  {"hash:ip", "netmask", "24", "comment"},
		"f-counters": {"hash:ip", "counters", "comment"},
		"f-timeout0": {"hash:ip", "timeout", "0", "comment"},
		"f-nocomm":   {"hash:ip"},
		"f-net":      {"hash:net", "comment"},
	}
	for name, args := range foreign {
		ns.Run(t, append([]string{"ipset", "create", name}, args...)...)
	}
	hs, err := d.sets.headers()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]setHeader{}
	for _, h := range hs {
		got[h.name] = h
	}
	for name, spec := range specs {
		if h := got[name]; !h.is(spec) {
			t.Errorf("header of %s = %+v, want spec %+v", name, h, spec)
		}
	}
	for name := range foreign {
		if h, ok := got[name]; !ok || h.exact {
			t.Errorf("header of %s = %+v (listed %v), want not exact", name, h, ok)
		}
	}
	if len(got) != len(specs)+len(foreign) {
		t.Errorf("headers = %+v, want %d sets", hs, len(specs)+len(foreign))
	}
}

// setsAndTargets sums up the nat chains of each service (HO-SVC-<svc> and
// its dispatch tree) in iptables-save output, sorted:
// for each rule matching a pin set, the set and its target's address.
func setsAndTargets(save string) map[string][]string {
	out := map[string][]string{}
	for name, rules := range parseSave([]byte(save)).chains {
		if !strings.HasPrefix(name, svcPrefix) {
			continue
		}
		svc, _, _ := strings.Cut(name, ".") // a dispatch tree's chains belong to the service chain
		for _, r := range rules {
			args := splitArgs(r)
			i, j := slices.Index(args, "--match-set"), slices.Index(args, "--to-destination")
			if i < 0 || i+1 >= len(args) {
				continue // the tree's own rules: they depend on the slots
			}
			to := "refresh"
			if j >= 0 && j+1 < len(args) {
				to = args[j+1]
			}
			out[svc] = append(out[svc], args[i+1]+" "+to)
		}
		slices.Sort(out[svc])
	}
	return out
}

// TestNSSyncReload1000 reloads 100 services × 10 backends back and forth,
// 10 backends added and 10 removed each time, as the balancer does (the
// union of old and new, then the new state), and checks the sets and
// rules after each reload against those a fresh Dataplane makes of the
// new state. It logs the median time of each Sync; HANDOFF_PERF=1 holds
// it to 150 ms.
func TestNSSyncReload1000(t *testing.T) {
	ns, d, _ := nsLab(t, "ks-", Options{})
	x, y := reloadStates()
	ctx := context.Background()

	// What a fresh Dataplane makes of each state.
	fresh := map[bool]string{}
	for i, st := range []dataplane.State{x, y} {
		ns2 := nstest.New(t, "ks-")
		d2, _ := newNSDataplane(t, ns2, Options{})
		mustSync(t, d2, st)
		fresh[i == 1] = ns2.Run(t, "iptables-save", "-t", "nat")
	}

	mustSync(t, d, x)
	reloads := 2
	if perf() {
		reloads = 9
	}
	var took []time.Duration
	for i := range reloads {
		from, to := x, y
		if i%2 == 1 {
			from, to = y, x
		}
		for _, st := range []dataplane.State{unionState(from, to), to} {
			start := time.Now()
			if err := d.Sync(ctx, st); err != nil {
				t.Fatalf("reload %d: Sync: %v", i, err)
			}
			took = append(took, time.Since(start))
		}
		got, want := setsAndTargets(ns.Run(t, "iptables-save", "-t", "nat")), setsAndTargets(fresh[i%2 == 0])
		if len(got) != 100 || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("reload %d: service chains differ from a fresh Sync's:\n%v\nwant\n%v", i, got, want)
		}
		sets := strings.Fields(ns.Run(t, "ipset", "list", "-n"))
		var wantSets []string
		for _, s := range to.Services {
			wantSets = append(wantSets, indexSetName(s.Name, ipv4), countSetName(s.Name, ipv4))
			for _, b := range s.Backends {
				wantSets = append(wantSets, dataplane.SetName(s.Name, b.Name, false))
			}
		}
		slices.Sort(sets)
		slices.Sort(wantSets)
		if !slices.Equal(sets, wantSets) {
			t.Fatalf("reload %d: %d sets, want %d", i, len(sets), len(wantSets))
		}
	}
	slices.Sort(took)
	median := took[len(took)/2]
	t.Logf("%d Syncs of 1,000 backends: median %v, min %v, max %v", len(took), median.Round(time.Millisecond), took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	if perf() && median > 150*time.Millisecond {
		t.Errorf("median Sync took %v, want at most 150ms", median)
	}
}

// TestNSSyncRereadsOnFailure checks that a Sync whose restore, planned
// from what it last wrote, fails because of a rule added behind its back
// reads the table and succeeds, and that the tool's complaint names the
// failing line (which tells that nothing was written).
func TestNSSyncRereadsOnFailure(t *testing.T) {
	ns, d, ct := nsLab(t, "ks-", Options{})
	ctx := context.Background()
	st := labState(2, time.Hour, 100)
	mustSync(t, d, st)
	ns.Run(t, "iptables", "-t", "nat", "-N", "FOREIGN")
	ns.Run(t, "iptables", "-t", "nat", "-A", "FOREIGN", "-j", "HO-SVC-web")

	err := d.ipt[ipv4].restore(ctx, []byte("*nat\n:HO-SVC-web - [0:0]\n-X HO-SVC-web\nCOMMIT\n"))
	var re *restoreError
	if !errors.As(err, &re) || re.line != 3 {
		t.Errorf("restore deleting a referenced chain: %v, want a restoreError at line 3", err)
	}

	restores := ct[ipv4].restores.Load()
	st.Services = st.Services[1:] // web goes
	mustSync(t, d, st)
	if n := ct[ipv4].restores.Load() - restores; n != 2 {
		t.Errorf("%d ipv4 restores, want 2 (planned from the cache, then from the tables as read)", n)
	}
	nat := ns.Run(t, "iptables-save", "-t", "nat")
	if strings.Contains(nat, "HO-SVC-web") || !strings.Contains(nat, ":FOREIGN") {
		t.Errorf("nat after removing web:\n%s", nat)
	}
}
