package kernel

// Unit tests on the fake kernel: they need no privileges.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

func svc(name, listen string, ttl time.Duration, snat bool, bes ...string) dataplane.Service {
	s := dataplane.Service{Name: name, Listen: netip.MustParseAddrPort(listen), ClientTTL: ttl, SNAT: snat, MaxClients: 100}
	for i := 0; i+1 < len(bes); i += 2 {
		s.Backends = append(s.Backends, dataplane.Backend{Name: bes[i], Address: netip.MustParseAddrPort(bes[i+1])})
	}
	return s
}

// transparentRules are the mangle rules of transparent dials, rendered
// whatever the services.
const transparentRules = `-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000
-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000
`

// compileSlots compiles st and numbers its backends as a first Sync does.
func compileSlots(t *testing.T, st dataplane.State) []*service {
	t.Helper()
	svcs, err := compile(st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (slotTable{}).assign(svcs, defaultLayout); err != nil {
		t.Fatal(err)
	}
	return svcs
}

// renderText is the rules of a rendering, table by table.
func renderText(r rendered) string {
	var b strings.Builder
	for _, t := range tables {
		b.WriteString("*" + string(t) + "\n")
		for _, c := range r[t] {
			for _, rule := range c.rules {
				b.WriteString(rule + "\n")
			}
		}
	}
	return b.String()
}

func TestRender(t *testing.T) {
	for _, c := range []struct {
		desc string
		fam  family
		svc  dataplane.Service
		want string
	}{{
		desc: "ipv4",
		fam:  ipv4,
		svc:  svc("web", "198.18.1.1:80", 30*time.Minute, false, "be1", "198.19.1.11:8080", "be2", "198.19.1.12:8080"),
		want: `*mangle
-A HANDOFF-MARK -d 198.18.1.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web mark" -j SET --map-set hoi-web src --map-mark
-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000
-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000
*nat
-A HANDOFF-PREROUTING -d 198.18.1.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web service" -j HO-SVC-web
-A HANDOFF-OUTPUT -d 198.18.1.1/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff web service" -j HO-SVC-web
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi-web"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc-web"
-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-web-be1"
-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-web-be2"
-A HO-SVC-web -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff web new clients" -j RETURN
-A HO-SVC-web -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-web-be1 src -m comment --comment "handoff web/be1 refresh" -j SET --add-set ho-web-be1 src --exist --timeout 1800
-A HO-SVC-web -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-web-be1 src -m comment --comment "handoff web/be1 dnat" -j DNAT --to-destination 198.19.1.11:8080
-A HO-SVC-web -p tcp -m mark --mark 0x200000/0xfff00000 -m set --match-set ho-web-be2 src -m comment --comment "handoff web/be2 refresh" -j SET --add-set ho-web-be2 src --exist --timeout 1800
-A HO-SVC-web -p tcp -m mark --mark 0x200000/0xfff00000 -m set --match-set ho-web-be2 src -m comment --comment "handoff web/be2 dnat" -j DNAT --to-destination 198.19.1.12:8080
*filter
-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdst 198.18.1.1/32 --ctorigdstport 80 -m comment --comment "handoff web forward" -j HO-SVC-web
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web"
-A HO-SVC-web -m set --match-set hoc-web dst,dst -m comment --comment "handoff web to backends" -j ACCEPT
-A HO-SVC-web -m set --match-set hoc-web src,src -m comment --comment "handoff web from backends" -j ACCEPT
-A HO-SVC-web -m comment --comment "handoff web other" -j ACCEPT
`,
	}, {
		desc: "ipv6",
		fam:  ipv6,
		svc:  svc("web6", "[2001:2:0:1::1]:443", time.Hour, false, "a", "[2001:2:0:2::11]:8443"),
		want: `*mangle
-A HANDOFF-MARK -d 2001:2:0:1::1/128 -p tcp -m tcp --dport 443 -m comment --comment "handoff web6 mark" -j SET --map-set hoi6-web6 src --map-mark
-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000
-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000
*nat
-A HANDOFF-PREROUTING -d 2001:2:0:1::1/128 -p tcp -m tcp --dport 443 -m comment --comment "handoff web6 service" -j HO-SVC-web6
-A HANDOFF-OUTPUT -d 2001:2:0:1::1/128 -p tcp -m tcp --dport 443 -m comment --comment "handoff web6 service" -j HO-SVC-web6
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web6"
-A HO-SVC-web6 -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff web6 new clients" -j RETURN
-A HO-SVC-web6 -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho6-web6-a src -m comment --comment "handoff web6/a refresh" -j SET --add-set ho6-web6-a src --exist --timeout 3600
-A HO-SVC-web6 -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho6-web6-a src -m comment --comment "handoff web6/a dnat" -j DNAT --to-destination [2001:2:0:2::11]:8443
*filter
-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdst 2001:2:0:1::1/128 --ctorigdstport 443 -m comment --comment "handoff web6 forward" -j HO-SVC-web6
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-web6"
-A HO-SVC-web6 -m set --match-set hoc6-web6 dst,dst -m comment --comment "handoff web6 to backends" -j ACCEPT
-A HO-SVC-web6 -m set --match-set hoc6-web6 src,src -m comment --comment "handoff web6 from backends" -j ACCEPT
-A HO-SVC-web6 -m comment --comment "handoff web6 other" -j ACCEPT
`,
	}, {
		desc: "unspecified VIP with snat",
		fam:  ipv4,
		svc:  svc("any", "0.0.0.0:25", 90*time.Second, true, "m1", "198.19.1.11:2525"),
		want: `*mangle
-A HANDOFF-MARK -p tcp -m tcp --dport 25 -m addrtype --dst-type LOCAL -m comment --comment "handoff any mark" -j SET --map-set hoi-any src --map-mark
-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000
-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000
*nat
-A HANDOFF-PREROUTING -p tcp -m tcp --dport 25 -m addrtype --dst-type LOCAL -m comment --comment "handoff any service" -j HO-SVC-any
-A HANDOFF-OUTPUT -p tcp -m tcp --dport 25 -m addrtype --dst-type LOCAL -m comment --comment "handoff any service" -j HO-SVC-any
-A HANDOFF-POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdstport 25 --ctreplsrc 198.19.1.11/32 --ctreplsrcport 2525 -m comment --comment "handoff any/m1 snat" -j MASQUERADE
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-any"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi-any"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc-any"
-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-any-m1"
-A HO-SVC-any -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff any new clients" -j RETURN
-A HO-SVC-any -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-any-m1 src -m comment --comment "handoff any/m1 refresh" -j SET --add-set ho-any-m1 src --exist --timeout 90
-A HO-SVC-any -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-any-m1 src -m comment --comment "handoff any/m1 dnat" -j DNAT --to-destination 198.19.1.11:2525
*filter
-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdstport 25 -m comment --comment "handoff any forward" -j HO-SVC-any
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-any"
-A HO-SVC-any -m set --match-set hoc-any dst,dst -m comment --comment "handoff any to backends" -j ACCEPT
-A HO-SVC-any -m set --match-set hoc-any src,src -m comment --comment "handoff any from backends" -j ACCEPT
`,
	}, {
		desc: "snat, ttl 0 (no refresh rule)",
		fam:  ipv4,
		svc:  svc("db", "198.18.1.2:5432", 0, true, "p", "198.19.1.13:5432"),
		want: `*mangle
-A HANDOFF-MARK -d 198.18.1.2/32 -p tcp -m tcp --dport 5432 -m comment --comment "handoff db mark" -j SET --map-set hoi-db src --map-mark
-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000
-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000
*nat
-A HANDOFF-PREROUTING -d 198.18.1.2/32 -p tcp -m tcp --dport 5432 -m comment --comment "handoff db service" -j HO-SVC-db
-A HANDOFF-OUTPUT -d 198.18.1.2/32 -p tcp -m tcp --dport 5432 -m comment --comment "handoff db service" -j HO-SVC-db
-A HANDOFF-POSTROUTING -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdst 198.18.1.2/32 --ctorigdstport 5432 -m comment --comment "handoff db snat" -j MASQUERADE
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-db"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi-db"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc-db"
-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-db-p"
-A HO-SVC-db -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff db new clients" -j RETURN
-A HO-SVC-db -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-db-p src -m comment --comment "handoff db/p dnat" -j DNAT --to-destination 198.19.1.13:5432
*filter
-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdst 198.18.1.2/32 --ctorigdstport 5432 -m comment --comment "handoff db forward" -j HO-SVC-db
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-db"
-A HO-SVC-db -m set --match-set hoc-db dst,dst -m comment --comment "handoff db to backends" -j ACCEPT
-A HO-SVC-db -m set --match-set hoc-db src,src -m comment --comment "handoff db from backends" -j ACCEPT
-A HO-SVC-db -m comment --comment "handoff db other" -j ACCEPT
`,
	}, {
		desc: "ipv4-mapped listen address is IPv4",
		fam:  ipv4,
		svc:  svc("m", "[::ffff:198.18.1.3]:80", time.Second/2, false, "x", "[::ffff:198.19.1.11]:80"),
		want: `*mangle
-A HANDOFF-MARK -d 198.18.1.3/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff m mark" -j SET --map-set hoi-m src --map-mark
-A HANDOFF-DIAL -m comment --comment "handoff transparent dial" -j CONNMARK --set-xmark 0xfff00000/0xfff00000
-A HANDOFF-REPLY -m comment --comment "handoff transparent reply" -j MARK --set-xmark 0xfff00000/0xfff00000
*nat
-A HANDOFF-PREROUTING -d 198.18.1.3/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff m service" -j HO-SVC-m
-A HANDOFF-OUTPUT -d 198.18.1.3/32 -p tcp -m tcp --dport 80 -m comment --comment "handoff m service" -j HO-SVC-m
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-m"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoi-m"
-A HANDOFF-CANARY -m comment --comment "handoff owns set hoc-m"
-A HANDOFF-CANARY -m comment --comment "handoff owns set ho-m-x"
-A HO-SVC-m -m mark --mark 0x0/0xfff00000 -m comment --comment "handoff m new clients" -j RETURN
-A HO-SVC-m -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-m-x src -m comment --comment "handoff m/x refresh" -j SET --add-set ho-m-x src --exist --timeout 1
-A HO-SVC-m -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set ho-m-x src -m comment --comment "handoff m/x dnat" -j DNAT --to-destination 198.19.1.11:80
*filter
-A HANDOFF-FORWARD -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdst 198.18.1.3/32 --ctorigdstport 80 -m comment --comment "handoff m forward" -j HO-SVC-m
-A HANDOFF-CANARY -m comment --comment "handoff owns chain HO-SVC-m"
-A HO-SVC-m -m set --match-set hoc-m dst,dst -m comment --comment "handoff m to backends" -j ACCEPT
-A HO-SVC-m -m set --match-set hoc-m src,src -m comment --comment "handoff m from backends" -j ACCEPT
-A HO-SVC-m -m comment --comment "handoff m other" -j ACCEPT
`,
	}} {
		t.Run(c.desc, func(t *testing.T) {
			svcs := compileSlots(t, dataplane.State{Services: []dataplane.Service{c.svc}})
			r := render(c.fam, svcs, defaultLayout, DefaultQueue)
			if got := renderText(r); got != c.want {
				t.Errorf("got\n%s\nwant\n%s", got, c.want)
			}
			other := render(1-c.fam, svcs, defaultLayout, DefaultQueue)
			// The other family's tables have no rule of the service; the
			// IPv4 nat registry lists the sets of every family's services.
			got := regexp.MustCompile(`(?m)^.*handoff owns set.*\n`).ReplaceAllString(renderText(other), "")
			if got != "*mangle\n"+transparentRules+"*nat\n*filter\n" {
				t.Errorf("other family got rules:\n%s", got)
			}
			// Every chain of a rendering exists: base chains and canary
			// come first, in both families.
			var names []string
			for _, ch := range r[natTable] {
				names = append(names, ch.name)
			}
			if want := []string{chainPrerouting, chainOutput, chainPostrouting, chainCanary, dataplane.ServiceChain(svcs[0].name)}; !slices.Equal(names, want) {
				t.Errorf("nat chains %v, want %v", names, want)
			}
		})
	}
}

func TestCompileRejects(t *testing.T) {
	long := strings.Repeat("x", 30)
	for _, c := range []struct {
		desc string
		svc  dataplane.Service
		want string
	}{
		{"no port", svc("a", "198.18.1.1:0", 0, false), "want an address and a port"},
		{"bad name", svc("a b", "198.18.1.1:80", 0, false), "invalid name"},
		{"long set name", svc("a", "198.18.1.1:80", 0, false, long, "198.19.1.1:80"), "longer than 31"},
		{"mixed family", svc("a", "198.18.1.1:80", 0, false, "b", "[2001:2::1]:80"), "is not ipv4"},
		{"duplicate backend", svc("a", "198.18.1.1:80", 0, false, "b", "198.19.1.1:80", "b", "198.19.1.2:80"), "declared twice"},
		{"unspecified backend", svc("a", "198.18.1.1:80", 0, false, "b", "0.0.0.0:80"), "want an address and a port"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			_, err := compile(dataplane.State{Services: []dataplane.Service{c.svc}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("compile = %v, want %q", err, c.want)
			}
		})
	}
	_, err := compile(dataplane.State{Services: []dataplane.Service{svc("a", "198.18.1.1:80", 0, false), svc("a", "198.18.1.2:80", 0, false)}})
	if err == nil {
		t.Error("duplicate service accepted")
	}
}

func twoServices() dataplane.State {
	return dataplane.State{Services: []dataplane.Service{
		svc("web", "198.18.1.1:80", time.Hour, false, "be1", "198.19.1.11:80", "be2", "198.19.1.12:80"),
		svc("api", "198.18.1.2:443", time.Hour, true, "x", "198.19.1.13:443"),
	}}
}

// pinServices is twoServices with an IPv6 service, v6, whose pins time out
// after 10 minutes, and a service, forever, whose pins never time out.
func pinServices() dataplane.State {
	st := twoServices()
	st.Services = append(st.Services,
		svc("v6", "[2001:2:0:1::1]:80", 10*time.Minute, false, "a", "[2001:2:0:2::11]:80"),
		svc("forever", "198.18.1.3:80", 0, false, "a", "198.19.1.11:80"))
	return st
}

func TestSyncBuildsWorkingRules(t *testing.T) {
	d, k := syncedFake(t, twoServices())
	ctx := context.Background()
	client := netip.MustParseAddr("198.18.0.7")
	vip := netip.MustParseAddrPort("198.18.1.1:80")
	if to, ok, err := k.synLands(client, vip); err != nil || ok {
		t.Fatalf("unpinned SYN DNATed to %v (%v)", to, err)
	}
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be2", Client: client, Key: "k"})
	to, ok, err := k.synLands(client, vip)
	if err != nil || !ok || to != netip.MustParseAddrPort("198.19.1.12:80") {
		t.Fatalf("pinned SYN lands at %v %v %v, want be2", to, ok, err)
	}
	// Other port, other VIP: not DNATed.
	if to, ok, _ := k.synLands(client, netip.MustParseAddrPort("198.18.1.1:81")); ok {
		t.Errorf("SYN to port 81 DNATed to %v", to)
	}
	if to, ok, _ := k.synLands(client, netip.MustParseAddrPort("198.18.1.2:443")); ok {
		t.Errorf("SYN to api DNATed to %v", to)
	}
	if err := d.Unpin(ctx, "web", "be2", client); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := k.synLands(client, vip); ok {
		t.Error("unpinned client still DNATed")
	}
}

func TestSyncNoOpWritesNothing(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, twoServices())
	before := slices.Clone(k.log)
	restores := k.restore
	mustSync(t, d, twoServices())
	if k.restore != restores || !slices.Equal(k.log, before) {
		t.Errorf("no-op Sync changed things: %d restores, log %v", k.restore-restores, k.log[len(before):])
	}
	// Changing one service rewrites only its chain (and the registry,
	// which lists its sets).
	st := twoServices()
	st.Services[0].Backends = st.Services[0].Backends[:1]
	var input []byte
	d.ipt[ipv4] = recordingTables{d.ipt[ipv4], &input}
	mustSync(t, d, st)
	if got := string(input); !strings.Contains(got, ":HO-SVC-web - [0:0]") || strings.Contains(got, ":HO-SVC-api") || strings.Contains(got, "HANDOFF-PREROUTING") {
		t.Errorf("restore after removing a backend:\n%s", got)
	}
}

// recordingTables keeps the last restore input.
type recordingTables struct {
	iptables
	last *[]byte
}

func (r recordingTables) restore(ctx context.Context, data []byte) error {
	*r.last = slices.Clone(data)
	return r.iptables.restore(ctx, data)
}

func TestSyncRemovesServiceInOrder(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, twoServices())
	mustPin(t, d, dataplane.Pin{Service: "api", Backend: "x", Client: netip.MustParseAddr("198.18.0.9")})
	k.log = nil
	st := twoServices()
	st.Services = st.Services[:1]
	mustSync(t, d, st)
	// The fake refuses to destroy a set a rule still uses and to delete a
	// chain a rule still jumps to, so success means the order held; check
	// it anyway.
	want := []string{"restore ipv4 mangle", "restore ipv4 nat", "restore ipv4 filter", "destroy ho-api-x", "destroy hoc-api", "destroy hoi-api"}
	if !slices.Equal(k.log, want) {
		t.Errorf("operations %v, want %v", k.log, want)
	}
	nat := k.tableText(ipv4, natTable)
	if strings.Contains(nat, "HO-SVC-api") || strings.Contains(nat, "handoff api") {
		t.Errorf("api remains in nat:\n%s", nat)
	}
	if err := d.Pin(context.Background(), dataplane.Pin{Service: "api", Backend: "x", Client: netip.MustParseAddr("198.18.0.9")}); !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("Pin into removed service: %v, want ErrUnknown", err)
	}
	// An empty state keeps the base chains and jumps.
	mustSync(t, d, dataplane.State{})
	if nat := k.tableText(ipv4, natTable); !strings.Contains(nat, `-A PREROUTING -m comment --comment "handoff jump" -j HANDOFF-PREROUTING`) || strings.Contains(nat, "HO-SVC") {
		t.Errorf("nat after empty Sync:\n%s", nat)
	}
	if names, _ := (fakeSets{k}).names(); len(names) != 0 {
		t.Errorf("sets after empty Sync: %v", names)
	}
}

// TestSyncLeavesForeignObjects checks that the first Sync removes the
// chains and sets a previous run registered and no longer wants, with the
// foreign rules jumping to them, and leaves foreign objects, those named
// like handoff's included.
func TestSyncLeavesForeignObjects(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	ctx := context.Background()
	ipt := fakeTables{k, ipv4}
	if err := ipt.restore(ctx, []byte("*nat\n:FOREIGN - [0:0]\n:HANDOFF-CANARY - [0:0]\n-A PREROUTING -p udp -j FOREIGN\n-A FOREIGN -j RETURN\n:HO-SVC-old - [0:0]\n:HO-SVC-other - [0:0]\n-A FOREIGN -j HO-SVC-old\n-A FOREIGN -j HO-SVC-other\n"+
		"-A HANDOFF-CANARY "+registryRule(ownsChain, "HO-SVC-old")+"\n-A HANDOFF-CANARY "+registryRule(ownsSet, "ho-old-x")+"\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	for _, set := range []string{"foreign", "ho-old-x", "ho-other-x"} {
		fakeSets{k}.create(set, setSpec{})
	}
	mustSync(t, d, twoServices())
	nat := k.tableText(ipv4, natTable)
	for _, want := range []string{"-A PREROUTING -p udp -j FOREIGN", "-A FOREIGN -j RETURN", ":FOREIGN -", ":HO-SVC-other -", "-A FOREIGN -j HO-SVC-other"} {
		if !strings.Contains(nat, want) {
			t.Errorf("foreign %q gone:\n%s", want, nat)
		}
	}
	if strings.Contains(nat, "HO-SVC-old") {
		t.Errorf("stale chain HO-SVC-old (and the jump to it) remain:\n%s", nat)
	}
	names, _ := fakeSets{k}.names()
	if !slices.Contains(names, "foreign") || !slices.Contains(names, "ho-other-x") || slices.Contains(names, "ho-old-x") {
		t.Errorf("sets after Sync: %v", names)
	}
}

func TestFakeRejectsBadOrder(t *testing.T) {
	k := newFakeKernel()
	ipt := fakeTables{k, ipv4}
	ctx := context.Background()
	for _, c := range []struct{ desc, input string }{
		{"jump to a missing chain", "*nat\n:HANDOFF-PREROUTING - [0:0]\n-A HANDOFF-PREROUTING -j HO-SVC-nope\nCOMMIT\n"},
		{"flush an undeclared chain", "*nat\n-F HANDOFF-PREROUTING\nCOMMIT\n"},
		{"rule using a missing set", "*nat\n:X - [0:0]\n-A X -m set --match-set ho-a-b src -j RETURN\nCOMMIT\n"},
		{"delete a referenced chain", "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-X B\nCOMMIT\n"},
		{"delete a built-in chain", "*nat\n-X PREROUTING\nCOMMIT\n"},
		{"delete a missing rule", "*nat\n-D PREROUTING -j ACCEPT\nCOMMIT\n"},
		{"no commit", "*nat\n:A - [0:0]\n"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			before := k.tableText(ipv4, natTable)
			err := ipt.restore(ctx, []byte(c.input))
			var re *restoreError
			if !errors.As(err, &re) || re.line == 0 {
				t.Fatalf("restore = %v, want a failing line", err)
			}
			if after := k.tableText(ipv4, natTable); after != before {
				t.Errorf("failed restore changed the table:\n%s", after)
			}
		})
	}
	// A set in use cannot be destroyed.
	s := fakeSets{k}
	s.create("ho-a-b", setSpec{})
	if err := ipt.restore(ctx, []byte("*nat\n:X - [0:0]\n-A X -m set --match-set ho-a-b src -j RETURN\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.destroy("ho-a-b"); !errors.Is(err, errSetInUse) {
		t.Errorf("destroy of a referenced set = %v", err)
	}
}

func TestSyncFailureLogsLinesAround(t *testing.T) {
	var logs bytes.Buffer
	l := logrus.New()
	l.SetOutput(&logs)
	d, k := newFakeDataplane(Options{Logger: logrus.NewEntry(l)})
	k.failOn = "ho-api-x src -m comment"
	err := d.Sync(context.Background(), twoServices())
	var re *restoreError
	if !errors.As(err, &re) {
		t.Fatalf("Sync = %v, want a restore error", err)
	}
	out := logs.String()
	if !strings.Contains(out, "applying rules failed") || !strings.Contains(out, "> "+strconv.Itoa(re.line)+": -A HO-SVC-api") {
		t.Errorf("log does not quote the failing line %d:\n%s", re.line, out)
	}
	if strings.Count(out, `\n`) > 8 {
		t.Errorf("log quotes too much input:\n%s", out)
	}
	// The next Sync, once the failure is gone, writes everything.
	k.failOn = ""
	mustSync(t, d, twoServices())
	if to, ok, _ := k.synLands(netip.MustParseAddr("198.18.0.1"), netip.MustParseAddrPort("198.18.1.2:443")); ok {
		t.Errorf("unpinned lands at %v", to)
	}
}

func TestCanaryRepairsDrift(t *testing.T) {
	var logs bytes.Buffer
	l := logrus.New()
	l.SetOutput(&logs)
	d, k := newFakeDataplane(Options{Logger: logrus.NewEntry(l)})
	ctx := context.Background()
	d.checkCanary(ctx) // before any Sync: nothing to do
	if k.restore != 0 {
		t.Fatal("canary before Sync touched the tables")
	}
	mustSync(t, d, twoServices())
	want := k.tableText(ipv4, natTable)
	ipt := fakeTables{k, ipv4}
	for _, drift := range []string{
		"*nat\n-F HANDOFF-PREROUTING\nCOMMIT\n",
		"*nat\n-F HANDOFF-CANARY\n-X HANDOFF-CANARY\nCOMMIT\n",
		"*nat\n-D PREROUTING -m comment --comment \"handoff jump\" -j HANDOFF-PREROUTING\nCOMMIT\n",
	} {
		logs.Reset()
		if err := ipt.restore(ctx, []byte(drift)); err != nil {
			t.Fatal(err)
		}
		d.checkCanary(ctx)
		if got := k.tableText(ipv4, natTable); !sameLines(got, want) {
			t.Errorf("after %q and a canary check:\n%s\nwant\n%s", drift, got, want)
		}
		if n := strings.Count(logs.String(), "level=warning"); n != 1 {
			t.Errorf("after %q: %d warnings, want 1:\n%s", drift, n, logs.String())
		}
	}
	logs.Reset()
	restores := k.restore
	d.checkCanary(ctx)
	if k.restore != restores || logs.Len() != 0 {
		t.Errorf("canary without drift: %d restores, logs %s", k.restore-restores, logs.String())
	}
}

func sameLines(a, b string) bool {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	slices.Sort(la)
	slices.Sort(lb)
	return slices.Equal(la, lb)
}

func TestCanaryRetriesFailedSync(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	k.failOn = "HO-SVC-web"
	if err := d.Sync(context.Background(), twoServices()); err == nil {
		t.Fatal("Sync succeeded despite the failure")
	}
	k.failOn = ""
	d.checkCanary(context.Background())
	if d.dirty {
		t.Error("canary did not re-apply the failed state")
	}
	if !strings.Contains(k.tableText(ipv4, natTable), "HO-SVC-web") {
		t.Error("rules missing after the canary's retry")
	}
}

func TestPin(t *testing.T) {
	d, k := syncedFake(t, pinServices())
	ctx := context.Background()
	member := func(set string, ip string) member {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.sets[set].members[netip.MustParseAddr(ip)]
	}
	for _, c := range []struct {
		desc    string
		pin     dataplane.Pin
		set     string
		ip      string
		timeout uint32
		comment string
		err     error
	}{
		{"default ttl", dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.2"), Key: "src=198.18.0.2"}, "ho-web-be1", "198.18.0.2", 3600, "src=198.18.0.2", nil},
		{"own ttl rounds up", dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.3"), TTL: 1500 * time.Millisecond}, "ho-web-be1", "198.18.0.3", 2, "", nil},
		{"tiny ttl is 1s", dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.4"), TTL: time.Nanosecond}, "ho-web-be1", "198.18.0.4", 1, "", nil},
		{"huge ttl is clamped", dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.5"), TTL: 1e6 * time.Hour}, "ho-web-be1", "198.18.0.5", maxTimeout, "", nil},
		{"mapped client unmapped", dataplane.Pin{Service: "web", Backend: "be2", Client: netip.MustParseAddr("::ffff:198.18.0.6")}, "ho-web-be2", "198.18.0.6", 3600, "", nil},
		{"comment sanitized", dataplane.Pin{Service: "web", Backend: "be2", Client: netip.MustParseAddr("198.18.0.7"), Key: "sni=\"ä\".example\n"}, "ho-web-be2", "198.18.0.7", 3600, "sni=____.example_", nil},
		{"long comment cut", dataplane.Pin{Service: "web", Backend: "be2", Client: netip.MustParseAddr("198.18.0.8"), Key: strings.Repeat("k", 300)}, "ho-web-be2", "198.18.0.8", 3600, strings.Repeat("k", 255), nil},
		{"ipv6", dataplane.Pin{Service: "v6", Backend: "a", Client: netip.MustParseAddr("2001:2:0:1::2")}, "ho6-v6-a", "2001:2:0:1::2", 600, "", nil},
		{"no timeout set ignores TTL", dataplane.Pin{Service: "forever", Backend: "a", Client: netip.MustParseAddr("198.18.0.9"), TTL: time.Minute}, "ho-forever-a", "198.18.0.9", 0, "", nil},
		{"unknown service", dataplane.Pin{Service: "nope", Backend: "a", Client: netip.MustParseAddr("198.18.0.9")}, "", "", 0, "", dataplane.ErrUnknown},
		{"unknown backend", dataplane.Pin{Service: "web", Backend: "nope", Client: netip.MustParseAddr("198.18.0.9")}, "", "", 0, "", dataplane.ErrUnknown},
	} {
		t.Run(c.desc, func(t *testing.T) {
			err := d.Pin(ctx, c.pin)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Errorf("Pin = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := member(c.set, c.ip)
			if m.timeout != c.timeout || m.comment != c.comment {
				t.Errorf("entry %+v, want timeout %d comment %q", m, c.timeout, c.comment)
			}
		})
	}
	if err := d.Pin(ctx, dataplane.Pin{Service: "v6", Backend: "a", Client: netip.MustParseAddr("198.18.0.2")}); err == nil || !strings.Contains(err.Error(), "is not ipv6") {
		t.Errorf("IPv4 client in IPv6 service: %v", err)
	}
	if err := d.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be1"}); err == nil {
		t.Error("Pin without client accepted")
	}

	// A full set: ErrFull, naming the set.
	st := twoServices()
	st.Services[0].MaxClients = 1
	st.Services[0].Backends = st.Services[0].Backends[:1]
	d2, _ := syncedFake(t, dataplane.State{Services: st.Services[:1]})
	mustPin(t, d2, dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.2")})
	mustPin(t, d2, dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.2")}) // re-pin fits
	err := d2.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.3")})
	if !errors.Is(err, dataplane.ErrFull) || !strings.Contains(err.Error(), `ipset "ho-web-be1": add 198.18.0.3`) {
		t.Errorf("Pin into a full set = %v", err)
	}
}

func TestLookupAndPins(t *testing.T) {
	d, _ := newFakeDataplane(Options{})
	ctx := context.Background()
	mustSync(t, d, twoServices())
	c1, c2 := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: c1, Key: "one"})
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be2", Client: c2, Key: "two", TTL: time.Minute})
	p, ok, err := d.Lookup(ctx, "web", c2)
	if err != nil || !ok || (p != dataplane.Pin{Service: "web", Backend: "be2", Client: c2}) {
		t.Errorf("Lookup = %+v, %v, %v", p, ok, err)
	}
	if _, ok, err := d.Lookup(ctx, "web", netip.MustParseAddr("198.18.0.99")); ok || err != nil {
		t.Errorf("Lookup of unpinned = %v, %v", ok, err)
	}
	if _, _, err := d.Lookup(ctx, "nope", c1); !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("Lookup in unknown service: %v", err)
	}
	var got []dataplane.Pin
	collect := func(p dataplane.Pin) error { got = append(got, p); return nil }
	if err := d.Pins(ctx, "web", "", collect); err != nil {
		t.Fatal(err)
	}
	want := []dataplane.Pin{
		{Service: "web", Backend: "be1", Client: c1, Key: "one", TTL: time.Hour},
		{Service: "web", Backend: "be2", Client: c2, Key: "two", TTL: time.Minute},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Pins = %+v, want %+v", got, want)
	}
	got = nil
	if err := d.Pins(ctx, "web", "be2", collect); err != nil || len(got) != 1 || got[0].Client != c2 {
		t.Errorf("Pins(be2) = %+v, %v", got, err)
	}
	stop := errors.New("stop")
	if err := d.Pins(ctx, "web", "", func(dataplane.Pin) error { return stop }); err != stop {
		t.Errorf("Pins did not return fn's error: %v", err)
	}
	// fn may call back into the Dataplane.
	if err := d.Pins(ctx, "web", "", func(p dataplane.Pin) error { return d.Unpin(ctx, p.Service, p.Backend, p.Client) }); err != nil {
		t.Fatal(err)
	}
	n := 0
	d.Pins(ctx, "web", "", func(dataplane.Pin) error { n++; return nil })
	if n != 0 {
		t.Errorf("%d pins left after unpinning all", n)
	}
}

func TestRebuildKeepsPins(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	st := twoServices()
	mustSync(t, d, st)
	old := netip.MustParseAddr("198.18.0.2")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: old, Key: "old"})
	gone := netip.MustParseAddr("198.18.0.4")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: gone, Key: "gone"})
	// A pin made while the rebuild copies goes to both sets; an unpin
	// made then is not undone by the copy of the older listing.
	during := netip.MustParseAddr("198.18.0.3")
	k.onList = func() {
		mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: during, Key: "during"})
		if err := d.Unpin(context.Background(), "web", "be1", gone); err != nil {
			t.Error(err)
		}
	}
	st.Services[0].MaxClients = 500
	st.Services[0].ClientTTL = 10 * time.Minute
	mustSync(t, d, st)
	k.mu.Lock()
	set := k.sets["ho-web-be1"]
	k.mu.Unlock()
	if set.spec.maxelem != 500 || set.spec.timeout != 600 {
		t.Errorf("set spec %+v after Sync", set.spec)
	}
	if m := set.members[old]; m.comment != "old" || m.timeout != 600 {
		t.Errorf("old pin after rebuild: %+v", m)
	}
	if m := set.members[during]; m.comment != "during" {
		t.Errorf("pin made during rebuild: %+v", m)
	}
	if m, ok := set.members[gone]; ok {
		t.Errorf("pin unpinned during rebuild came back: %+v", m)
	}
	names, _ := fakeSets{k}.names()
	for _, n := range names {
		if strings.Contains(n, tempTag) {
			t.Errorf("temporary set %s left", n)
		}
	}
	if len(d.shadow) != 0 {
		t.Errorf("shadow left: %v", d.shadow)
	}
}

func TestForgetMatchesFlows(t *testing.T) {
	vip := netip.MustParseAddrPort("198.18.1.1:80")
	be := netip.MustParseAddrPort("198.19.1.11:8080")
	mk := func(proto uint8, dst string, dport uint16, rsrc string, rsport uint16) flow {
		return flow{proto: proto, dst: netip.AddrPortFrom(netip.MustParseAddr(dst), dport), replySrc: netip.AddrPortFrom(netip.MustParseAddr(rsrc), rsport)}
	}
	for _, c := range []struct {
		desc string
		vip  netip.AddrPort
		f    flow
		want bool
	}{
		{"dnated to backend", vip, mk(6, "198.18.1.1", 80, "198.19.1.11", 8080), true},
		{"other backend", vip, mk(6, "198.18.1.1", 80, "198.19.1.12", 8080), false},
		{"other backend port", vip, mk(6, "198.18.1.1", 80, "198.19.1.11", 9090), false},
		{"other vip", vip, mk(6, "198.18.1.9", 80, "198.19.1.11", 8080), false},
		{"other port", vip, mk(6, "198.18.1.1", 81, "198.19.1.11", 8080), false},
		{"udp", vip, mk(17, "198.18.1.1", 80, "198.19.1.11", 8080), false},
		{"not dnated", netip.MustParseAddrPort("0.0.0.0:8080"), mk(6, "198.19.1.11", 8080, "198.19.1.11", 8080), false},
		{"any local vip", netip.MustParseAddrPort("0.0.0.0:80"), mk(6, "198.18.1.7", 80, "198.19.1.11", 8080), true},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if got := flowMatches(c.vip, be, c.f); got != c.want {
				t.Errorf("flowMatches = %v, want %v", got, c.want)
			}
		})
	}
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, dataplane.State{Services: []dataplane.Service{svc("web", "198.18.1.1:80", time.Hour, false, "a", "198.19.1.11:8080", "b", "198.19.1.12:8080")}})
	k.flows = []flow{
		mk(6, "198.18.1.1", 80, "198.19.1.11", 8080),
		mk(6, "198.18.1.1", 80, "198.19.1.11", 8080),
		mk(6, "198.18.1.1", 80, "198.19.1.12", 8080),
	}
	if n, err := d.Forget(context.Background(), "web", "a"); n != 2 || err != nil {
		t.Errorf("Forget = %d, %v; want 2", n, err)
	}
	if len(k.flows) != 1 {
		t.Errorf("%d flows left, want 1", len(k.flows))
	}
}

func TestCleanupWithFake(t *testing.T) {
	d, k := newFakeDataplane(Options{IPv6: true})
	ctx := context.Background()
	st := twoServices()
	st.Services = append(st.Services, svc("v6", "[2001:2:0:1::1]:80", time.Hour, false, "a", "[2001:2:0:2::11]:80"))
	mustSync(t, d, st)
	ipt := fakeTables{k, ipv4}
	// Foreign objects, two of them named like handoff's.
	if err := ipt.restore(ctx, []byte("*nat\n:FOREIGN - [0:0]\n:HANDOFF-LOCAL - [0:0]\n-A PREROUTING -p udp -j FOREIGN\n-A FOREIGN -j HANDOFF-OUTPUT\n-A PREROUTING -p udp -j HANDOFF-LOCAL\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	fakeSets{k}.create("foreign", setSpec{})
	fakeSets{k}.create("ho-foreign", setSpec{})
	ipts := [2]iptables{fakeTables{k, ipv4}, fakeTables{k, ipv6}}
	for i := range 2 {
		restores := k.restore
		if err := cleanup(ctx, ipts, fakeSets{k}, false, quietLogger()); err != nil {
			t.Fatalf("cleanup #%d: %v", i+1, err)
		}
		if i == 1 && k.restore != restores {
			t.Errorf("second cleanup ran %d restores", k.restore-restores)
		}
		for _, fam := range []family{ipv4, ipv6} {
			for _, tb := range tables {
				txt := k.tableText(fam, tb)
				txt = strings.ReplaceAll(strings.ReplaceAll(txt, ":HANDOFF-LOCAL - [0:0]\n", ""), "-A PREROUTING -p udp -j HANDOFF-LOCAL\n", "")
				if strings.Contains(txt, "HANDOFF") || strings.Contains(txt, "HO-SVC") {
					t.Errorf("%s %s after cleanup:\n%s", fam, tb, txt)
				}
			}
		}
		if nat := k.tableText(ipv4, natTable); !strings.Contains(nat, "-A PREROUTING -p udp -j FOREIGN") || !strings.Contains(nat, ":FOREIGN") ||
			!strings.Contains(nat, ":HANDOFF-LOCAL") || !strings.Contains(nat, "-A PREROUTING -p udp -j HANDOFF-LOCAL") {
			t.Errorf("foreign rules gone:\n%s", nat)
		}
		if names, _ := (fakeSets{k}).names(); !slices.Equal(names, []string{"foreign", "ho-foreign"}) {
			t.Errorf("sets after cleanup: %v", names)
		}
	}
	// --prefixed takes the objects named like handoff's too.
	if err := cleanup(ctx, ipts, fakeSets{k}, true, quietLogger()); err != nil {
		t.Fatal(err)
	}
	if nat := k.tableText(ipv4, natTable); strings.Contains(nat, "HANDOFF-LOCAL") || !strings.Contains(nat, ":FOREIGN") {
		t.Errorf("after cleanup --prefixed:\n%s", nat)
	}
	if names, _ := (fakeSets{k}).names(); !slices.Equal(names, []string{"foreign"}) {
		t.Errorf("sets after cleanup --prefixed: %v", names)
	}
}

// TestSyncLeavesForeignPrefixed checks that a Sync removes the chains and
// sets of a removed service, which its registry lists, but leaves the
// chains and sets that merely share handoff's prefixes, with their jumps.
// TestListChunks: the rebuild's listing hands over every member in chunks
// of at most pinChunk; a consumer that stops ends the listing after at
// most the chunks already ahead of it, with no error; a listing that
// fails says why.
func TestListChunks(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	sets := fakeSets{k}
	if err := sets.create("ho-big", setSpec{family: ipv4, timeout: 3600}); err != nil {
		t.Fatal(err)
	}
	const n = 3*pinChunk + 5
	for i := range n {
		ip := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		if err := sets.add("ho-big", ip, 0, 60, "k", false); err != nil {
			t.Fatal(err)
		}
	}
	conv := func(m member) setAdd { return setAdd{ip: m.ip, comment: m.comment} }

	seen := map[netip.Addr]bool{}
	chunks, wait := d.listChunks("ho-big", conv)
	for c := range chunks {
		if len(c.es) == 0 || len(c.es) > pinChunk {
			t.Errorf("a chunk of %d members", len(c.es))
		}
		for _, e := range c.es {
			seen[e.ip] = true
		}
		c.done(false)
	}
	if err := wait(); err != nil || len(seen) != n {
		t.Errorf("listed %d distinct members, %v; want %d, nil", len(seen), err, n)
	}

	got := 0
	chunks, wait = d.listChunks("ho-big", conv)
	for c := range chunks {
		got++
		c.done(true)
	}
	if err := wait(); err != nil || got > 3 {
		t.Errorf("a stopped listing handed over %d chunks, %v; want at most 3, nil", got, err)
	}

	chunks, wait = d.listChunks("ho-none", conv)
	for c := range chunks {
		c.done(false)
	}
	if err := wait(); !errors.Is(err, errNoSet) {
		t.Errorf("listing a missing set: %v, want errNoSet", err)
	}
}

func TestSyncLeavesForeignPrefixed(t *testing.T) {
	d, k := syncedFake(t, twoServices())
	ctx := context.Background()
	if err := (fakeTables{k, ipv4}).restore(ctx, []byte("*nat\n:HANDOFF-LOCAL - [0:0]\n:HO-SVC-other - [0:0]\n-A PREROUTING -p udp -j HANDOFF-LOCAL\n-A HO-SVC-other -j ACCEPT\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	fakeSets{k}.create("ho-foreign", setSpec{})
	st := twoServices()
	st.Services = st.Services[:1] // api goes
	d.checkCanary(ctx)            // a check reads every table, foreign chains included
	mustSync(t, d, st)
	nat := k.tableText(ipv4, natTable)
	for _, want := range []string{":HANDOFF-LOCAL", "-A PREROUTING -p udp -j HANDOFF-LOCAL", ":HO-SVC-other", "-A HO-SVC-other -j ACCEPT"} {
		if !strings.Contains(nat, want) {
			t.Errorf("nat lost the foreign %q:\n%s", want, nat)
		}
	}
	if strings.Contains(nat, "HO-SVC-api") {
		t.Errorf("nat kept the removed service's chain:\n%s", nat)
	}
	names, _ := fakeSets{k}.names()
	if !slices.Contains(names, "ho-foreign") || slices.Contains(names, "ho-api-x") || slices.Contains(names, "hoi-api") || slices.Contains(names, "hoc-api") {
		t.Errorf("sets after removing api: %v", names)
	}
}

// savedNat is an iptables seam whose nat table is fixed text.
type savedNat string

func (s savedNat) save(_ context.Context, t table, counters bool) ([]byte, error) {
	if t != natTable || !counters {
		return nil, fmt.Errorf("save %q (counters %v), want nat with counters", t, counters)
	}
	return []byte(s), nil
}

func (savedNat) restore(context.Context, []byte) error { return fmt.Errorf("read only") }

// TestCounters checks how counters reads a backend's counters: the
// packets of its DNAT rule, and the bytes of the entry of its DNAT
// rule's destination in its service's counting set. Backends sharing an
// address share an entry, counted once, for the first by name; entries
// of no backend and services without a set count nothing.
func TestCounters(t *testing.T) {
	nat4 := `# Generated by iptables-save
*nat
:PREROUTING ACCEPT [10:600]
:HO-SVC-web - [0:0]
[3:180] -A HO-SVC-web -p tcp -m set --match-set ho-web-be1 src -m comment --comment "handoff web/be1 refresh" -j SET --add-set ho-web-be1 src --exist --timeout 1800
[3:180] -A HO-SVC-web -p tcp -m set --match-set ho-web-be1 src -m comment --comment "handoff web/be1 dnat" -j DNAT --to-destination 198.19.1.11:80
[7:420] -A HO-SVC-web -p tcp -m set --match-set ho-web-be3 src -m comment --comment "handoff web/be3 dnat" -j DNAT --to-destination 198.19.1.12:80
[2:120] -A HO-SVC-web -p tcp -m set --match-set ho-web-be2 src -m comment --comment "handoff web/be2 dnat" -j DNAT --to-destination 198.19.1.12:80
[4:240] -A HO-SVC-gone -p tcp -m set --match-set ho-gone-x src -m comment --comment "handoff gone/x dnat" -j DNAT --to-destination 198.19.1.11:80
[9:9] -A PREROUTING -m comment --comment handoff -j ACCEPT
COMMIT
`
	nat6 := `*nat
[1:80] -A HO-SVC-web6 -p tcp -m set --match-set ho6-web6-a src -m comment --comment "handoff web6/a dnat" -j DNAT --to-destination [2001:2:0:2::11]:8080
COMMIT
`
	k := newFakeKernel()
	sets := fakeSets{k}
	for set, es := range map[string]map[string]uint64{
		"hoc-web":   {"198.19.1.11:80": 70000, "198.19.1.12:80": 3000, "198.19.1.99:80": 5},
		"hoc6-web6": {"[2001:2:0:2::11]:8080": 900},
	} {
		fam := ipv4
		if strings.HasPrefix(set, "hoc6-") {
			fam = ipv6
		}
		if err := sets.create(set, setSpec{family: fam, counters: true}); err != nil {
			t.Fatal(err)
		}
		for e, n := range es {
			ap := netip.MustParseAddrPort(e)
			if err := sets.addPort(set, ap); err != nil {
				t.Fatal(err)
			}
			m := k.sets[set].ports[ap]
			m.bytes, m.packets = n, n/100
			k.sets[set].ports[ap] = m
		}
	}
	got, err := counters(context.Background(), [2]iptables{savedNat(nat4), savedNat(nat6)}, sets, []family{ipv4, ipv6})
	if err != nil {
		t.Fatal(err)
	}
	want := map[dataplane.BackendRef]Counter{
		{Service: "web", Backend: "be1"}: {Packets: 3, Bytes: 70000},
		{Service: "web", Backend: "be2"}: {Packets: 2, Bytes: 3000},
		{Service: "web", Backend: "be3"}: {Packets: 7},
		{Service: "gone", Backend: "x"}:  {Packets: 4},
		{Service: "web6", Backend: "a"}:  {Packets: 1, Bytes: 900},
	}
	if !maps.Equal(got, want) {
		t.Errorf("counters %v, want %v", got, want)
	}
}

func TestSplitArgs(t *testing.T) {
	for in, want := range map[string][]string{
		`-A X -m comment --comment "handoff web/be1 dnat" -j DNAT`: {"-A", "X", "-m", "comment", "--comment", "handoff web/be1 dnat", "-j", "DNAT"},
		`-m comment --comment handoff -j X`:                        {"-m", "comment", "--comment", "handoff", "-j", "X"},
		`--comment "a \"quoted\" word"  -j  Y`:                     {"--comment", `a "quoted" word`, "-j", "Y"},
		`--comment ""`:                                             {"--comment", ""},
	} {
		if got := splitArgs(in); !slices.Equal(got, want) {
			t.Errorf("splitArgs(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLinesAround(t *testing.T) {
	data := []byte("*nat\n:A - [0:0]\n-A A -j X\n-A A -j Y\n-A A -j Z\nCOMMIT\n")
	want := "  2: :A - [0:0]\n  3: -A A -j X\n> 4: -A A -j Y\n  5: -A A -j Z\n  6: COMMIT\n"
	if got := linesAround(data, 4, 2); got != want {
		t.Errorf("linesAround =\n%s\nwant\n%s", got, want)
	}
	if got := linesAround(data, 0, 1); got != "  1: *nat\n  2: :A - [0:0]\n  3: -A A -j X\n" {
		t.Errorf("linesAround(0) =\n%s", got)
	}
}

func TestRestoreLineRE(t *testing.T) {
	for in, want := range map[string]string{
		"iptables-restore: line 7 failed":                                                           "7",
		"iptables-restore v1.8.9 (nf_tables): x\nError occurred at line: 13":                        "13",
		"iptables-restore v1.8.9 (nf_tables): \nline 3: CHAIN_DEL failed (Device or resource busy)": "3",
	} {
		if m := restoreLineRE.FindStringSubmatch(in); m == nil || m[1] != want {
			t.Errorf("line of %q = %v, want %s", in, m, want)
		}
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]uint32{
		0: 0, -time.Second: 0, time.Nanosecond: 1, time.Second: 1, 1001 * time.Millisecond: 2,
		30 * time.Minute: 1800, 1000 * time.Hour: maxTimeout,
	} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%s) = %d, want %d", d, got, want)
		}
	}
}

func TestSanitizeCommentDoesNotAllocate(t *testing.T) {
	key := "src=198.18.0.2"
	if n := testing.AllocsPerRun(100, func() { _ = sanitizeComment(key) }); n != 0 {
		t.Errorf("sanitizeComment of a clean key allocates %v times", n)
	}
}

func TestNamesAreScratchSafe(t *testing.T) {
	for _, n := range []string{tempSetName("ho-web-be1"), tempSetName("ho6-" + strings.Repeat("s", 12) + "-" + strings.Repeat("b", 14)), probeSetName(ipv6, 4194304)} {
		if len(n) > dataplane.MaxSetNameLen || !isHandoffSet(n) {
			t.Errorf("scratch name %q: too long or not handoff's", n)
		}
	}
	if !isProbeSet(probeSetName(ipv4, 1)) || isProbeSet("ho-probe-1") {
		t.Error("isProbeSet")
	}
	if !strings.HasPrefix(tempSetName("ho6-a-b"), "ho6-") {
		t.Error("temporary set of an IPv6 set is not ho6-")
	}
}

func TestClosedDataplane(t *testing.T) {
	d, _ := newFakeDataplane(Options{})
	ctx := context.Background()
	mustSync(t, d, twoServices())
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.2")}); !errors.Is(err, errClosed) {
		t.Errorf("Pin after Close: %v", err)
	}
	if err := d.Sync(ctx, twoServices()); !errors.Is(err, errClosed) {
		t.Errorf("Sync after Close: %v", err)
	}
}

// TestConcurrentPinsAndSyncs pins from several goroutines while Syncs
// rebuild the set; no pin may be lost (run with -race).
func TestConcurrentPinsAndSyncs(t *testing.T) {
	const each = 200
	pinDuringSyncs(t, 4, each, 50, func(ctx context.Context, d *Dataplane, w int) error {
		for i := range each {
			ip := netip.AddrFrom4([4]byte{198, 18, byte(w), byte(i)})
			if err := d.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be1", Client: ip}); err != nil {
				return err
			}
		}
		return nil
	})
}

// pinDuringSyncs runs workers goroutines, each pinning its each clients
// of web/be1 with pinAll over and over, while syncs Syncs rebuild the
// set, and checks that every client is in the set at the end.
func pinDuringSyncs(t *testing.T, workers, each, syncs int, pinAll func(ctx context.Context, d *Dataplane, w int) error) {
	t.Helper()
	st := twoServices()
	st.Services[0].MaxClients = 10000
	d, k := syncedFake(t, st)
	ctx := context.Background()
	stop := make(chan struct{})
	errc := make(chan error, workers)
	for w := range workers {
		go func() {
			// Keep re-pinning the worker's clients until the Syncs are done.
			for {
				if err := pinAll(ctx, d, w); err != nil {
					errc <- err
					return
				}
				select {
				case <-stop:
					errc <- nil
					return
				default:
				}
			}
		}()
	}
	for i := range syncs {
		st.Services[0].MaxClients = 10000 + i%2 // each Sync rebuilds ho-web-be1
		mustSync(t, d, st)
	}
	close(stop)
	for range workers {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if n := fakeLen(k, "ho-web-be1"); n != workers*each {
		t.Errorf("%d pins in the set, want %d", n, workers*each)
	}
}
