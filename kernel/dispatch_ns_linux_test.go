package kernel

// Root tests of the dispatch index and the mark tree against the real
// kernel.

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/proxy"
)

// wideLabState is labState's web (IPv4) with n backends: b<i> for i < n-1
// on addresses nothing answers (198.19.200.0/21), and the last one on the
// lab's backend 0.
func wideLabState(n int) dataplane.State {
	web := dataplane.Service{Name: "web", Listen: netip.AddrPortFrom(nstest.LBClient4, 80), ClientTTL: time.Hour, MaxClients: 1000}
	for i := range n - 1 {
		web.Backends = append(web.Backends, dataplane.Backend{
			Name:    fmt.Sprintf("b%d", i),
			Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(200 + i/250), byte(i%250 + 1)}), 8080),
		})
	}
	web.Backends = append(web.Backends, dataplane.Backend{Name: "last", Address: netip.AddrPortFrom(nstest.Backend4(0), 8080)})
	return dataplane.State{Services: []dataplane.Service{web}}
}

// TestNSDispatchWide pins a client to the last of 1,000 backends and
// checks that its connections reach it in the kernel, that the in-kernel
// refresh leaves its index entry's mark, and that the dispatch tree is
// what iptables shows.
func TestNSDispatchWide(t *testing.T) {
	tp, d, seen, _ := topoLab(t, 1, Options{})
	mustSync(t, d, wideLabState(1000))
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "last", Client: nstest.Client4, Key: "src=" + nstest.Client4.String()})
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	for i := range 3 {
		c, err := dialVIP(context.Background(), tp, nstest.Client4, vip)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
		select {
		case got := <-seen[0]:
			if got.Addr() != nstest.Client4 {
				t.Errorf("backend saw %s, want the client's address", got)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("connection %d never reached the last backend", i)
		}
	}
	idx := tp.LB.Run(t, "ipset", "list", "hoi-web")
	want := fmt.Sprintf("%s skbmark 0x%x/0x%x", nstest.Client4, 1000<<20, DefaultMarkMask)
	if !strings.Contains(idx, want) {
		t.Errorf("ipset list hoi-web after three connections:\n%s\nwant the line %q", idx, want)
	}
	pin := tp.LB.Run(t, "ipset", "list", "ho-web-last")
	if !regexp.MustCompile(regexp.QuoteMeta(nstest.Client4.String()) + ` timeout 3\d{3} comment "src=`).MatchString(pin) {
		t.Errorf("ipset list ho-web-last:\n%s", pin)
	}
	nat := tp.LB.Run(t, "iptables", "-t", "nat", "-S")
	chains := strings.Count(nat, "-N HO-SVC-web")
	if chains < 60 || chains > 70 {
		t.Errorf("%d dispatch chains for 1,000 backends, want 1 + 4 + 63", chains)
	}
	for _, l := range []string{
		`-A HO-SVC-web -m mark --mark 0x30000000/0xf0000000 -m comment --comment "handoff web dispatch" -g HO-SVC-web.3`,
		`-A HO-SVC-web.3 -m mark --mark 0x3e000000/0xff000000 -m comment --comment "handoff web dispatch" -g HO-SVC-web.3e`,
		`-A HO-SVC-web.3e -p tcp -m mark --mark 0x3e800000/0xfff00000 -m set --match-set ho-web-last src -m comment --comment "handoff web/last dnat" -j DNAT --to-destination 198.19.1.11:8080`,
	} {
		if !strings.Contains(nat, l+"\n") {
			t.Errorf("iptables -t nat -S lacks\n%s", l)
		}
	}
	// An unpinned client passes to the listener: nothing listens there.
	other, _ := tp.AddClients(t, 1)
	if c, err := dialVIP(context.Background(), tp, other[0], vip); err == nil {
		c.Close()
		t.Error("an unpinned client was forwarded")
	}
}

// TestNSUpgradeKeepsPins sets up the kernel objects of handoff before the
// dispatch index (per-backend sets walked rule by rule), with a client
// pinned and a connection open, and checks that the first Sync keeps the
// connection, the pin and its backend.
func TestNSUpgradeKeepsPins(t *testing.T) {
	nstest.RequireRoot(t)
	tp := nstest.NewTopology(t, 2)
	seen, _ := labBackends(t, tp)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	st := labState(2, time.Hour, 1000)
	st.Services = st.Services[:1]
	lb := tp.LB
	for i := range 2 {
		lb.Run(t, "ipset", "create", fmt.Sprintf("ho-web-be%d", i), "hash:ip", "timeout", "3600", "maxelem", "1000", "comment")
	}
	lb.Run(t, "ipset", "add", "ho-web-be1", nstest.Client4.String(), "comment", "src=kept")
	rules := "*nat\n:HANDOFF-PREROUTING - [0:0]\n:HO-SVC-web - [0:0]\n" +
		`-I PREROUTING 1 -m comment --comment "handoff jump" -j HANDOFF-PREROUTING` + "\n" +
		`-A HANDOFF-PREROUTING -d 198.18.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web service" -j HO-SVC-web` + "\n"
	for i := range 2 {
		rules += fmt.Sprintf(`-A HO-SVC-web -p tcp -m set --match-set ho-web-be%d src -m comment --comment "handoff web/be%d refresh" -j SET --add-set ho-web-be%d src --exist --timeout 3600`+"\n", i, i, i)
		rules += fmt.Sprintf(`-A HO-SVC-web -p tcp -m set --match-set ho-web-be%d src -m comment --comment "handoff web/be%d dnat" -j DNAT --to-destination %s`+"\n", i, i, netip.AddrPortFrom(nstest.Backend4(i), 8080))
	}
	file := filepath.Join(t.TempDir(), "rules")
	if err := os.WriteFile(file, []byte(rules+"COMMIT\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	lb.Run(t, "iptables-restore", "--noflush", file)
	lb.Run(t, "iptables", "-N", "HANDOFF-FORWARD")
	lb.Run(t, "iptables", "-I", "FORWARD", "1", "-j", "HANDOFF-FORWARD")
	lb.Run(t, "iptables", "-A", "HANDOFF-FORWARD", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")

	open, err := dialVIP(context.Background(), tp, nstest.Client4, vip)
	if err != nil {
		t.Fatalf("before the upgrade: %v", err)
	}
	defer open.Close()
	<-seen[1]

	d, _ := newNSDataplane(t, lb, Options{})
	mustSync(t, d, st)
	// The open connection goes on.
	open.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := open.Write([]byte("after\n")); err != nil {
		t.Fatalf("the open connection after the upgrade: %v", err)
	}
	buf := make([]byte, 6)
	if _, err := open.Read(buf); err != nil || string(buf) != "after\n" {
		t.Fatalf("the open connection after the upgrade read %q, %v", buf, err)
	}
	// A new one goes to be1, in the kernel.
	c, err := dialVIP(context.Background(), tp, nstest.Client4, vip)
	if err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	c.Close()
	select {
	case <-seen[1]:
	case got := <-seen[0]:
		t.Fatalf("after the upgrade the client went to be0 (%s)", got)
	case <-time.After(3 * time.Second):
		t.Fatal("after the upgrade the client reached no backend")
	}
	if out := lb.Run(t, "ipset", "list", "ho-web-be1"); !strings.Contains(out, `comment "src=kept"`) {
		t.Errorf("the pin lost its key:\n%s", out)
	}
}

// TestNSCanaryRepairsDrift changes handoff's kernel objects behind its
// back, one kind of change at a time (a rule edited in place, its port or
// verdict replaced, rules reordered or deleted, chains flushed or
// deleted, jumps deleted or edited, the mangle and filter rules, the index
// emptied, everything removed), runs one canary check and checks that the
// tables are back to what the Sync made, that the change was counted, and
// that pinned clients reach their backends in the kernel again.
func TestNSCanaryRepairsDrift(t *testing.T) {
	tp, d, seen, _ := topoLab(t, 2, Options{})
	others, _ := tp.AddClients(t, 1)
	st := labState(2, time.Hour, 1000)
	st.Services = st.Services[:1]
	mustSync(t, d, st)
	ctx := context.Background()
	pins := map[netip.Addr]int{nstest.Client4: 1, others[0]: 0}
	pinAll := func(t *testing.T) {
		for c, be := range pins {
			mustPin(t, d, dataplane.Pin{Service: "web", Backend: fmt.Sprintf("be%d", be), Client: c})
		}
	}
	pinAll(t)
	tables := func() []string {
		var out []string
		for _, tb := range []string{"mangle", "nat", "filter"} {
			out = append(out, handoffLines(tp.LB.Run(t, "iptables-save", "-t", tb))...)
		}
		return out
	}
	want := tables()
	// countingEntries is what the counting set holds, as ipset save shows
	// it (counters left out).
	countingEntries := func() []string {
		var out []string
		for l := range strings.Lines(tp.LB.Run(t, "ipset", "save", "hoc-web")) {
			if f := strings.Fields(l); len(f) >= 3 && f[0] == "add" {
				out = append(out, f[2])
			}
		}
		slices.Sort(out)
		return out
	}
	wantCounting := []string{"198.19.1.11,tcp:8080", "198.19.1.12,tcp:8080"}
	if got := countingEntries(); !slices.Equal(got, wantCounting) {
		t.Fatalf("the counting set: %q, want %q", got, wantCounting)
	}
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	dnat := func(be int, to string) string {
		return fmt.Sprintf(`-p tcp -m mark --mark 0x%x/0xfff00000 -m set --match-set ho-web-be%d src -m comment --comment "handoff web/be%d dnat" -j %s`, (be+1)<<20, be, be, to)
	}
	for _, c := range []struct {
		name   string
		script string
		lost   bool // the drift destroyed the pins themselves
	}{
		{"rule edited in place", "iptables -t nat -R HO-SVC-web 3 " + dnat(0, "DNAT --to-destination 198.19.1.12:8080"), false},
		{"port replaced", "iptables -t nat -R HO-SVC-web 5 " + dnat(1, "DNAT --to-destination 198.19.1.12:9999"), false},
		{"verdict replaced", "iptables -t nat -R HO-SVC-web 5 " + dnat(1, "RETURN"), false},
		{"rules reordered", "iptables -t nat -D HO-SVC-web 3 && iptables -t nat -I HO-SVC-web 2 " + dnat(0, "DNAT --to-destination 198.19.1.11:8080"), false},
		{"rule deleted", "iptables -t nat -D HO-SVC-web 5", false},
		{"chain flushed", "iptables -t nat -F HO-SVC-web", false},
		{"chain deleted", "iptables -t nat -F HANDOFF-PREROUTING && iptables -t nat -F HANDOFF-OUTPUT && iptables -t nat -F HO-SVC-web && iptables -t nat -X HO-SVC-web", false},
		{"jump deleted", `iptables -t nat -D PREROUTING -m comment --comment "handoff jump" -j HANDOFF-PREROUTING`, false},
		{"jump edited", `iptables -t nat -R PREROUTING 1 -s 10.0.0.0/8 -m comment --comment "handoff jump" -j HANDOFF-PREROUTING`, false},
		{"jump doubled", `iptables -t nat -A PREROUTING -m comment --comment "handoff jump" -j HANDOFF-PREROUTING`, false},
		{"mangle rule deleted", "iptables -t mangle -F HANDOFF-MARK", false},
		{"mangle jump edited", `iptables -t mangle -R PREROUTING 1 -m conntrack --ctstate INVALID -m comment --comment "handoff jump" -j HANDOFF-MARK`, false},
		{"forward rule replaced", "iptables -R HANDOFF-FORWARD 1 -j DROP", false},
		{"counting rule edited", `iptables -R HO-SVC-web 2 -m set --match-set hoc-web src,src -m comment --comment "handoff web from backends" -j DROP`, false},
		{"counting chain flushed", "iptables -F HO-SVC-web", false},
		{"counting set emptied", "ipset flush hoc-web", false},
		{"counting set entry replaced", "ipset del hoc-web 198.19.1.11,tcp:8080 && ipset add hoc-web 198.19.1.11,tcp:9999", false},
		{"counting set destroyed", "iptables -F HO-SVC-web && ipset destroy hoc-web", false},
		{"index emptied", "ipset flush hoi-web", false},
		{"index destroyed", "iptables -t mangle -F HANDOFF-MARK && ipset destroy hoi-web", false},
		{"everything removed", "iptables -t mangle -F HANDOFF-MARK && iptables -t nat -F HO-SVC-web && ipset destroy hoi-web && ipset destroy ho-web-be0 && ipset destroy ho-web-be1", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			tp.LB.Run(t, "sh", "-c", c.script)
			before := d.Repairs()
			d.checkCanary(ctx)
			d.collectIndexes(ctx)
			if d.Repairs() == before {
				t.Error("the repair was not counted")
			}
			if got := tables(); !slices.Equal(got, want) {
				t.Errorf("after one canary check:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if got := countingEntries(); !slices.Equal(got, wantCounting) {
				t.Errorf("the counting set after one canary check: %q, want %q", got, wantCounting)
			}
			if c.lost {
				pinAll(t)
			}
			for cl, be := range pins {
				conn, err := dialVIP(ctx, tp, cl, vip)
				if err != nil {
					t.Fatalf("client of be%d after the repair: %v", be, err)
				}
				conn.Close()
				select {
				case <-seen[be]:
				case got := <-seen[1-be]:
					t.Errorf("client of be%d went to be%d (%s)", be, 1-be, got)
				case <-time.After(3 * time.Second):
					t.Errorf("client of be%d reached no backend", be)
				}
			}
		})
	}
}

// TestNSHoldSYN holds the first SYN of new clients of a service in the
// real kernel's queue: the decision pins each client once, its first
// connection and every later one reach the backend with the client's own
// address, and once nothing serves the queue new clients' SYNs pass to
// the listener (nothing listens here: refused at once, never held).
func TestNSHoldSYN(t *testing.T) {
	tp, d, seen4, seen6 := topoLab(t, 2, Options{})
	clients4, clients6 := tp.AddClients(t, 3)
	st := labState(2, time.Hour, 1000)
	for i := range st.Services {
		st.Services[i].HoldSYN = true
	}
	serve, err := d.HoldSYNs()
	if err != nil {
		t.Fatalf("HoldSYNs: %v", err)
	}
	mustSync(t, d, st)
	var decided atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- serve(ctx, func(ctx context.Context, syn dataplane.HeldSYN) (string, bool) {
			decided.Add(1)
			if err := d.Pin(ctx, dataplane.Pin{Service: syn.Service, Backend: "be1", Client: syn.Client, Key: "src=" + syn.Client.String()}); err != nil {
				t.Errorf("Pin: %v", err)
				return "", false
			}
			return "be1", true
		})
	}()
	for _, c := range []struct {
		name    string
		clients []netip.Addr
		vip     netip.AddrPort
		seen    []<-chan netip.AddrPort
	}{
		{"ipv4", clients4, netip.AddrPortFrom(nstest.LBClient4, 80), seen4},
		{"ipv6", clients6, netip.AddrPortFrom(nstest.LBClient6, 80), seen6},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := decided.Load()
			for _, cl := range c.clients {
				for i := range 3 {
					conn, err := dialVIP(context.Background(), tp, cl, c.vip)
					if err != nil {
						t.Fatalf("client %s connection %d: %v", cl, i, err)
					}
					conn.Close()
					select {
					case got := <-c.seen[1]:
						if got.Addr() != cl {
							t.Errorf("be1 saw %s, want the client's %s", got, cl)
						}
					case <-time.After(3 * time.Second):
						t.Fatalf("client %s connection %d reached no backend", cl, i)
					}
				}
			}
			if n := decided.Load() - before; n != int64(len(c.clients)) {
				t.Errorf("%d decisions for %d new clients, want one each", n, len(c.clients))
			}
		})
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	// Nothing reads the queue: a new client's SYN passes unheld.
	others, _ := tp.AddClients(t, 1)
	start := time.Now()
	if conn, err := dialVIP(context.Background(), tp, others[0], netip.AddrPortFrom(nstest.LBClient4, 80)); err == nil {
		conn.Close()
		t.Error("a new client reached a backend with nothing deciding")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("the SYN of a new client waited %v with nothing reading the queue", took)
	}
}

// TestNSTransparentDial dials a backend from a client's address inside the
// balancer's namespace, as the proxy does for a first connection, and
// checks that the backend sees the client and that its replies come back
// to the socket through the rule and route Sync installs; that the canary
// restores a deleted rule; and that both go when no longer asked for.
func TestNSTransparentDial(t *testing.T) {
	tp, d, seen4, seen6 := topoLab(t, 1, Options{})
	st := labState(1, time.Hour, 100)
	st.Transparent = true
	mustSync(t, d, st)
	dial := func(t *testing.T, from netip.AddrPort, to netip.AddrPort, seen <-chan netip.AddrPort) {
		t.Helper()
		err := tp.LB.Do(func() error {
			c, err := proxy.DialTransparent(context.Background(), from, to, 3*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Write([]byte("ping\n")); err != nil {
				return err
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil {
				return fmt.Errorf("reading the echo: %w", err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("transparent dial from %s to %s: %v", from, to, err)
		}
		if got := <-seen; got != from {
			t.Errorf("the backend saw %s, want the client's %s", got, from)
		}
	}
	t.Run("ipv4", func(t *testing.T) {
		dial(t, netip.AddrPortFrom(nstest.Client4, 40001), netip.AddrPortFrom(nstest.Backend4(0), 8080), seen4[0])
	})
	t.Run("ipv6", func(t *testing.T) {
		dial(t, netip.AddrPortFrom(nstest.Client6, 40001), netip.AddrPortFrom(nstest.Backend6(0), 8080), seen6[0])
	})
	rule := "fwmark 0xfff00000/0xfff00000 lookup 18511"
	for _, fam := range []string{"-4", "-6"} {
		if out := tp.LB.Run(t, "ip", fam, "rule"); !strings.Contains(out, rule) {
			t.Errorf("ip %s rule:\n%s", fam, out)
		}
		if out := tp.LB.Run(t, "ip", fam, "route", "show", "table", "18511"); !strings.Contains(out, "local default dev lo") {
			t.Errorf("ip %s route show table 18511:\n%s", fam, out)
		}
	}
	tp.LB.Run(t, "ip", "-4", "rule", "del", "fwmark", "0xfff00000/0xfff00000", "lookup", "18511")
	before := d.Repairs()
	d.checkCanary(context.Background())
	if out := tp.LB.Run(t, "ip", "-4", "rule"); !strings.Contains(out, rule) || d.Repairs() == before {
		t.Errorf("after deleting the rule and a canary check (repairs %d):\n%s", d.Repairs()-before, out)
	}
	st.Transparent = false
	mustSync(t, d, st)
	for _, fam := range []string{"-4", "-6"} {
		if out := tp.LB.Run(t, "ip", fam, "rule"); strings.Contains(out, "18511") {
			t.Errorf("ip %s rule after Transparent went:\n%s", fam, out)
		}
		if out := tp.LB.Run(t, "ip", fam, "route", "show", "table", "18511"); strings.TrimSpace(out) != "" {
			t.Errorf("ip %s route show table 18511 after Transparent went:\n%s", fam, out)
		}
	}
}
