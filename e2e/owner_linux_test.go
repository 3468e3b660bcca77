package e2e

// Scenarios of issue 16.2 (one owner) and 16.6 (racing first connections).

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// runBriefly runs `handoff ARGS...` in ns, which must end within 20s: a
// command that should refuse to start must not hang the test when it
// starts instead.
func runBriefly(t *testing.T, ns *nstest.NS, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, handoffBin}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("handoff %s did not end within 20s (it should have refused):\n%s", strings.Join(args, " "), e.String())
	}
	r := result{stdout: o.String(), stderr: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestOneOwner: a second `handoff run` with another config and state_dir
// in the same namespace refuses with the first one's PID, and so does one
// with the same state_dir in another namespace; `handoff cleanup` refuses
// while the daemon runs and works with --force; objects that merely carry
// handoff's prefixes (a chain HANDOFF-LOCAL with its jump, a set
// ho-foreign) are left alone by run and cleanup, and reported.
func TestOneOwner(t *testing.T) {
	l := newLab(t, 1, 1)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "be1")
	l.greeters(t, bes)
	lb := l.LB
	lb.Run(t, "iptables", "-t", "nat", "-N", "HANDOFF-LOCAL")
	lb.Run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "HANDOFF-LOCAL")
	lb.Run(t, "ipset", "create", "ho-foreign", "hash:ip")

	cfg := writeConfig(t, webConfig("kernel", vip, bes, "first_connection: proxy", "health: {check: none}"))
	d := startDaemon(t, lb, cfg, vip)
	pid := strconv.Itoa(d.cmd.Process.Pid)
	if _, err := l.greet(ipv4.client(0), vip); err != nil {
		t.Fatal(err)
	}

	foreignLeft := func(when string) {
		t.Helper()
		nat := lb.Run(t, "iptables-save", "-t", "nat")
		if !strings.Contains(nat, ":HANDOFF-LOCAL") || !strings.Contains(nat, "-A PREROUTING -p udp -j HANDOFF-LOCAL") {
			t.Fatalf("%s: the foreign chain HANDOFF-LOCAL or its jump is gone:\n%s", when, nat)
		}
		if _, err := lb.RunErr("ipset", "list", "-n", "ho-foreign"); err != nil {
			t.Fatalf("%s: the foreign set ho-foreign is gone", when)
		}
	}
	foreignLeft("after run")
	reported := false
	for _, f := range d.waitLines(5*time.Second, 1, "a chain named like handoff's is not in handoff's registry: left alone (handoff cleanup --prefixed removes it)", "chain", "*") {
		reported = reported || strings.HasSuffix(f["chain"], "HANDOFF-LOCAL")
	}
	if !reported {
		t.Error("run did not report the foreign chain HANDOFF-LOCAL")
	}
	if len(d.waitLines(5*time.Second, 1, "a set named like handoff's is not in handoff's registry: left alone (handoff cleanup --prefixed removes it)", "set", "ho-foreign")) == 0 {
		t.Error("run did not report the foreign set ho-foreign")
	}

	// Another config and state_dir, the same namespace.
	other := writeConfig(t, webConfig("kernel", ipv4.at(81), bes, "health: {check: none}"))
	if r := runBriefly(t, lb, "run", "-c", other); r.code == 0 || !strings.Contains(r.stderr, "PID "+pid) {
		t.Fatalf("a second run in the namespace: exit %d, want a refusal naming PID %s:\n%s", r.code, pid, r.stderr)
	}
	// The same state_dir, another namespace.
	elsewhere := nstest.New(t, "hoelse")
	sameDir := strings.Replace(cfg, "handoff.yaml", "other.yaml", 1)
	rewriteConfig(t, sameDir, webConfig("userspace", netip.MustParseAddrPort("127.0.0.1:8080"), []backend{{"be1", netip.MustParseAddrPort("127.0.0.1:8081")}}))
	if r := runBriefly(t, elsewhere, "run", "-c", sameDir); r.code == 0 || !strings.Contains(r.stderr, "PID "+pid) || !strings.Contains(r.stderr, "state_dir") {
		t.Fatalf("a run with the same state_dir in another namespace: exit %d, want a refusal naming the state_dir and PID %s:\n%s", r.code, pid, r.stderr)
	}
	if !strings.Contains(d.log(), "msg=serving") || strings.Contains(d.log(), "level=fatal") {
		t.Fatal("the first daemon was disturbed")
	}

	// cleanup refuses while the daemon runs, and takes nothing.
	if r := runBriefly(t, lb, "cleanup"); r.code == 0 || !strings.Contains(r.stderr, "PID "+pid) {
		t.Fatalf("cleanup with a daemon running: exit %d, want a refusal naming PID %s:\n%s", r.code, pid, r.stderr)
	}
	if sets := readSets(t, lb); len(sets.members(ipv4.set("web", "be1"))) != 1 {
		t.Fatalf("a refused cleanup changed the pins: %v", sets)
	}
	if r := runBriefly(t, lb, "cleanup", "--force"); r.code != 0 {
		t.Fatalf("cleanup --force: exit %d:\n%s", r.code, r.stderr)
	}
	if _, err := lb.RunErr("ipset", "list", "-n", ipv4.set("web", "be1")); err == nil {
		t.Error("cleanup --force left handoff's set")
	}
	foreignLeft("after cleanup --force")
}

// TestRacingFirstConnectionsOnePin: 50 new clients each open several
// connections at once, to a service of every policy, in kernel and in
// userspace mode; every client ends with exactly one pin.
func TestRacingFirstConnectionsOnePin(t *testing.T) {
	policies := []string{"maglev", "source-hash", "round-robin", "random", "hot-standby", "least-conn"}
	const clients, parallel = 50, 4
	for _, mode := range []string{"kernel", "userspace"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 3, clients)
			bes := backends(ipv4, 80, "be1", "be2", "be3")
			l.greeters(t, bes)
			cfg := daemonConfig{mode: mode, logLevel: "info"}
			for i, p := range policies {
				cfg.services = append(cfg.services, service{name: "s" + strconv.Itoa(i), listen: ipv4.at(uint16(8000 + i)),
					fields: []string{"first_connection: proxy", "health: {check: none}", "balance: " + p}, backends: bes})
			}
			d := startDaemon(t, l.LB, writeConfig(t, cfg), ipv4.at(8000))
			waitListen(t, l.LB, ipv4.at(uint16(8000+len(policies)-1)))
			api := newAdminAPI(t, l.LB, adminListen, "")
			for i, p := range policies {
				svc, vip := "s"+strconv.Itoa(i), ipv4.at(uint16(8000+i))
				var wg sync.WaitGroup
				errs := make(chan error, clients*parallel)
				for _, c := range l.clients(ipv4) {
					for range parallel {
						wg.Go(func() {
							if _, err := l.greet(c, vip); err != nil {
								errs <- fmt.Errorf("client %s: %w", c, err)
							}
						})
					}
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Errorf("%s: %v", p, err)
				}
				pins := map[string][]string{}
				var list []balancer.ClientPin
				api.must(200, "GET", "/api/v1/services/"+svc+"/clients", nil, &list)
				for _, pn := range list {
					pins[pn.Client] = append(pins[pn.Client], pn.Backend)
				}
				if mode == "kernel" {
					// The sets themselves, not the API's view of them.
					sets := readSets(t, l.LB)
					pins = map[string][]string{}
					for _, be := range bes {
						for _, m := range sets.members(ipv4.set(svc, be.name)) {
							pins[m] = append(pins[m], be.name)
						}
					}
				}
				for _, c := range l.clients(ipv4) {
					if n := len(pins[c.String()]); n != 1 {
						t.Errorf("%s (%s): client %s has %d pins %v, want 1", p, mode, c, n, pins[c.String()])
					}
				}
			}
			if strings.Contains(d.log(), raceReport) {
				t.Fatal("data race")
			}
		})
	}
}
