package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/internal/etcdtest"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// clusterLab is the namespaces of a two-host cluster (the deploy/cluster
// lab):
//
//	cli 198.18.0.2..  ── rtr 198.18.0.1 (etcd on 198.18.10.1:2379)
//	                      bridge "front" 198.18.10.1/24
//	                       ├── lb1 front0 198.18.10.11   sync0 198.18.20.1 ─┐
//	                       └── lb2 front0 198.18.10.12   sync0 198.18.20.2 ─┘
//	                      lb1 back0 198.19.1.2, lb2 back0 198.19.1.3
//	                       └── bk bridge "back": backends 198.19.1.11..13 (default via 198.19.1.1)
type clusterLab struct {
	cli, rtr, bk *nstest.NS
	lb           [2]*nstest.NS
	clients      []netip.Addr
	etcd         *etcdtest.Server
}

// Cluster lab addresses.
var (
	etcdEndpoint = "http://198.18.10.1:2379"
	clusterBEs   = []netip.Addr{netip.MustParseAddr("198.19.1.11"), netip.MustParseAddr("198.19.1.12"), netip.MustParseAddr("198.19.1.13")}
)

func newClusterLab(t *testing.T, clients int) *clusterLab {
	t.Helper()
	nstest.RequireRoot(t)
	etcdtest.Require(t)
	l := &clusterLab{cli: nstest.New(t, "cli"), rtr: nstest.New(t, "rtr"), bk: nstest.New(t, "bk")}
	l.lb[0], l.lb[1] = nstest.New(t, "lb1"), nstest.New(t, "lb2")

	cliAddrs := []string{}
	for i := range clients {
		a := netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)})
		l.clients = append(l.clients, a)
		cliAddrs = append(cliAddrs, a.String()+"/24")
	}
	nstest.Connect(t, l.cli, l.rtr, cliAddrs, []string{"198.18.0.1/24"})
	l.cli.AddRoute(t, "default", "198.18.0.1")
	l.rtr.EnableForwarding(t)

	l.rtr.Run(t, "ip", "link", "add", "front", "type", "bridge")
	l.rtr.Run(t, "ip", "addr", "add", "198.18.10.1/24", "dev", "front")
	l.rtr.Run(t, "ip", "link", "set", "front", "up")
	l.bk.Run(t, "ip", "link", "add", "back", "type", "bridge")
	for _, a := range clusterBEs {
		l.bk.Run(t, "ip", "addr", "add", a.String()+"/24", "dev", "back")
	}
	l.bk.Run(t, "ip", "link", "set", "back", "up")
	l.bk.Run(t, "ip", "route", "add", "default", "via", "198.19.1.1", "onlink", "dev", "back")
	for i, lb := range l.lb {
		n := i + 1
		l.plug(t, lb, "front0", l.rtr, fmt.Sprintf("fr%d", n), "front", fmt.Sprintf("198.18.10.1%d/24", n))
		l.plug(t, lb, "back0", l.bk, fmt.Sprintf("bk%d", n), "back", fmt.Sprintf("198.19.1.%d/24", n+1))
		lb.EnableForwarding(t)
		lb.Run(t, "ip", "route", "add", "198.18.0.0/16", "via", "198.18.10.1")
	}
	runHost(t, "ip", "-n", l.lb[0].Name, "link", "add", "sync0", "type", "veth", "peer", "name", "sync0", "netns", l.lb[1].Name)
	for i, lb := range l.lb {
		lb.Run(t, "ip", "addr", "add", fmt.Sprintf("198.18.20.%d/30", i+1), "dev", "sync0")
		lb.Run(t, "ip", "link", "set", "sync0", "up")
	}
	for _, lb := range l.lb {
		lb.WaitUp(t, "sync0")
	}
	l.etcd = etcdtest.Start(t, etcdtest.Options{
		Host: "198.18.10.1",
		Wrap: func(argv []string) []string { return append([]string{"ip", "netns", "exec", l.rtr.Name}, argv...) },
		Dial: l.rtr.Dial,
	})
	for i, a := range clusterBEs {
		serveGreeter(t, l.bk, fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(a, 80))
		serveGreeter(t, l.bk, fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(a, 7000))
	}
	return l
}

// plug joins ns's interface name to bridge br in other through a veth
// pair whose other end is peer.
func (l *clusterLab) plug(t *testing.T, ns *nstest.NS, name string, other *nstest.NS, peer, br, cidr string) {
	t.Helper()
	runHost(t, "ip", "-n", ns.Name, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", other.Name)
	other.Run(t, "ip", "link", "set", peer, "master", br, "up")
	ns.Run(t, "ip", "addr", "add", cidr, "dev", name)
	ns.Run(t, "ip", "link", "set", name, "up")
	ns.WaitUp(t, name)
}

func runHost(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := execOut(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// clusterConfig is a handoff config for host n (1 or 2) of the lab, with
// services web (source) and game (payload) on vip, each over three
// backends, and the lab's cluster.
func clusterConfig(n int, vip netip.Addr, snat bool) string {
	fields := []string{"first_connection: proxy", fmt.Sprintf("snat: %t", snat), "client_ttl: 10m",
		"health: {check: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}", "balance: maglev"}
	names := []string{"be1", "be2", "be3"}
	cfg := daemonConfig{mode: "kernel", logLevel: "info", services: []service{
		{"web", netip.AddrPortFrom(vip, 80), fields, backends(ipv4, 80, names...)},
		{"game", netip.AddrPortFrom(vip, 7000), append(slices.Clone(fields), "classify: payload",
			`payload: {pattern: '^HELLO ([a-z0-9-]+)\n', max_bytes: 64, timeout: 2s}`), backends(ipv4, 7000, names...)},
	}}
	return cfg.String() + fmt.Sprintf(`cluster:
  name: e2e
  node: lb%d
  refresh_interval: 2s
  node_ttl: 3s
  etcd: {endpoints: [%q], dial_timeout: 1s}
`, n, etcdEndpoint)
}

// api GETs path from the admin API of the daemon in ns into v.
func api(t *testing.T, ns *nstest.NS, path string, v any) error {
	t.Helper()
	hc := http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: ns.Dial, DisableKeepAlives: true}}
	resp, err := hc.Get("http://127.0.0.1:9900" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

func clusterStatus(t *testing.T, ns *nstest.NS) cluster.Status {
	t.Helper()
	var st cluster.Status
	if err := api(t, ns, "/api/v1/cluster", &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// classified returns the new clients a host's listener classified, per
// service.
func classified(t *testing.T, ns *nstest.NS) map[string]uint64 {
	t.Helper()
	var st balancer.Status
	if err := api(t, ns, "/api/v1/status", &st); err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, s := range st.Services {
		for _, n := range s.Classified {
			out[s.Name] += n
		}
	}
	return out
}

// pinsOf returns the pins in ns, web's and game's: "SET CLIENT" → the
// pin's key comment.
func pinsOf(t *testing.T, ns *nstest.NS) map[string]string {
	t.Helper()
	out := map[string]string{}
	for set, es := range readSets(t, ns) {
		for _, e := range es {
			out[set+" "+e.member] = e.comment
		}
	}
	return out
}

// samePins waits until both hosts hold the same pins with the same key
// comments, n of them, and returns them.
func samePins(t *testing.T, l *clusterLab, n int, within time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		a, b := pinsOf(t, l.lb[0]), pinsOf(t, l.lb[1])
		if len(a) == n && len(b) == n && equalMaps(a, b) {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hosts' pins differ or are not %d after %v:\nlb1 %v\nlb2 %v", n, within, a, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// say connects from src to addr, sends hello (when not ""), and returns
// the backend's name from its greeting.
func say(ns *nstest.NS, src netip.Addr, addr netip.AddrPort, hello string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	c, err := ns.DialFrom(ctx, src, "tcp", addr.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(4 * time.Second))
	if hello != "" {
		if _, err := io.WriteString(c, hello); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if n == 0 {
		return "", fmt.Errorf("no greeting: %v", err)
	}
	name, _, _ := strings.Cut(string(buf[:n]), " ")
	return name, nil
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
