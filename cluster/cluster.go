// Package cluster shares the pins and the runtime state of several handoff
// hosts through etcd (DESIGN.md §8, docs/cluster.md).
//
// A Node is the engine's balancer.Replicator: every pin the engine makes,
// moves or removes, and every change made through its API, is queued and
// written to etcd in batched transactions; pins go under shared leases, so
// etcd expires them. The Node watches the cluster's keys and applies the
// other hosts' changes through the engine (Engine), never to the kernel
// itself. It keeps the pins of clients this host forwards alive in etcd,
// reading their refreshed timeouts from the data plane in batches.
//
// etcd is optional at runtime: while it cannot be reached the engine keeps
// serving from its local state, the Node queues what it must write, says
// so once in the log, in its Status and in the metrics, and publishes the
// queue when etcd returns.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// Engine is what a Node needs of the balancer's engine: applying the other
// hosts' changes, and reading this host's state. *balancer.Engine
// implements it.
type Engine interface {
	Applier
	// Runtime returns the engine's runtime state (published at start when
	// the cluster has none yet).
	Runtime() balancer.Runtime
	// PinReader reads the data plane's pins with their remaining lifetime.
	PinReader() balancer.PinReader
	// Services returns the running services' names and client TTLs.
	Services() map[string]time.Duration
	// State tells when the engine serves (pins are applied from then on).
	State() balancer.State
}

// Applier applies other hosts' changes to this host.
type Applier interface {
	ApplyPins(ctx context.Context, pins []balancer.RemotePin) (balancer.Applied, error)
	ApplyUnpins(ctx context.Context, pins []dataplane.Pin) error
	RemoveLeftovers(ctx context.Context, pins []dataplane.Pin, stale func(dataplane.Pin) bool) error
	ApplyRuntime(ctx context.Context, state func() (balancer.Runtime, bool)) error
	Renew(service, backend string, ttl time.Duration) error
}

// Options configure a Node. Config is required.
type Options struct {
	Config  *config.Cluster
	Logger  *logrus.Entry
	Version string // reported in the node's key
	// Now is the clock; nil means time.Now. Hosts compare pin expiries in
	// wall-clock time, so their clocks must agree within about a second
	// (NTP).
	Now func() time.Time
}

// Node is this host's member of a cluster. Create it with New, hand it to
// the engine as its Replicator, then Run it.
type Node struct {
	cfg     config.Cluster
	k       keys
	log     *logrus.Entry
	version string
	now     func() time.Time
	cli     *clientv3.Client

	mu       sync.Mutex
	local    map[pinKey]localPin // the pins this host's data plane holds, as far as the Node knows
	pending  map[string]op       // etcd writes waiting for the next batch, by key
	spare    map[string]op       // an empty map for the next queue
	inflight int                 // writes taken from the queue and not finished
	// held are keys written by this host whose change the watch has not
	// delivered yet: the revision of the write, 0 while it is in flight.
	// Until then etcd's older values of those keys are not applied here.
	held  map[string]int64
	heldQ []heldKey // the held keys with a revision, in commit order
	// deferred are other hosts' writes of clients whose write by this host
	// was in flight when the watch delivered them, by key.
	deferred map[string]deferredEvent
	runtime  map[string]runtimeValue // the runtime keys as last seen in etcd
	rt       balancer.Runtime        // the engine's runtime state as last reported
	rtDirty  bool                    // another host changed the runtime state since it was last applied
	kick     chan struct{}           // a write is pending

	boot    int64                                    // when the Node was made (Unix ns): names its pages
	pageSeq atomic.Uint64                            // the last page written
	ttls    atomic.Pointer[map[string]time.Duration] // the services' client TTLs, as last read
	leases  leaseCache
	health  health
	stats   stats
	nodes   atomic.Pointer[[]NodeStatus]
	applied atomic.Int64 // the etcd revision applied up to
	etcdRev atomic.Int64 // the newest etcd revision seen
	started time.Time
}

// localPin is a pin of this host's data plane as the Node knows it.
type localPin struct {
	backend   string
	key       string
	expires   int64  // as etcd has it (or will): Unix ms; 0: never
	refreshed int64  // the expiry this host's data plane gave at the last refresh pass
	page      string // the page that holds etcd's value of it ("" for a key of its own)
}

// op is one pending etcd write: a put (value set) or a delete of a key,
// or an entry of a page (entry set).
type op struct {
	value  []byte
	del    bool
	queued time.Time
	entry  *pageEntry // a pin that expires (or its tombstone): written into a page
}

// expires is when the pin of an entry expires (Unix ms, its lease's
// bucket); 0 for a key of its own, which has no lease.
func (o op) expires() int64 {
	if o.entry == nil {
		return 0
	}
	return o.entry.v.Expires
}

// New builds a Node and its etcd client; it connects lazily, so a Node
// starts while etcd is down.
func New(o Options) (*Node, error) {
	if o.Config == nil {
		return nil, errors.New("cluster: Config is required")
	}
	n := &Node{
		cfg:      *o.Config,
		k:        newKeys(o.Config.Etcd.Prefix, o.Config.Name),
		log:      o.Logger,
		version:  o.Version,
		now:      o.Now,
		local:    map[pinKey]localPin{},
		pending:  map[string]op{},
		held:     map[string]int64{},
		deferred: map[string]deferredEvent{},
		runtime:  map[string]runtimeValue{},
		kick:     make(chan struct{}, 1),
		boot:     time.Now().UnixNano(),
	}
	if n.log == nil {
		n.log = logrus.NewEntry(logrus.StandardLogger())
	}
	n.log = n.log.WithFields(logrus.Fields{"component": "cluster", "cluster": n.cfg.Name, "node": n.cfg.Node})
	if n.now == nil {
		n.now = time.Now
	}
	tc, err := tlsConfig(n.cfg.Etcd)
	if err != nil {
		return nil, err
	}
	n.cli, err = clientv3.New(clientv3.Config{
		Endpoints:            n.cfg.Etcd.Endpoints,
		DialTimeout:          n.cfg.Etcd.DialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: n.cfg.Etcd.DialTimeout,
		TLS:                  tc,
		Logger:               zap.NewNop(),
		MaxCallRecvMsgSize:   256 << 20, // a join reads pages of pins
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: etcd client: %w", err)
	}
	n.health.init(n.log)
	return n, nil
}

// tlsConfig builds the etcd client's TLS settings; nil when no endpoint
// is https and no file is given.
func tlsConfig(e config.Etcd) (*tls.Config, error) {
	https := false
	for _, ep := range e.Endpoints {
		if len(ep) > 8 && ep[:8] == "https://" {
			https = true
		}
	}
	if !https && e.CAFile == "" && e.CertFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CAFile != "" {
		pem, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cluster.etcd.tls.ca_file %s: no PEM certificate", e.CAFile)
		}
	}
	if e.CertFile != "" {
		c, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cluster.etcd.tls: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// Close releases the etcd client. Call it after Run returned.
func (n *Node) Close() error { return n.cli.Close() }

// Run replicates until ctx ends: it publishes what the engine reports,
// applies the other hosts' changes through eng once eng serves, keeps this
// host's forwarded pins alive in etcd and its node key current. It returns
// when ctx ends; etcd being unreachable is not an error (see Status).
func (n *Node) Run(ctx context.Context, eng Engine) error {
	n.started = n.now()
	for eng.State() != balancer.StateServing {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
	ttls := eng.Services()
	n.ttls.Store(&ttls)
	var wg sync.WaitGroup
	wg.Go(func() { n.publishLoop(ctx, eng) })
	wg.Go(func() { n.watchLoop(ctx, eng) })
	wg.Go(func() { n.refreshLoop(ctx, eng) })
	wg.Go(func() { n.nodeLoop(ctx, eng) })
	wg.Wait()
	return nil
}

// Pinned implements balancer.Replicator: the pins are queued for etcd.
func (n *Node) Pinned(pins []dataplane.Pin) {
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range pins {
		pk := pinKey{p.Service, p.Client.Unmap()}
		lp := localPin{backend: p.Backend, key: p.Key}
		if p.TTL > 0 {
			lp.expires = now.Add(p.TTL).UnixMilli()
		}
		n.local[pk] = lp
		n.queuePinLocked(pk, lp, now)
	}
	n.kickLocked()
}

// queuePinLocked queues the put of a pin this host holds; mu is held. A
// pin that expires goes into a page, one that never does into a key of
// its own (a page would outlive its pins: it has no lease).
func (n *Node) queuePinLocked(pk pinKey, lp localPin, now time.Time) {
	v := pinValue{Backend: lp.backend, Key: lp.key, Expires: lp.expires, Node: n.cfg.Node, Written: now.UnixMilli()}
	o := op{queued: now}
	if lp.expires != 0 {
		o.entry = &pageEntry{pk: pk, v: v}
	} else {
		o.value = v.encode()
	}
	n.pending[n.k.pin(pk.service, pk.client)] = o
	n.stats.queued.Add(1)
}

// queueUnpinLocked queues the removal of a pin from etcd; mu is held. A
// pin that expires is removed by a tombstone in a page. The tombstone
// lives as long as any older entry of the client may: until the pin's
// expiry, or one client TTL from now if that is later (another host may
// have written a later expiry that this host has not applied yet). A pin
// that never expires is removed by deleting its key.
func (n *Node) queueUnpinLocked(pk pinKey, lp localPin, now time.Time) {
	o := op{del: true, queued: now}
	if lp.expires != 0 {
		expires := lp.expires
		if ttls := n.ttls.Load(); ttls != nil && (*ttls)[pk.service] > 0 {
			expires = max(expires, now.Add((*ttls)[pk.service]).UnixMilli())
		}
		o.entry = &pageEntry{pk: pk, del: true, v: pinValue{Expires: expires, Node: n.cfg.Node, Written: now.UnixMilli()}}
	}
	n.pending[n.k.pin(pk.service, pk.client)] = o
}

// Unpinned implements balancer.Replicator: the pin is deleted from etcd
// unless the client has moved to another backend since.
func (n *Node) Unpinned(service, backend string, client netip.Addr) {
	pk := pinKey{service, client.Unmap()}
	n.mu.Lock()
	defer n.mu.Unlock()
	lp, ok := n.local[pk]
	if !ok || lp.backend != backend {
		return
	}
	delete(n.local, pk)
	n.queueUnpinLocked(pk, lp, n.now())
	n.kickLocked()
}

// Flushed implements balancer.Replicator: every pin of the backend this
// host knows of is deleted from etcd.
func (n *Node) Flushed(service, backend string) {
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for pk, lp := range n.local {
		if pk.service == service && lp.backend == backend {
			delete(n.local, pk)
			n.queueUnpinLocked(pk, lp, now)
		}
	}
	n.kickLocked()
}

// RuntimeChanged implements balancer.Replicator: what the change made
// differ from the engine's previous state is written or deleted. Only the
// change is published, never the whole state: another host's change that
// this host has not applied yet is not undone.
func (n *Node) RuntimeChanged(rt balancer.Runtime) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.queueRuntimeLocked(n.runtimeItems(n.rt), n.runtimeItems(rt))
	n.rt = rt
	n.kickLocked()
}

// Renewed implements balancer.Replicator: the heartbeat is written, and
// every other host renews the backend's TTL when it sees it.
func (n *Node) Renewed(service, backend string, ttl time.Duration) {
	b, _ := jsonMarshal(runtimeValue{Node: n.cfg.Node, TTL: ttl.String()})
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pending[n.k.heartbeat(service, backend)] = op{value: b, queued: n.now()}
	n.kickLocked()
}

// runtimeItems maps rt to the etcd keys and values that hold it.
func (n *Node) runtimeItems(rt balancer.Runtime) map[string]runtimeValue {
	items := map[string]runtimeValue{}
	for _, r := range rt.Registrations {
		reg := r
		items[n.k.registration(r.Service, r.Name)] = runtimeValue{Node: n.cfg.Node, Registration: &reg}
	}
	for _, d := range rt.Drains {
		items[n.k.drain(d.Service, d.Backend)] = runtimeValue{Node: n.cfg.Node}
	}
	for _, s := range rt.Closed {
		items[n.k.closed(s)] = runtimeValue{Node: n.cfg.Node}
	}
	return items
}

// queueRuntimeLocked queues the writes of what changed from before to
// after; mu is held.
func (n *Node) queueRuntimeLocked(before, after map[string]runtimeValue) {
	now := n.now()
	for key, v := range after {
		if old, ok := before[key]; ok && sameRuntime(old, v) {
			continue
		}
		b, _ := jsonMarshal(v)
		n.pending[key] = op{value: b, queued: now}
	}
	for key := range before {
		if _, ok := after[key]; !ok {
			n.pending[key] = op{del: true, queued: now}
		}
	}
}

func (n *Node) kickLocked() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

var _ balancer.Replicator = (*Node)(nil)
