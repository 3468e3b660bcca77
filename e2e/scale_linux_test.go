//go:build linux && !race

package e2e

import (
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// TestManyPinsRestartAndReload: a daemon (built without the race
// detector) restarts over a million pins (100,000 without HANDOFF_PERF=1),
// half of them (up to 100,000) of an IPv4 service and the rest of an IPv6
// one, and adopts them: serving within 0.5 s (the median of three
// restarts), RSS within 64 MB. A reload that changes client_ttl rebuilds
// every set with the new timeout within 2 s and loses no pin. The pins are
// written with ipset restore, index entries included, as pinning writes
// them; their addresses come from the test ranges (198.18.0.0/15,
// 2001:2::/48), in sets only: no packet is sent from them.
func TestManyPinsRestartAndReload(t *testing.T) {
	const backends = 4
	pins := 100_000
	if testenv.Perf() {
		pins = 1_000_000
	}
	pins4 := min(pins/2, 100_000)
	pins6 := pins - pins4
	bin, err := testenv.HandoffBinary(false)
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t, 1, 1)
	svcs := []service{
		{name: "big", listen: ipv4.at(90), fields: []string{"health: {check: none}", "client_ttl: 1h", "max_clients: 1000000"}},
		{name: "big6", listen: ipv6.at(90), fields: []string{"health: {check: none}", "client_ttl: 1h", "max_clients: 1000000"}},
	}
	for i := range backends {
		svcs[0].backends = append(svcs[0].backends, backend{fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(ipv4.backend(0), uint16(8000+i))})
		svcs[1].backends = append(svcs[1].backends, backend{fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(ipv6.backend(0), uint16(8000+i))})
	}
	cfg := daemonConfig{mode: "kernel", logLevel: "info", services: svcs}
	path := writeConfig(t, cfg)
	d := launch(t, l.LB, bin, "run", "-c", path)
	d.waitServing(t, l.LB, ipv4.at(90))

	// Each backend's slot, from its leaf rule's mark.
	slots := map[string]string{}
	rules := l.LB.Run(t, "iptables", "-t", "nat", "-S") + l.LB.Run(t, "ip6tables", "-t", "nat", "-S")
	for _, m := range regexp.MustCompile(`--mark (0x[0-9a-f]+)/0xfff00000 -m set --match-set (ho6?-big6?-be\d) src -m comment --comment "handoff big6?/be\d dnat"`).
		FindAllStringSubmatch(rules, -1) {
		slots[m[2]] = m[1]
	}
	if len(slots) != 2*backends {
		t.Fatalf("slots %v", slots)
	}
	start := time.Now()
	var in strings.Builder
	pin := func(set, index string, a netip.Addr, i int) {
		be := fmt.Sprintf("%s-be%d", set, i%backends+1)
		fmt.Fprintf(&in, "add %s %s timeout 3600 comment \"src=%s\"\nadd %s %s skbmark %s/0xfff00000\n", be, a, a, index, a, slots[be])
	}
	for i := range pins4 {
		n := uint32(198)<<24 | 18<<16 + uint32(i) // in 198.18.0.0/15
		pin("ho-big", "hoi-big", netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), i)
	}
	for i := range pins6 {
		a := [16]byte{0x20, 0x01, 0, 2, 0, 0xff, 10: byte(i >> 40), 11: byte(i >> 32), 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)}
		pin("ho6-big6", "hoi6-big6", netip.AddrFrom16(a), i)
	}
	cmd := exec.Command("ip", "netns", "exec", l.LB.Name, "ipset", "restore")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipset restore: %v\n%s", err, out)
	}
	in.Reset()
	t.Logf("%d pins written in %v", pins, time.Since(start).Round(time.Millisecond))
	count := func() int { return countEntries(t, l, "ho-big-be") + countEntries(t, l, "ho6-big6-be") }
	if n := count(); n != pins {
		t.Fatalf("%d pins written, want %d", n, pins)
	}

	// The restarts: from exec to serving, polled from the log alone.
	var took []time.Duration
	for range 3 {
		d.stop(syscall.SIGTERM)
		start = time.Now()
		d = launch(t, l.LB, bin, "run", "-c", path)
		for !strings.Contains(d.log(), "msg=serving") {
			select {
			case <-d.done:
				t.Fatalf("handoff exited early:\n%s", d.log())
			case <-time.After(2 * time.Millisecond):
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("not serving after 20s:\n%s", d.log())
			}
		}
		took = append(took, time.Since(start))
	}
	slices.Sort(took)
	pid := d.cmd.Process.Pid
	rss, peak := procKB(t, pid, "VmRSS"), procKB(t, pid, "VmHWM")
	t.Logf("restart over %d pins: serving after %v (median of %v); RSS %d MiB (peak %d MiB)", pins, took[1].Round(time.Millisecond), took, rss/1024, peak/1024)
	if took[1] > 500*time.Millisecond {
		t.Errorf("the restart took %v to serve (median), want at most 500ms", took[1])
	}
	if peak > 64*1024 {
		t.Errorf("the restarted daemon's peak RSS is %d MiB, want at most 64", peak/1024)
	}
	d.waitServing(t, l.LB, ipv6.at(90))
	if n := count(); n != pins {
		t.Fatalf("%d pins after the restart, want %d", n, pins)
	}

	// A reload that changes client_ttl: every set is rebuilt.
	for i := range svcs {
		svcs[i].fields[1] = "client_ttl: 30m"
	}
	rewriteConfig(t, path, cfg)
	start = time.Now()
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLines(30*time.Second, 1, "config reloaded")
	reload := time.Since(start)
	t.Logf("reload changing client_ttl over %d pins: %v", pins, reload.Round(time.Millisecond))
	if reload > 2*time.Second {
		t.Errorf("the reload took %v, want at most 2s", reload)
	}
	if n := count(); n != pins {
		t.Errorf("%d pins after the reload, want %d", n, pins)
	}
	for _, set := range []string{"ho-big-be1", "ho6-big6-be1"} {
		if out := l.LB.Run(t, "ipset", "list", "-t", set); !strings.Contains(out, "timeout 1800") {
			t.Errorf("set header after the reload:\n%s", out)
		}
	}
}

// countEntries sums the entries of the sets whose names start with prefix.
func countEntries(t *testing.T, l *lab, prefix string) int {
	t.Helper()
	n, set := 0, ""
	for _, line := range strings.Split(l.LB.Run(t, "ipset", "list", "-t"), "\n") {
		if name, ok := strings.CutPrefix(line, "Name: "); ok {
			set = name
		}
		if v, ok := strings.CutPrefix(line, "Number of entries: "); ok && strings.HasPrefix(set, prefix) {
			c, _ := strconv.Atoi(v)
			n += c
		}
	}
	return n
}
