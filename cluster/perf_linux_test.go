package cluster_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/etcdtest"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
	"github.com/handoff-lb/handoff/kernel"
	"github.com/handoff-lb/handoff/proxy"
)

// kernelHost is a cluster host over the kernel data plane in a namespace
// of its own.
type kernelHost struct {
	ns    *nstest.NS
	log   *logrus.Entry
	dp    *kernel.Dataplane
	eng   *balancer.Engine
	node  *cluster.Node
	probe *probe
	hostRun
}

// probe wraps the engine the Node applies through and records when each
// client's pin was in this host's sets.
type probe struct {
	*balancer.Engine
	mu      sync.Mutex
	applied map[netip.Addr]time.Time
}

func (p *probe) ApplyPins(ctx context.Context, pins []balancer.RemotePin) (balancer.Applied, error) {
	res, err := p.Engine.ApplyPins(ctx, pins)
	now := time.Now()
	p.mu.Lock()
	for _, rp := range pins {
		if _, ok := p.applied[rp.Client]; !ok {
			p.applied[rp.Client] = now
		}
	}
	p.mu.Unlock()
	return res, err
}

const perfYAML = `admin: {listen: off}
log: {summary_interval: 0s, level: warn}
mode: kernel
services:
  - name: web
    listen: 198.18.200.1:80
    client_ttl: 1h
    max_clients: 1048576
    health: {check: none}
    balance: maglev
    backends:
      - {name: be1, address: 198.19.200.11:80}
      - {name: be2, address: 198.19.200.12:80}
  - name: six
    listen: "[2001:2:200::1]:80"
    client_ttl: 1h
    max_clients: 1048576
    health: {check: none}
    balance: maglev
    backends:
      - {name: be1, address: "[2001:2:201::11]:80"}
      - {name: be2, address: "[2001:2:201::12]:80"}
cluster:
  name: perf
  node: %s
  refresh_interval: 1m
  etcd: {endpoints: [%q], prefix: /perf}
`

func startKernelHost(t *testing.T, etcd *etcdtest.Server, name string) *kernelHost {
	t.Helper()
	cfg, err := config.Parse(name, []byte(fmt.Sprintf(perfYAML, name, etcd.Endpoint)))
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	entry := logrus.NewEntry(log).WithField("host", name)
	h := &kernelHost{ns: nstest.New(t, name), log: entry}
	if h.dp, err = kernel.New(context.Background(), kernel.Options{NetNS: h.ns.Path, Logger: entry}); err != nil {
		t.Fatal(err)
	}
	if h.node, err = cluster.New(cluster.Options{Config: cfg.Cluster, Logger: entry}); err != nil {
		t.Fatal(err)
	}
	h.eng, err = balancer.New(balancer.Options{Config: cfg, Dataplane: h.dp, Kernel: true, Logger: entry, Replicator: h.node,
		Listen: func(ctx context.Context, network, addr string) (ln net.Listener, err error) {
			err = h.ns.Do(func() error { ln, err = proxy.ListenFreebind(ctx, network, addr); return err })
			return ln, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	h.probe = &probe{Engine: h.eng, applied: map[netip.Addr]time.Time{}}
	h.run(t, name, h.eng, h.node, h.probe, 10*time.Second, func() {
		kernel.Cleanup(context.Background(), kernel.Options{NetNS: h.ns.Path, Logger: h.log})
		h.dp.Close()
	})
	return h
}

// makePins pins clients on h as the engine pins new clients (the data
// plane, then the Replicator), at rate per second; it returns when each
// client was pinned.
func (h *kernelHost) makePins(t *testing.T, service string, clients []netip.Addr, rate int) map[netip.Addr]time.Time {
	t.Helper()
	made := make(map[netip.Addr]time.Time, len(clients))
	start := time.Now()
	const chunk = 50
	for i := 0; i < len(clients); i += chunk {
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		time.Sleep(time.Until(due))
		batch := make([]dataplane.Pin, 0, chunk)
		for _, c := range clients[i:min(i+chunk, len(clients))] {
			batch = append(batch, dataplane.Pin{Service: service, Backend: []string{"be1", "be2"}[len(batch)%2], Client: c, Key: "src=" + c.String(), TTL: time.Hour})
		}
		if err := h.dp.PinBatch(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		h.node.Pinned(batch)
		now := time.Now()
		for _, p := range batch {
			made[p.Client] = now
		}
	}
	return made
}

func (h *kernelHost) count(t *testing.T, service string) int {
	t.Helper()
	m, err := h.dp.Count(context.Background(), service)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}

// etcdAlone measures what etcd takes by itself on this machine: total
// pin-sized puts under a lease, in transactions of 128, 8 in flight, with
// three watchers of the prefix (as three hosts watch).
func etcdAlone(t *testing.T, total int) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lease, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	const perTxn, inFlight = 128, 8
	var seen [3]atomic.Int64
	for w := range seen {
		go func() {
			for r := range cli.Watch(ctx, "/alone/", clientv3.WithPrefix(), clientv3.WithRev(lease.Revision+1)) {
				seen[w].Add(int64(len(r.Events)))
			}
		}()
	}
	val := "h1 be1 1800000000000 1800000000000 pa src=2001:2:1::1234"
	starts := make(chan int)
	go func() {
		for i := 0; i < total; i += perTxn {
			starts <- i
		}
		close(starts)
	}()
	cpu0 := procCPU(etcd.Pid())
	start := time.Now()
	var wg sync.WaitGroup
	for range inFlight {
		wg.Go(func() {
			for i := range starts {
				ops := make([]clientv3.Op, 0, perTxn)
				for j := i; j < i+perTxn; j++ {
					ops = append(ops, clientv3.OpPut(fmt.Sprintf("/alone/six/2001:2:1::%x", j), val, clientv3.WithLease(lease.ID)))
				}
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for w := range seen {
		for seen[w].Load() < int64(total) && time.Since(start) < time.Minute {
			time.Sleep(10 * time.Millisecond)
		}
		if n := seen[w].Load(); n < int64(total) {
			t.Errorf("etcd alone: watcher %d saw %d of %d writes within a minute", w, n, total)
		}
	}
	took := time.Since(start)
	t.Logf("etcd alone: %d key writes, each seen by 3 watchers, in %v: %.0f writes/s, %.1f µs of etcd CPU each",
		total, took.Round(time.Millisecond), float64(total)/took.Seconds(), float64((procCPU(etcd.Pid())-cpu0).Microseconds())/float64(total))
	etcd.Stop()
}

// selfCPU is this process's CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is the CPU time of process pid, from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * 10 * time.Millisecond
}

func v4Clients(from, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		x := from + i
		out[i] = netip.AddrFrom4([4]byte{198, 18 + byte(x>>16&1), byte(x >> 8), byte(x)})
	}
	return out
}

func v6Clients(host byte, n int) []netip.Addr {
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 0, host, 0, 0, 0, 0, 0, 0, byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)})
	}
	return out
}

// TestPerfCluster measures replication on the kernel data plane with a
// real etcd (root): the time from a pin made on one host to its presence
// in the other's sets while 5,000 new clients/s arrive; how long a joining
// host takes to have 100,000 pins in its sets; and the pins per second two
// hosts publish and apply without etcd falling behind, with the etcd
// writes they cost. Those sizes and the time targets hold under
// HANDOFF_PERF=1; without it the same steps run at a tenth of the rates
// and a twentieth of the pins, and only what must arrive is checked.
func TestPerfCluster(t *testing.T) {
	nstest.RequireRoot(t)
	type sizes struct{ alone, lagRate, lagPins, joinPins, perHost, secs int }
	sz := sizes{alone: 10000, lagRate: 500, lagPins: 1000, joinPins: 5000, perHost: 2500, secs: 2}
	if testenv.Perf() {
		sz = sizes{alone: 200000, lagRate: 5000, lagPins: 25000, joinPins: 100000, perHost: 30000, secs: 8}
	}
	etcdAlone(t, sz.alone)
	etcd := etcdtest.Start(t, etcdtest.Options{})
	a := startKernelHost(t, etcd, "pa")
	b := startKernelHost(t, etcd, "pb")

	// b has read the cluster's state and its watch delivers: the lag is
	// the steady state's (a host's join is measured below).
	warm := v4Clients(1<<17-1, 1) // 198.19.255.255, beyond the clients below
	a.makePins(t, "web", warm, 1)
	waitFor(t, 10*time.Second, "a first pin on b", func() bool { return b.count(t, "web") == 1 })

	// 1. Lag at 5,000 new clients/s for 5 s.
	clients := v4Clients(0, sz.lagPins)
	made := a.makePins(t, "web", clients, sz.lagRate)
	waitFor(t, 10*time.Second, "every pin on b", func() bool { return b.count(t, "web") >= len(clients)+1 })
	var lags []time.Duration
	b.probe.mu.Lock()
	for c, at := range made {
		lags = append(lags, b.probe.applied[c].Sub(at))
	}
	b.probe.mu.Unlock()
	slices.Sort(lags)
	q := func(f float64) time.Duration { return lags[int(f*float64(len(lags)-1))] }
	t.Logf("lag at %d pins/s (%d pins): p50 %v, p99 %v, max %v", sz.lagRate, len(lags), q(.5).Round(time.Microsecond), q(.99).Round(time.Microsecond), lags[len(lags)-1].Round(time.Microsecond))
	if testenv.Perf() && q(.99) > 100*time.Millisecond {
		t.Errorf("p99 lag %v > 100ms", q(.99))
	}

	// 2. A host joins a cluster holding 100,000 pins.
	more := v4Clients(sz.lagPins, sz.joinPins-sz.lagPins)
	a.makePins(t, "web", more, 50000)
	waitFor(t, 20*time.Second, "every pin published", func() bool {
		st, _ := a.node.Status(context.Background())
		return st.Pending == 0 && st.Published >= uint64(sz.joinPins)
	})
	start := time.Now()
	c := startKernelHost(t, etcd, "pc")
	waitFor(t, 20*time.Second, "every pin on the joining host", func() bool { return c.count(t, "web") >= sz.joinPins })
	join := time.Since(start)
	t.Logf("join: %d pins in the new host's sets %v after it started (engine start included)", sz.joinPins, join.Round(time.Millisecond))
	if testenv.Perf() && join > 2*time.Second {
		t.Errorf("join took %v > 2s", join)
	}

	c.stop()

	// 3. Throughput: a and b are offered 30,000 new pins/s each for 8 s
	// (more than the 50,000/s target in all, so the generator does not cap
	// the figure at the target).
	stA0, _ := a.node.Status(context.Background())
	stB0, _ := b.node.Status(context.Background())
	perHost, secs := sz.perHost, sz.secs
	cpu0, etcd0 := selfCPU(), procCPU(etcd.Pid())
	start = time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { a.makePins(t, "six", v6Clients(1, perHost*secs), perHost) })
	wg.Go(func() { b.makePins(t, "six", v6Clients(2, perHost*secs), perHost) })
	wg.Wait()
	gen := time.Since(start)
	waitFor(t, 30*time.Second, "both hosts' queues empty", func() bool {
		sa, _ := a.node.Status(context.Background())
		sb, _ := b.node.Status(context.Background())
		return sa.Pending == 0 && sb.Pending == 0
	})
	drained := time.Since(start)
	waitFor(t, 30*time.Second, "every pin on every host", func() bool {
		return a.count(t, "six") >= 2*perHost*secs && b.count(t, "six") >= 2*perHost*secs
	})
	all := time.Since(start)
	t.Logf("CPU during it: handoff hosts %.1fs, etcd %.1fs over %v", (selfCPU() - cpu0).Seconds(), (procCPU(etcd.Pid()) - etcd0).Seconds(), all.Round(time.Millisecond))
	stA, _ := a.node.Status(context.Background())
	stB, _ := b.node.Status(context.Background())
	writes := stA.Writes - stA0.Writes + stB.Writes - stB0.Writes
	txns := stA.Txns - stA0.Txns + stB.Txns - stB0.Txns
	pins := 2 * perHost * secs
	t.Logf("throughput: %d pins made in %v (%.0f/s); published by %v (%.0f/s): %d etcd key writes in %d transactions (%.0f writes/s, %.0f txns/s); in both hosts' sets by %v (%.0f/s)",
		pins, gen.Round(time.Millisecond), float64(pins)/gen.Seconds(), drained.Round(time.Millisecond), float64(pins)/drained.Seconds(),
		writes, txns, float64(writes)/drained.Seconds(), float64(txns)/drained.Seconds(), all.Round(time.Millisecond), float64(pins)/all.Seconds())
	if rate := float64(pins) / drained.Seconds(); testenv.Perf() && rate < 50000 {
		t.Errorf("%.0f pins/s published, below the 50,000 pins/s target", rate)
	}
}
