package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestClusterActiveActive: two handoff hosts behind a router's multipath
// route (L4 hash), snat: true, sharing pins through etcd. Every connection
// of a client reaches the same backend whichever host it hits, for a
// source-classified and a payload-classified service, and with
// first_connection: proxy no connection fails: while both hosts run, while
// etcd is down and after it returns (the hosts converge, no pin moves),
// while a backend dies during replication (both hosts move its clients to
// the same backends), and when a host is killed (the other has every pin)
// and a fresh one joins.
func TestClusterActiveActive(t *testing.T) {
	l := newClusterLab(t, 24)
	vip := netip.MustParseAddr("198.18.11.1")
	web, game := netip.AddrPortFrom(vip, 80), netip.AddrPortFrom(vip, 7000)
	l.rtr.Run(t, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1")
	l.rtr.Run(t, "ip", "route", "add", "198.18.11.1/32", "nexthop", "via", "198.18.10.11", "nexthop", "via", "198.18.10.12")
	var d [2]*daemon
	cfgs := [2]string{}
	for i, lb := range l.lb {
		lb.Run(t, "ip", "addr", "add", "198.18.11.1/32", "dev", "lo")
		cfgs[i] = writeConfig(t, yaml(clusterConfig(i+1, vip, true)))
		d[i] = startDaemon(t, lb, cfgs[i], web)
	}

	// want: client → backend, per service, once a client was seen.
	want := map[string]string{}
	var mu sync.Mutex
	key := func(i int) string { return fmt.Sprintf("station-%d", i%5) }
	// visit connects each client conns times to each service and checks
	// that each service's connections of a client all reach one backend,
	// the one it reached before.
	visit := func(phase string, from, to, conns int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, (to-from)*conns*2)
		for i := from; i < to; i++ {
			c := l.clients[i]
			wg.Go(func() {
				for range conns {
					for _, svc := range []struct {
						name  string
						addr  netip.AddrPort
						hello string
					}{{"web", web, ""}, {"game", game, "HELLO " + key(i) + "\n"}} {
						be, err := say(l.cli, c, svc.addr, svc.hello)
						if err != nil {
							errs <- fmt.Errorf("%s: client %s, %s: %v", phase, c, svc.name, err)
							continue
						}
						mu.Lock()
						k := svc.name + " " + c.String()
						if w, ok := want[k]; ok && w != be {
							errs <- fmt.Errorf("%s: client %s, %s: reached %s, before %s", phase, c, svc.name, be, w)
						}
						want[k] = be
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	// pinned checks that both hosts hold exactly the pins of want.
	pinned := func(within time.Duration) {
		t.Helper()
		pins := samePins(t, l, len(want), within)
		for k, be := range want {
			svc, client, _ := strings.Cut(k, " ")
			if _, ok := pins["ho-"+svc+"-"+be+" "+client]; !ok {
				t.Errorf("client %s of %s reached %s, but the hosts pin it elsewhere: %v", client, svc, be, pins)
			}
		}
	}

	visit("both hosts", 0, 8, 6)
	pinned(3 * time.Second)
	if a, b := classified(t, l.lb[0]), classified(t, l.lb[1]); a["web"]+b["web"] < 8 || a["web"] == 0 || b["web"] == 0 {
		t.Fatalf("classified on lb1 %v, lb2 %v: want both hosts hit", a, b)
	}

	// etcd down: both hosts keep serving and pinning, and say so.
	l.etcd.Stop()
	visit("etcd down", 8, 14, 4)
	for _, lb := range l.lb {
		waitUntil(t, time.Now(), 5*time.Second, "etcd unreachable in the status of "+lb.Name, func() bool { return !clusterStatus(t, lb).Etcd.Reachable })
	}
	l.etcd.Restart()
	pinned(10 * time.Second) // converged: the pins made meanwhile everywhere, none moved
	visit("etcd back", 0, 14, 2)

	// A backend dies while new clients are being pinned and replicated.
	var wg sync.WaitGroup
	wg.Go(func() { visit("backend dying", 14, 20, 3) })
	time.Sleep(100 * time.Millisecond)
	l.bk.Run(t, "ip", "addr", "del", "198.19.1.12/24", "dev", "back") // be2's host is gone
	wg.Wait()
	waitUntil(t, time.Now(), 5*time.Second, "no pin left on be2", func() bool {
		for _, lb := range l.lb {
			for k := range pinsOf(t, lb) {
				if strings.Contains(k, "-be2 ") {
					return false
				}
			}
		}
		return true
	})
	mu.Lock()
	for k, be := range want {
		if be == "be2" {
			delete(want, k) // its clients moved; visit learns where
		}
	}
	mu.Unlock()
	visit("after the backend died", 0, 20, 3)
	pinned(5 * time.Second)

	// A host dies; the router drops its route (as BGP would). The other
	// host has every pin; a fresh host joins and gets them all.
	d[1].cmd.Process.Signal(syscall.SIGKILL)
	<-d[1].done
	l.rtr.Run(t, "ip", "route", "replace", "198.18.11.1/32", "via", "198.18.10.11")
	visit("one host killed", 0, 20, 2)
	d[1] = startDaemon(t, l.lb[1], cfgs[1], web)
	l.rtr.Run(t, "ip", "route", "replace", "198.18.11.1/32", "nexthop", "via", "198.18.10.11", "nexthop", "via", "198.18.10.12")
	pinned(5 * time.Second)
	visit("host back", 0, 24, 3)
	pinned(5 * time.Second)
	st := clusterStatus(t, l.lb[0])
	if len(st.Nodes) != 2 || st.Applied == 0 || st.Published == 0 {
		t.Errorf("lb1's cluster status = %+v, want 2 nodes, pins published and applied", st)
	}
}
