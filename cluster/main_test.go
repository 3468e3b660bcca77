package cluster_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"go.uber.org/goleak"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/fallback"
	"github.com/handoff-lb/handoff/internal/etcdtest"
	"github.com/handoff-lb/handoff/internal/nstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"))
}

// backend is a loopback server that answers each connection with its name.
type backend struct {
	name string
	ln   net.Listener
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln := nstest.ServeLoopback(t, func(c net.Conn) { fmt.Fprintf(c, "%s\n", name) })
	return &backend{name: name, ln: ln}
}

// stop takes the backend down: it refuses new connections, and its port
// stays held (holdPort), so the backend never seems to come back.
func (b *backend) stop(t *testing.T) {
	t.Helper()
	addr := b.ln.Addr().(*net.TCPAddr).AddrPort()
	b.ln.Close()
	holdPort(t, addr)
}

// host is one handoff host of a test cluster: a real engine over the
// userspace data plane, and its Node.
type host struct {
	name string
	eng  *balancer.Engine
	node *cluster.Node
	dp   *fallback.Dataplane
	port int
	logs *logtest.Hook // everything the host logged, info and up
	hostRun
}

// hostRun runs the engine and the Node of a test host until stop.
type hostRun struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	close  func() // closes the Node and the data plane once both stopped
}

// run starts eng and node, whose Run applies through apply (the engine or
// a wrapper of it), stops them when the test ends and waits up to wait for
// the engine to serve; closeDP closes the data plane after them. An error
// of the engine's Run fails the test.
func (r *hostRun) run(t *testing.T, name string, eng *balancer.Engine, node *cluster.Node, apply cluster.Engine, wait time.Duration, closeDP func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.close = func() {
		node.Close()
		closeDP()
	}
	r.wg.Go(func() {
		if err := eng.Run(ctx); err != nil {
			t.Errorf("%s: Run: %v", name, err)
		}
	})
	r.wg.Go(func() { node.Run(ctx, apply) })
	t.Cleanup(r.stop)
	waitFor(t, wait, name+" serving", func() bool { return eng.State() == balancer.StateServing })
}

// stop ends the host as a crash would leave etcd: its pins stay there.
func (r *hostRun) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.wg.Wait()
	r.close()
	r.cancel = nil
}

// spec is the test cluster's service config; %d is the listen port, the
// backends follow.
type spec struct {
	ttl      string
	down     string // on_backend_down
	balance  string
	backends []*backend
	interval string // health interval
}

func (s spec) yaml(port int, cl string) string {
	var b strings.Builder
	// Userspace: the backends listen on loopback, which kernel mode
	// refuses (DNAT cannot reach it).
	fmt.Fprintf(&b, "mode: userspace\nadmin: {listen: off}\nlog: {summary_interval: 0s}\nservices:\n  - name: web\n    listen: 127.0.0.1:%d\n    client_ttl: %s\n    first_connection: proxy\n    on_backend_down: %s\n", port, s.ttl, s.down)
	// The backends the tests take down refuse connections, which fails a
	// check at once: the timeout only decides when a live backend counts
	// as dead, so it is the whole interval, and one check lost to a
	// loaded machine (a loopback connect starved past it) is no failure.
	fmt.Fprintf(&b, "    health: {check: tcp, interval: %s, timeout: %s, rise: 1, fall: 2}\n", s.interval, s.interval)
	fmt.Fprintf(&b, "    balance: %s\n    backends:\n", s.balance)
	for _, be := range s.backends {
		fmt.Fprintf(&b, "      - {name: %s, address: %s}\n", be.name, be.ln.Addr())
	}
	return b.String() + cl
}

func newSpec(t *testing.T, n int) spec {
	s := spec{ttl: "1h", down: "rehash", balance: "maglev", interval: "250ms"}
	for i := range n {
		s.backends = append(s.backends, startBackend(t, fmt.Sprintf("be%d", i+1)))
	}
	return s
}

func clusterYAML(etcd, node string) string {
	return fmt.Sprintf("cluster:\n  name: test\n  node: %s\n  refresh_interval: 1s\n  node_ttl: 3s\n  etcd: {endpoints: [%q], prefix: /t, dial_timeout: 1s}\n", node, etcd)
}

// startPair starts etcd, n backends and two hosts, a and b, that serve
// them.
func startPair(t *testing.T, n int) (etcd *etcdtest.Server, s spec, a, b *host) {
	t.Helper()
	etcd = etcdtest.Start(t, etcdtest.Options{})
	s = newSpec(t, n)
	return etcd, s, startHost(t, etcd, "a", s), startHost(t, etcd, "b", s)
}

func startHost(t *testing.T, etcd *etcdtest.Server, name string, s spec) *host {
	t.Helper()
	h := &host{name: name, port: int(nstest.FreeAddr(t).Port())}
	cfg, err := config.Parse(name+".yaml", []byte(s.yaml(h.port, clusterYAML(etcd.Endpoint, name))))
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetLevel(logrus.InfoLevel)
	if !testing.Verbose() {
		log.SetOutput(io.Discard)
	}
	h.logs = logtest.NewLocal(log)
	entry := logrus.NewEntry(log).WithField("host", name)
	h.node, err = cluster.New(cluster.Options{Config: cfg.Cluster, Logger: entry})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h.dp, err = fallback.New(fallback.Options{StateDir: dir, Logger: entry})
	if err != nil {
		t.Fatal(err)
	}
	h.eng, err = balancer.New(balancer.Options{Config: cfg, Dataplane: h.dp, Logger: entry, StateDir: dir, Replicator: h.node})
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, name, h.eng, h.node, h.eng, 5*time.Second, func() { h.dp.Close() })
	return h
}

// pin returns the host's pin of client, if any.
func (h *host) pin(t *testing.T, client string) (dataplane.Pin, bool) {
	t.Helper()
	p, ok, err := h.dp.Lookup(context.Background(), "web", netip.MustParseAddr(client))
	if err != nil {
		t.Fatal(err)
	}
	return p, ok
}

// pins returns the host's pins by client.
func (h *host) pins(t *testing.T) map[string]dataplane.Pin {
	t.Helper()
	out := map[string]dataplane.Pin{}
	err := h.dp.Pins(context.Background(), "web", "", func(p dataplane.Pin) error {
		out[p.Client.String()] = p
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// health returns the host's view of backend's health: "up" or "down".
func (h *host) health(t *testing.T, backend string) string {
	t.Helper()
	st, err := h.eng.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range st.Services {
		for _, be := range svc.Backends {
			if svc.Name == "web" && be.Name == backend {
				return be.Health
			}
		}
	}
	t.Fatalf("%s: no backend %s in service web", h.name, backend)
	return ""
}

// logged counts the entries the host logged with message msg.
func (h *host) logged(msg string) int {
	n := 0
	for _, e := range h.logs.AllEntries() {
		if e.Message == msg {
			n++
		}
	}
	return n
}

// ask connects to the host's listener and returns the backend's name.
func (h *host) ask(t *testing.T) string {
	t.Helper()
	return h.askFrom(t, "127.0.0.1")
}

// askFrom is ask from the loopback address src.
func (h *host) askFrom(t *testing.T, src string) string {
	t.Helper()
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", h.port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
