package kernel

// Root tests against the real kernel, each in fresh network namespaces.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// countingTables counts restore calls of a real iptables.
type countingTables struct {
	iptables
	restores atomic.Int64
}

func (c *countingTables) restore(ctx context.Context, data []byte) error {
	c.restores.Add(1)
	return c.iptables.restore(ctx, data)
}

// newNSDataplane opens a Dataplane in ns, closed when the test ends. Its
// iptables are wrapped to count restores.
func newNSDataplane(t testing.TB, ns *nstest.NS, o Options) (*Dataplane, [2]*countingTables) {
	t.Helper()
	o.NetNS = ns.Path
	if o.CanaryInterval == 0 {
		o.CanaryInterval = -1
	}
	if o.Logger == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		if testing.Verbose() {
			l.SetOutput(os.Stderr)
			l.SetLevel(logrus.DebugLevel)
		}
		o.Logger = logrus.NewEntry(l)
	}
	d, err := New(context.Background(), o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	var ct [2]*countingTables
	for f := range d.ipt {
		ct[f] = &countingTables{iptables: d.ipt[f]}
		d.ipt[f] = ct[f]
	}
	return d, ct
}

// nsLab is the setup most namespace tests share: root, a fresh namespace
// named after prefix, and a Dataplane with options o in it (see
// newNSDataplane).
func nsLab(t testing.TB, prefix string, o Options) (*nstest.NS, *Dataplane, [2]*countingTables) {
	t.Helper()
	nstest.RequireRoot(t)
	ns := nstest.New(t, prefix)
	d, ct := newNSDataplane(t, ns, o)
	return ns, d, ct
}

// labState is the standard test state: service web on VIP 198.18.0.1:80
// and web6 on [2001:2:0:1::1]:80, each with backends be0..be<n-1> on port
// 8080 of the lab's backends.
func labState(n int, ttl time.Duration, maxClients int) dataplane.State {
	web := dataplane.Service{Name: "web", Listen: netip.AddrPortFrom(nstest.LBClient4, 80), ClientTTL: ttl, MaxClients: maxClients}
	web6 := dataplane.Service{Name: "web6", Listen: netip.AddrPortFrom(nstest.LBClient6, 80), ClientTTL: ttl, MaxClients: maxClients}
	for i := range n {
		web.Backends = append(web.Backends, dataplane.Backend{Name: fmt.Sprintf("be%d", i), Address: netip.AddrPortFrom(nstest.Backend4(i), 8080)})
		web6.Backends = append(web6.Backends, dataplane.Backend{Name: fmt.Sprintf("be%d", i), Address: netip.AddrPortFrom(nstest.Backend6(i), 8080)})
	}
	return dataplane.State{Services: []dataplane.Service{web, web6}}
}

func mustSync(t testing.TB, d *Dataplane, st dataplane.State) {
	t.Helper()
	if err := d.Sync(context.Background(), st); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func mustPin(t testing.TB, d *Dataplane, p dataplane.Pin) {
	t.Helper()
	if err := d.Pin(context.Background(), p); err != nil {
		t.Fatalf("Pin %+v: %v", p, err)
	}
}

// handoffLines returns the lines of out that mention handoff's objects.
func handoffLines(out string) []string {
	var l []string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.Contains(line, "HANDOFF-") || strings.Contains(line, "HO-SVC-") || strings.Contains(line, "handoff") {
			l = append(l, line)
		}
	}
	return l
}

func TestNSSyncCreatesObjects(t *testing.T) {
	ns, d, ct := nsLab(t, "k-", Options{})
	st := labState(2, 30*time.Minute, 1000)
	st.Services[0].SNAT = true
	st.Services = append(st.Services, dataplane.Service{
		Name: "any", Listen: netip.MustParseAddrPort("0.0.0.0:8443"), MaxClients: 10,
		Backends: []dataplane.Backend{{Name: "a", Address: netip.MustParseAddrPort("198.19.1.11:443")}},
	})
	mustSync(t, d, st)

	sets := strings.Fields(ns.Run(t, "ipset", "list", "-n"))
	slices.Sort(sets)
	if want := []string{"ho-any-a", "ho-web-be0", "ho-web-be1", "ho6-web6-be0", "ho6-web6-be1", "hoc-any", "hoc-web", "hoc6-web6", "hoi-any", "hoi-web", "hoi6-web6"}; !slices.Equal(sets, want) {
		t.Errorf("sets = %v, want %v", sets, want)
	}
	for set, want := range map[string]string{
		"ho-web-be0":   "family inet hashsize 1024 maxelem 1000 timeout 1800 comment",
		"ho6-web6-be1": "family inet6 hashsize 1024 maxelem 1000 timeout 1800 comment",
		"ho-any-a":     "family inet hashsize 1024 maxelem 10 comment",
		"hoi-web":      "family inet hashsize 1024 maxelem 1073741824 skbinfo",
		"hoi6-web6":    "family inet6 hashsize 1024 maxelem 1073741824 skbinfo",
		"hoc-web":      "family inet hashsize 1024 maxelem 65536 counters",
		"hoc6-web6":    "family inet6 hashsize 1024 maxelem 65536 counters",
	} {
		out := ns.Run(t, "ipset", "list", set)
		if !strings.Contains(out, "Type: hash:ip") || !strings.Contains(out, "Header: "+want) {
			t.Errorf("ipset list %s:\n%s\nwant header %q", set, out, want)
		}
	}

	wantNat := []string{
		"-N HANDOFF-PREROUTING",
		"-N HANDOFF-OUTPUT",
		"-N HANDOFF-POSTROUTING",
		"-N HANDOFF-CANARY",
		"-N HO-SVC-any",
		"-N HO-SVC-web",
		`-A PREROUTING -m comment --comment "handoff jump" -j HANDOFF-PREROUTING`,
		`-A OUTPUT -m comment --comment "handoff jump" -j HANDOFF-OUTPUT`,
		`-A POSTROUTING -m comment --comment "handoff jump" -j HANDOFF-POSTROUTING`,
		`-A HANDOFF-PREROUTING -p tcp -m tcp --dport 8443 -m addrtype --dst-type LOCAL -m comment --comment "handoff any service" -j HO-SVC-any`,
		`-A HANDOFF-PREROUTING -d 198.18.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web service" -j HO-SVC-web`,
		`-A HANDOFF-OUTPUT -p tcp -m tcp --dport 8443 -m addrtype --dst-type LOCAL -m comment --comment "handoff any service" -j HO-SVC-any`,
		`-A HANDOFF-OUTPUT -d 198.18.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web service" -j HO-SVC-web`,
		`-A HANDOFF-POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctproto 6 --ctorigdst 198.18.0.1 --ctorigdstport 80 -m comment --comment "handoff web snat" -j MASQUERADE`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-any"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi-any"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc-any"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-any-a"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi-web"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc-web"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-web-be0"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-web-be1"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi6-web6"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc6-web6"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set ho6-web6-be0"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns set ho6-web6-be1"`,
		`-A HO-SVC-any -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff any new clients" -j RETURN`,
		`-A HO-SVC-any -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-any-a src -m comment --comment "handoff any/a dnat" -j DNAT --to-destination 198.19.1.11:443`,
		`-A HO-SVC-web -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff web new clients" -j RETURN`,
		`-A HO-SVC-web -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-web-be0 src -m comment --comment "handoff web/be0 refresh" -j SET --add-set ho-web-be0 src --exist --timeout 1800`,
		`-A HO-SVC-web -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-web-be0 src -m comment --comment "handoff web/be0 dnat" -j DNAT --to-destination 198.19.1.11:8080`,
		`-A HO-SVC-web -p tcp -m mark --mark 0x200000/0xfff00000 -m set --match-set ho-web-be1 src -m comment --comment "handoff web/be1 refresh" -j SET --add-set ho-web-be1 src --exist --timeout 1800`,
		`-A HO-SVC-web -p tcp -m mark --mark 0x200000/0xfff00000 -m set --match-set ho-web-be1 src -m comment --comment "handoff web/be1 dnat" -j DNAT --to-destination 198.19.1.12:8080`,
	}
	checkLines(t, "iptables -t nat -S", ns.Run(t, "iptables", "-t", "nat", "-S"), wantNat)
	checkLines(t, "iptables -t mangle -S", ns.Run(t, "iptables", "-t", "mangle", "-S"), []string{
		"-N HANDOFF-MARK",
		"-N HANDOFF-DIAL",
		"-N HANDOFF-REPLY",
		"-N HANDOFF-CANARY",
		`-A PREROUTING -m connmark --mark 0xfff00000/0xfff00000 -m comment --comment "handoff jump" -j HANDOFF-REPLY`,
		`-A PREROUTING -m conntrack --ctstate NEW -m comment --comment "handoff jump" -j HANDOFF-MARK`,
		`-A OUTPUT -m conntrack --ctstate NEW -m addrtype ! --src-type LOCAL -m comment --comment "handoff jump" -j HANDOFF-DIAL`,
		`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "handoff jump" -j HANDOFF-MARK`,
		`-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000`,
		`-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000`,
		`-A HANDOFF-MARK -p tcp -m tcp --dport 8443 -m addrtype --dst-type LOCAL -m comment --comment "handoff any mark" -j SET --map-set hoi-any src --map-mark`,
		`-A HANDOFF-MARK -d 198.18.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web mark" -j SET --map-set hoi-web src --map-mark`,
	})
	checkLines(t, "iptables -S", ns.Run(t, "iptables", "-S"), []string{
		"-N HANDOFF-FORWARD",
		"-N HANDOFF-CANARY",
		"-N HO-SVC-any",
		"-N HO-SVC-web",
		`-A FORWARD -m comment --comment "handoff jump" -j HANDOFF-FORWARD`,
		`-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto 6 --ctorigdstport 8443 -m comment --comment "handoff any forward" -j HO-SVC-any`,
		`-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto 6 --ctorigdst 198.18.0.1 --ctorigdstport 80 -m comment --comment "handoff web forward" -j HO-SVC-web`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-any"`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web"`,
		`-A HO-SVC-any -m set --match-set hoc-any dst,dst -m comment --comment "handoff any to backends" -j ACCEPT`,
		`-A HO-SVC-any -m set --match-set hoc-any src,src -m comment --comment "handoff any from backends" -j ACCEPT`,
		`-A HO-SVC-web -m set --match-set hoc-web dst,dst -m comment --comment "handoff web to backends" -j ACCEPT`,
		`-A HO-SVC-web -m set --match-set hoc-web src,src -m comment --comment "handoff web from backends" -j ACCEPT`,
		`-A HO-SVC-web -m comment --comment "handoff web other" -j ACCEPT`,
	})
	checkLines(t, "ip6tables -t nat -S", ns.Run(t, "ip6tables", "-t", "nat", "-S"), []string{
		"-N HANDOFF-PREROUTING",
		"-N HANDOFF-OUTPUT",
		"-N HANDOFF-POSTROUTING",
		"-N HANDOFF-CANARY",
		"-N HO-SVC-web6",
		`-A PREROUTING -m comment --comment "handoff jump" -j HANDOFF-PREROUTING`,
		`-A OUTPUT -m comment --comment "handoff jump" -j HANDOFF-OUTPUT`,
		`-A POSTROUTING -m comment --comment "handoff jump" -j HANDOFF-POSTROUTING`,
		`-A HANDOFF-PREROUTING -d 2001:2:0:1::1/128 -p tcp -m tcp --dport 80 -m comment --comment "handoff web6 service" -j HO-SVC-web6`,
		`-A HANDOFF-OUTPUT -d 2001:2:0:1::1/128 -p tcp -m tcp --dport 80 -m comment --comment "handoff web6 service" -j HO-SVC-web6`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web6"`,
		`-A HO-SVC-web6 -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff web6 new clients" -j RETURN`,
		`-A HO-SVC-web6 -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho6-web6-be0 src -m comment --comment "handoff web6/be0 refresh" -j SET --add-set ho6-web6-be0 src --exist --timeout 1800`,
		`-A HO-SVC-web6 -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho6-web6-be0 src -m comment --comment "handoff web6/be0 dnat" -j DNAT --to-destination [2001:2:0:2::11]:8080`,
		`-A HO-SVC-web6 -p tcp -m mark --mark 0x200000/0xfff00000 -m set --match-set ho6-web6-be1 src -m comment --comment "handoff web6/be1 refresh" -j SET --add-set ho6-web6-be1 src --exist --timeout 1800`,
		`-A HO-SVC-web6 -p tcp -m mark --mark 0x200000/0xfff00000 -m set --match-set ho6-web6-be1 src -m comment --comment "handoff web6/be1 dnat" -j DNAT --to-destination [2001:2:0:2::12]:8080`,
	})
	checkLines(t, "ip6tables -S", ns.Run(t, "ip6tables", "-S"), []string{
		"-N HANDOFF-FORWARD",
		"-N HANDOFF-CANARY",
		"-N HO-SVC-web6",
		`-A FORWARD -m comment --comment "handoff jump" -j HANDOFF-FORWARD`,
		`-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto 6 --ctorigdst 2001:2:0:1::1 --ctorigdstport 80 -m comment --comment "handoff web6 forward" -j HO-SVC-web6`,
		`-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web6"`,
		`-A HO-SVC-web6 -m set --match-set hoc6-web6 dst,dst -m comment --comment "handoff web6 to backends" -j ACCEPT`,
		`-A HO-SVC-web6 -m set --match-set hoc6-web6 src,src -m comment --comment "handoff web6 from backends" -j ACCEPT`,
		`-A HO-SVC-web6 -m comment --comment "handoff web6 other" -j ACCEPT`,
	})

	// A second Sync of the same state writes nothing.
	before := ct[ipv4].restores.Load() + ct[ipv6].restores.Load()
	mustSync(t, d, st)
	if after := ct[ipv4].restores.Load() + ct[ipv6].restores.Load(); after != before {
		t.Errorf("no-op Sync ran iptables-restore %d times", after-before)
	}

	// Removing a service removes its chain, its rules and its sets.
	st.Services = st.Services[1:] // drop web
	mustSync(t, d, st)
	nat := ns.Run(t, "iptables", "-t", "nat", "-S")
	if strings.Contains(nat, "HO-SVC-web\n") || strings.Contains(nat, "ho-web-") {
		t.Errorf("service web still in nat table:\n%s", nat)
	}
	if sets := ns.Run(t, "ipset", "list", "-n"); strings.Contains(sets, "ho-web-") || strings.Contains(sets, "hoc-web") {
		t.Errorf("sets of web remain:\n%s", sets)
	}
}

// checkLines compares the handoff lines of got with want, in any order
// (iptables-nft lists chains by name).
func checkLines(t *testing.T, what, got string, want []string) {
	t.Helper()
	if g := handoffLines(got); !slices.Equal(sortedCopy(g), sortedCopy(want)) {
		t.Errorf("%s: handoff lines\n%s\nwant\n%s", what, strings.Join(g, "\n"), strings.Join(want, "\n"))
	}
}

// serve accepts on l and sends every accepted connection's remote address
// to the returned channel, then echoes a line back.
func serve(t testing.TB, l net.Listener) <-chan netip.AddrPort {
	ch := make(chan netip.AddrPort, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			ch <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ch
}

// dialVIP connects from src in the client namespace to vip and checks an
// echo round trip; it returns the open connection.
func dialVIP(ctx context.Context, tp *nstest.Topology, src netip.Addr, vip netip.AddrPort) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := tp.Client.DialFrom(ctx, src, "tcp", vip.String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		c.Close()
		return nil, err
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// labBackends listens on port 8080 (IPv4 and IPv6) in every backend and
// returns the channels of remote addresses each saw.
func labBackends(t testing.TB, tp *nstest.Topology) (v4, v6 []<-chan netip.AddrPort) {
	for i, be := range tp.Backends {
		v4 = append(v4, serve(t, be.Listen(t, "tcp", netip.AddrPortFrom(nstest.Backend4(i), 8080).String())))
		v6 = append(v6, serve(t, be.Listen(t, "tcp", netip.AddrPortFrom(nstest.Backend6(i), 8080).String())))
	}
	return v4, v6
}

// topoLab is the setup of the namespace tests that send traffic: root, a
// topology of n backends that listen on port 8080 in both families (see
// labBackends), and a Dataplane with options o in the load balancer's
// namespace (see newNSDataplane).
func topoLab(t testing.TB, n int, o Options) (tp *nstest.Topology, d *Dataplane, seen4, seen6 []<-chan netip.AddrPort) {
	t.Helper()
	nstest.RequireRoot(t)
	tp = nstest.NewTopology(t, n)
	seen4, seen6 = labBackends(t, tp)
	d, _ = newNSDataplane(t, tp.LB, o)
	return tp, d, seen4, seen6
}

// forwardPayload is what TestNSPinForwards sends each way through a
// kernel-forwarded connection.
const forwardPayload = 256 << 10

func TestNSPinForwards(t *testing.T) {
	tp, d, seen4, seen6 := topoLab(t, 2, Options{})
	other4, other6 := tp.AddClients(t, 1)
	mustSync(t, d, labState(2, time.Hour, 1000))
	ctx := context.Background()

	for _, c := range []struct {
		name         string
		svc          string
		client, away netip.Addr
		vip          netip.AddrPort
		seen         []<-chan netip.AddrPort
	}{
		{"ipv4", "web", nstest.Client4, other4[0], netip.AddrPortFrom(nstest.LBClient4, 80), seen4},
		{"ipv6", "web6", nstest.Client6, other6[0], netip.AddrPortFrom(nstest.LBClient6, 80), seen6},
	} {
		t.Run(c.name, func(t *testing.T) {
			mustPin(t, d, dataplane.Pin{Service: c.svc, Backend: "be1", Client: c.client, Key: "src=" + c.client.String()})
			conn, err := dialVIP(ctx, tp, c.client, c.vip)
			if err != nil {
				t.Fatalf("pinned client %s: dial %s: %v", c.client, c.vip, err)
			}
			// Traffic each way that the counters must see: the kernel
			// forwards every packet of it, and nat sees only the first.
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			go conn.Write(make([]byte, forwardPayload))
			if _, err := io.ReadFull(conn, make([]byte, forwardPayload)); err != nil {
				t.Fatalf("echo of %d bytes: %v", forwardPayload, err)
			}
			conn.Close()
			select {
			case got := <-c.seen[1]:
				if got.Addr() != c.client {
					t.Errorf("backend be1 saw %s, want the client's %s", got, c.client)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("backend be1 saw no connection")
			}
			if conn, err := dialVIP(ctx, tp, c.away, c.vip); err == nil {
				conn.Close()
				t.Errorf("unpinned client %s reached %s", c.away, c.vip)
			}
			select {
			case got := <-c.seen[0]:
				t.Errorf("backend be0 saw %s", got)
			case got := <-c.seen[1]:
				t.Errorf("backend be1 saw unpinned %s", got)
			default:
			}

			p, ok, err := d.Lookup(ctx, c.svc, c.client)
			if err != nil || !ok || p.Backend != "be1" {
				t.Errorf("Lookup = %+v, %v, %v; want be1", p, ok, err)
			}
			if err := d.Unpin(ctx, c.svc, "be1", c.client); err != nil {
				t.Fatalf("Unpin: %v", err)
			}
			if err := d.Unpin(ctx, c.svc, "be1", c.client); err != nil {
				t.Errorf("second Unpin: %v", err)
			}
			if _, ok, _ := d.Lookup(ctx, c.svc, c.client); ok {
				t.Error("Lookup after Unpin found the pin")
			}
		})
	}
	// One new connection each went through the DNAT rules of be1, and its
	// bytes, both ways, through the service's counting set, be1's entry.
	want := map[dataplane.BackendRef]Counter{{Service: "web", Backend: "be1"}: {Packets: 1}, {Service: "web6", Backend: "be1"}: {Packets: 1}}
	// packets says whether the DNAT rules' packets are still counted: a
	// reload that rewrites the service's chain in nat restarts them (its
	// rules are new), while the set's entries keep their bytes.
	check := func(when string, packets bool) {
		t.Helper()
		for name, get := range map[string]func() (map[dataplane.BackendRef]Counter, error){
			"method":   func() (map[dataplane.BackendRef]Counter, error) { return d.Counters(ctx) },
			"function": func() (map[dataplane.BackendRef]Counter, error) { return Counters(ctx, Options{NetNS: tp.LB.Path}) },
		} {
			got, err := get()
			if err != nil {
				t.Fatalf("Counters (%s, %s): %v", name, when, err)
			}
			for k, w := range want {
				// The payload each way and the ping, with their headers: at
				// most 30% more on this path's smallest packets.
				if (packets && got[k].Packets != w.Packets) || got[k].Bytes < 2*forwardPayload || got[k].Bytes > 2*forwardPayload*13/10 {
					t.Errorf("Counters (%s, %s)[%v] = %+v, want %d packet(s) and the %d bytes each way with their headers", name, when, k, got[k], w.Packets, forwardPayload)
				}
			}
			if c := got[dataplane.BackendRef{Service: "web", Backend: "be0"}]; c != (Counter{}) {
				t.Errorf("Counters (%s, %s)[web be0] = %+v", name, when, c)
			}
		}
	}
	check("after the traffic", true)
	// A reload that keeps be1 as it is (be0 moves to another port, a
	// backend comes) keeps be1's bytes, and so does a restart.
	st := labState(3, time.Hour, 1000)
	for i := range st.Services {
		st.Services[i].Backends[0].Address = netip.AddrPortFrom(st.Services[i].Backends[0].Address.Addr(), 8081)
	}
	mustSync(t, d, st)
	check("after a reload", false)
	d.Close()
	d, _ = newNSDataplane(t, tp.LB, Options{})
	mustSync(t, d, st)
	check("after a restart", false)
}

// entryTimeout returns the timeout ipset shows for ip in set, or -1.
func entryTimeout(t testing.TB, ns *nstest.NS, set string, ip netip.Addr) int {
	t.Helper()
	out := ns.Run(t, "ipset", "list", set)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(ip.String()) + ` timeout (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestNSConnectionRefreshesTimeout(t *testing.T) {
	tp, d, _, _ := topoLab(t, 1, Options{})
	mustSync(t, d, labState(1, 100*time.Second, 100))
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be0", Client: nstest.Client4})
	time.Sleep(2500 * time.Millisecond)
	if got := entryTimeout(t, tp.LB, "ho-web-be0", nstest.Client4); got > 98 || got < 0 {
		t.Fatalf("timeout before connecting = %d, want ≤ 98", got)
	}
	c, err := dialVIP(context.Background(), tp, nstest.Client4, netip.AddrPortFrom(nstest.LBClient4, 80))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := entryTimeout(t, tp.LB, "ho-web-be0", nstest.Client4); got < 99 {
		t.Errorf("timeout after connecting = %d, want ≥ 99 (refreshed)", got)
	}
	// A re-pin with its own TTL sets that TTL.
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be0", Client: nstest.Client4, TTL: 40 * time.Second})
	if got := entryTimeout(t, tp.LB, "ho-web-be0", nstest.Client4); got < 38 || got > 40 {
		t.Errorf("timeout after re-pin with TTL 40s = %d", got)
	}
}

func TestNSRestartAdoptsSets(t *testing.T) {
	tp, d1, seen4, _ := topoLab(t, 2, Options{})
	clients, _ := tp.AddClients(t, 3)
	st := labState(2, time.Hour, 1000)
	ctx := context.Background()

	mustSync(t, d1, st)
	for i, c := range clients {
		mustPin(t, d1, dataplane.Pin{Service: "web", Backend: fmt.Sprintf("be%d", i%2), Client: c, Key: fmt.Sprintf("key-%d", i)})
	}
	conn, err := dialVIP(ctx, tp, clients[1], netip.AddrPortFrom(nstest.LBClient4, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	<-seen4[1]
	d1.Close()

	d2, _ := newNSDataplane(t, tp.LB, Options{})
	mustSync(t, d2, st)
	got := map[netip.Addr]dataplane.Pin{}
	if err := d2.Pins(ctx, "web", "", func(p dataplane.Pin) error {
		got[p.Client] = p
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		p := got[c]
		if p.Backend != fmt.Sprintf("be%d", i%2) || p.Key != fmt.Sprintf("key-%d", i) || p.TTL < 3590*time.Second {
			t.Errorf("after restart, pin of %s = %+v", c, p)
		}
	}
	// The connection made before the restart still works.
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("again")); err != nil {
		t.Fatalf("old connection: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "again" {
		t.Fatalf("old connection read %q, %v", buf, err)
	}
}

func TestNSRebuildKeepsMembers(t *testing.T) {
	ns, d, _ := nsLab(t, "k-", Options{})
	ctx := context.Background()
	mustSync(t, d, labState(1, time.Hour, 100))
	var want []netip.Addr
	for i := range 50 {
		ip := netip.AddrFrom4([4]byte{198, 18, 3, byte(i + 1)})
		want = append(want, ip)
		mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be0", Client: ip, Key: "k" + strconv.Itoa(i)})
	}
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be0", Client: netip.MustParseAddr("198.18.4.1"), Key: "short", TTL: 10 * time.Second})
	want = append(want, netip.MustParseAddr("198.18.4.1"))

	mustSync(t, d, labState(1, 30*time.Minute, 5000))
	out := ns.Run(t, "ipset", "list", "ho-web-be0")
	if !strings.Contains(out, "maxelem 5000 timeout 1800") {
		t.Errorf("set not rebuilt:\n%s", out)
	}
	got := map[netip.Addr]dataplane.Pin{}
	if err := d.Pins(ctx, "web", "be0", func(p dataplane.Pin) error {
		got[p.Client] = p
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%d pins after rebuild, want %d", len(got), len(want))
	}
	for i, ip := range want[:50] {
		if p := got[ip]; p.Key != "k"+strconv.Itoa(i) || p.TTL < 1790*time.Second || p.TTL > 1800*time.Second {
			t.Errorf("pin %s after rebuild = %+v, want key k%d and TTL cut to 30m", ip, p, i)
		}
	}
	if p := got[netip.MustParseAddr("198.18.4.1")]; p.TTL > 10*time.Second || p.TTL < 8*time.Second {
		t.Errorf("short pin after rebuild = %+v, want its remaining ~10s", p)
	}
	if sets := ns.Run(t, "ipset", "list", "-n"); strings.Contains(sets, tempTag) {
		t.Errorf("temporary set left:\n%s", sets)
	}
	// Shrinking maxelem below the members keeps what fits.
	mustSync(t, d, labState(1, 30*time.Minute, 10))
	n := 0
	d.Pins(ctx, "web", "be0", func(dataplane.Pin) error { n++; return nil })
	if n != 10 {
		t.Errorf("%d pins after shrinking maxelem to 10", n)
	}
	err := d.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be0", Client: netip.MustParseAddr("198.18.5.5")})
	if !errors.Is(err, dataplane.ErrFull) {
		t.Errorf("Pin into a full set: %v, want ErrFull", err)
	}
	// TTL 0: a set without timeouts.
	mustSync(t, d, labState(1, 0, 10))
	if out := ns.Run(t, "ipset", "list", "ho-web-be0"); strings.Contains(out, "timeout") || !strings.Contains(out, "Number of entries: 10") {
		t.Errorf("set after TTL 0:\n%s", out)
	}
}

func TestNSCleanup(t *testing.T) {
	ns, d, _ := nsLab(t, "k-", Options{IPv6: true})
	mustSync(t, d, labState(2, time.Hour, 100))
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be0", Client: nstest.Client4})
	d.Close()

	// Foreign objects, some in the same chains as handoff's jumps.
	ns.Run(t, "ipset", "create", "foreign", "hash:ip")
	ns.Run(t, "ipset", "create", "ho", "hash:ip") // not ho-*
	ns.Run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "53", "-j", "ACCEPT")
	ns.Run(t, "iptables", "-t", "nat", "-N", "FOREIGN")
	ns.Run(t, "iptables", "-t", "nat", "-A", "FOREIGN", "-m", "set", "--match-set", "foreign", "src", "-j", "RETURN")
	ns.Run(t, "iptables", "-A", "FORWARD", "-p", "tcp", "--dport", "22", "-j", "DROP")
	ns.Run(t, "ip6tables", "-t", "nat", "-N", "FOREIGN6")

	o := Options{NetNS: ns.Path, Logger: quietLogger()}
	for i := range 2 {
		if err := Cleanup(context.Background(), o); err != nil {
			t.Fatalf("Cleanup #%d: %v", i+1, err)
		}
		for _, cmd := range [][]string{
			{"iptables", "-t", "nat", "-S"}, {"iptables", "-S"},
			{"ip6tables", "-t", "nat", "-S"}, {"ip6tables", "-S"},
		} {
			if l := handoffLines(ns.Run(t, cmd...)); len(l) > 0 {
				t.Errorf("after Cleanup, %s shows:\n%s", strings.Join(cmd, " "), strings.Join(l, "\n"))
			}
		}
		sets := strings.Fields(ns.Run(t, "ipset", "list", "-n"))
		slices.Sort(sets)
		if !slices.Equal(sets, []string{"foreign", "ho"}) {
			t.Errorf("after Cleanup, sets = %v", sets)
		}
		nat := ns.Run(t, "iptables", "-t", "nat", "-S")
		for _, want := range []string{
			"-A PREROUTING -p udp -m udp --dport 53 -j ACCEPT",
			"-N FOREIGN",
			"-A FOREIGN -m set --match-set foreign src -j RETURN",
		} {
			if !strings.Contains(nat, want+"\n") {
				t.Errorf("after Cleanup, foreign %q is gone:\n%s", want, nat)
			}
		}
		if f := ns.Run(t, "iptables", "-S"); !strings.Contains(f, "-A FORWARD -p tcp -m tcp --dport 22 -j DROP") {
			t.Errorf("after Cleanup, foreign filter rule gone:\n%s", f)
		}
		if f := ns.Run(t, "ip6tables", "-t", "nat", "-S"); !strings.Contains(f, "-N FOREIGN6") {
			t.Errorf("after Cleanup, foreign ip6tables chain gone:\n%s", f)
		}
	}
}

func quietLogger() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func TestNSForget(t *testing.T) {
	tp, d, seen4, seen6 := topoLab(t, 2, Options{})
	mustSync(t, d, labState(2, time.Hour, 100))
	ctx := context.Background()
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: nstest.Client4})
	mustPin(t, d, dataplane.Pin{Service: "web6", Backend: "be1", Client: nstest.Client6})

	var conns []net.Conn
	for range 3 {
		c, err := dialVIP(ctx, tp, nstest.Client4, netip.AddrPortFrom(nstest.LBClient4, 80))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		<-seen4[1]
	}
	c6, err := dialVIP(ctx, tp, nstest.Client6, netip.AddrPortFrom(nstest.LBClient6, 80))
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, c6)
	<-seen6[1]
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	flows := func(fam string, be netip.Addr) int {
		out, _ := tp.LB.RunErr("conntrack", "-L", "-f", fam, "-p", "tcp", "--orig-port-dst", "80", "--reply-src", be.String())
		return strings.Count(out, "dport=80")
	}
	if n := flows("ipv4", nstest.Backend4(1)); n != 3 {
		t.Fatalf("conntrack shows %d flows to be1, want 3", n)
	}
	if n, err := d.Forget(ctx, "web", "be0"); err != nil || n != 0 {
		t.Errorf("Forget(be0) = %d, %v; want 0", n, err)
	}
	if n, err := d.Forget(ctx, "web", "be1"); err != nil || n != 3 {
		t.Errorf("Forget(be1) = %d, %v; want 3", n, err)
	}
	if n := flows("ipv4", nstest.Backend4(1)); n != 0 {
		t.Errorf("conntrack still shows %d flows to be1", n)
	}
	if n := flows("ipv6", nstest.Backend6(1)); n != 1 {
		t.Errorf("conntrack shows %d IPv6 flows, want 1 (untouched)", n)
	}
	if n, err := d.Forget(ctx, "web6", "be1"); err != nil || n != 1 {
		t.Errorf("Forget(web6/be1) = %d, %v; want 1", n, err)
	}
	if _, err := d.Forget(ctx, "web", "nope"); !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("Forget(unknown) = %v, want ErrUnknown", err)
	}
}

// TestNSForgetStreams cuts the flows of one backend out of a conntrack
// table of forgetTable entries and checks that Forget's heap stays far
// below the table's size: the table is streamed, not held (reading it
// whole took the daemon's RSS from 28 to 140 MiB at 230k entries).
func TestNSForgetStreams(t *testing.T) {
	const forgetTable, matching = 60000, 20000
	ns, d, _ := nsLab(t, "k-", Options{})
	mustSync(t, d, labState(2, time.Hour, 100))
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vip, be0, be1 := netip.AddrPortFrom(nstest.LBClient4, 80), netip.AddrPortFrom(nstest.Backend4(0), 8080), netip.AddrPortFrom(nstest.Backend4(1), 8080)
	for i := range forgetTable {
		be := be0
		if i < matching {
			be = be1
		}
		client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 64 + byte(i>>16), byte(i >> 8)}), uint16(1024+i&0xff))
		f := &netlink.ConntrackFlow{
			FamilyType: unix.AF_INET,
			Forward:    netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: client.Addr().AsSlice(), SrcPort: client.Port(), DstIP: vip.Addr().AsSlice(), DstPort: vip.Port()},
			Reverse:    netlink.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: be.Addr().AsSlice(), SrcPort: be.Port(), DstIP: client.Addr().AsSlice(), DstPort: client.Port()},
			TimeOut:    600,
			ProtoInfo:  &netlink.ProtoInfoTCP{State: nl.TCP_CONNTRACK_ESTABLISHED},
		}
		if err := h.ConntrackCreate(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
			t.Fatalf("creating flow %d: %v", i, err)
		}
	}
	count := func() int {
		n, err := strconv.Atoi(strings.TrimSpace(ns.Run(t, "conntrack", "-C")))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	if before < forgetTable {
		t.Fatalf("conntrack holds %d entries, want at least %d", before, forgetTable)
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				peak = max(peak, ms.HeapAlloc)
			}
		}
	}()
	n, err := d.Forget(context.Background(), "web", "be1")
	close(done)
	<-sampled
	if err != nil || n != matching {
		t.Fatalf("Forget = %d, %v; want %d", n, err, matching)
	}
	if after := count(); after != before-matching {
		t.Errorf("conntrack holds %d entries after Forget, want %d", after, before-matching)
	}
	// A dumped entry is about 300 bytes: holding the dump would take
	// tens of MiB here.
	grew := int64(peak) - int64(base)
	t.Logf("Forget cut %d of %d flows; the heap grew by %d KiB at most", n, before, grew>>10)
	if grew > 4<<20 {
		t.Errorf("the heap grew by %d KiB while Forget walked %d entries, want < 4 MiB", grew>>10, before)
	}
}

func TestNSCanaryRestores(t *testing.T) {
	ns, d, _ := nsLab(t, "k-", Options{CanaryInterval: 100 * time.Millisecond})
	mustSync(t, d, labState(2, time.Hour, 100))
	want := ns.Run(t, "iptables-save", "-t", "nat")
	wantLines := handoffLines(want)
	for _, c := range []struct {
		name string
		cmd  []string
	}{
		{"flush HANDOFF-PREROUTING", []string{"iptables", "-t", "nat", "-F", "HANDOFF-PREROUTING"}},
		// In one transaction: between a separate -F and -X the daemon may
		// already have refilled the chain, and -X of a full chain fails.
		{"delete the canary", []string{"sh", "-c", "printf '*nat\\n-F HANDOFF-CANARY\\n-X HANDOFF-CANARY\\nCOMMIT\\n' | iptables-restore --noflush"}},
		{"flush the nat table", []string{"iptables", "-t", "nat", "-F"}},
		{"delete a jump", []string{"iptables", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "handoff jump", "-j", "HANDOFF-PREROUTING"}},
		{"flush ip6tables filter", []string{"ip6tables", "-F"}},
		// The rules that use a set must go before it can.
		// The daemon may put the rules back between the two commands; try again then.
		{"destroy a set", []string{"sh", "-c", "for i in 1 2 3 4 5; do iptables -t nat -F HO-SVC-web && ipset destroy ho-web-be0 2>/dev/null && exit 0; done; exit 1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ns.Run(t, c.cmd...)
			deadline := time.Now().Add(3 * time.Second)
			for {
				got := handoffLines(ns.Run(t, "iptables-save", "-t", "nat"))
				got6 := ns.Run(t, "ip6tables", "-S")
				if slices.Equal(sortedCopy(got), sortedCopy(wantLines)) && strings.Contains(got6, "handoff web6 forward") {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("rules not restored after 3s:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantLines, "\n"))
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

func sortedCopy(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestNSProbe(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t, "k-")
	if err := Probe(context.Background(), Options{NetNS: ns.Path, IPv6: true}); err != nil {
		t.Fatalf("Probe as root: %v", err)
	}
	if sets := ns.Run(t, "ipset", "list", "-n"); strings.TrimSpace(sets) != "" {
		t.Errorf("Probe left sets:\n%s", sets)
	}
	for _, bin := range []string{"iptables", "ip6tables"} {
		if out := ns.Run(t, bin, "-t", "nat", "-S"); strings.Contains(out, chainProbe) {
			t.Errorf("Probe left a chain in %s:\n%s", bin, out)
		}
	}
}

// TestNSGoTables checks that go-iptables commands run through goTables
// act on its namespace: a chain made there shows in that namespace.
func TestNSGoTables(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t, "k-")
	chain := "HANDOFF-T" + strconv.Itoa(os.Getpid())
	for _, fam := range []family{ipv4, ipv6} {
		gt, err := newGoTables(ns.Handle(), fam)
		if err != nil {
			t.Fatal(err)
		}
		if err := gt.do(func(ipt *goipt.IPTables) error { return ipt.NewChain("nat", chain) }); err != nil {
			t.Fatalf("%s: new chain: %v", gt.bin(), err)
		}
		if out := ns.Run(t, gt.bin(), "-t", "nat", "-S", chain); !strings.Contains(out, "-N "+chain) {
			t.Errorf("%s -t nat -S %s in the namespace:\n%s", gt.bin(), chain, out)
		}
		if err := gt.do(func(ipt *goipt.IPTables) error { return ipt.ClearAndDeleteChain("nat", chain) }); err != nil {
			t.Fatalf("%s: delete chain: %v", gt.bin(), err)
		}
		if out, err := ns.RunErr(gt.bin(), "-t", "nat", "-S", chain); err == nil {
			t.Errorf("chain left after ClearAndDeleteChain:\n%s", out)
		}
	}
}

// TestNSProbeWithoutNetAdmin re-runs the test binary without CAP_NET_ADMIN
// (setpriv drops it from the inheritable and bounding sets) and checks
// Probe's one-line reason.
func TestNSProbeWithoutNetAdmin(t *testing.T) {
	if path := os.Getenv("HANDOFF_PROBE_CHILD"); path != "" {
		err := Probe(context.Background(), Options{NetNS: path})
		fmt.Printf("PROBE-RESULT: %v\n", err)
		return
	}
	nstest.RequireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		testenv.Skip(t, "needs setpriv (util-linux)")
	}
	ns := nstest.New(t, "k-")
	cmd := exec.Command(setpriv, "--inh-caps=-net_admin", "--bounding-set=-net_admin",
		os.Args[0], "-test.run=^TestNSProbeWithoutNetAdmin$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HANDOFF_PROBE_CHILD="+ns.Path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`PROBE-RESULT: (.*)\n`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("child printed no result:\n%s", out)
	}
	msg := string(m[1])
	if !strings.HasPrefix(msg, "kernel mode unavailable: ") || !strings.Contains(msg, "CAP_NET_ADMIN") {
		t.Errorf("Probe without CAP_NET_ADMIN = %q", msg)
	}
	t.Logf("Probe without CAP_NET_ADMIN: %s", msg)
	if sets := ns.Run(t, "ipset", "list", "-n"); strings.TrimSpace(sets) != "" {
		t.Errorf("Probe left sets:\n%s", sets)
	}
}
