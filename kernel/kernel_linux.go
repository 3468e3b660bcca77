package kernel

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/dataplane"
)

// errClosed is returned by every method of a closed Dataplane.
var errClosed = errors.New("kernel: data plane closed")

// maxComment is the longest ipset comment, in bytes.
const maxComment = 255

// flowDeleter deletes conntrack entries.
type flowDeleter interface {
	// deleteFlows deletes the conntrack entries of family fam for which
	// match returns true and returns how many went.
	deleteFlows(fam family, match func(flow) bool) (int, error)
}

// Dataplane is the kernel data plane of one network namespace. It
// implements balancer.Dataplane; all methods are safe for concurrent use.
//
// Sync declares the services; Pin, Unpin, Lookup, Pins and Forget act on
// the services and backends of the last Sync and fail with an error
// wrapping dataplane.ErrUnknown for others. A goroutine owned by the
// Dataplane re-applies the last State when its rules go missing; Close
// stops it. Close leaves every kernel object in place for the next run to
// adopt; Cleanup removes them.
type Dataplane struct {
	o       Options
	log     *logrus.Entry
	ns      netns.NsHandle // not open: the caller's namespace
	sets    ipsets
	flows   flowDeleter
	routing routing     // nil: transparent dials unsupported
	ipt     [2]iptables // by family
	close   func()      // releases sets and flows

	// mu guards the fields below it. Pin, Unpin, Lookup and Count hold it
	// for reading while they talk to the kernel (Pins only to look up the
	// sets); Sync and Close take it briefly for writing.
	mu     sync.RWMutex
	closed bool
	svcs   map[string]*service // by name, as of the last Sync
	shadow map[string]*rebuild // sets being rebuilt
	// touched tracks, by index set, the clients pinned while the index is
	// being filled or collected, whose entries the fill or collection
	// must then leave alone (they are newer than its listing).
	touched map[string]*touched

	layout markLayout

	// syncMu serializes Sync and the canary; it guards the fields below.
	syncMu sync.Mutex
	last   []*service // the desired state; nil before the first Sync
	// transparent is the last State's Transparent.
	transparent bool
	slots       slotTable // nil until learnt from the kernel by the first Sync
	dirty       bool      // the last attempt to apply last failed
	errMsg      string    // the last sync error logged, to log each once
	// cache holds, by family and table, what Sync last wrote and read
	// back; nil means unknown (read the table first).
	cache [2]map[table]*tableCache
	// pass holds, by family, the tables as read during one sync, until
	// it writes rules (see readTables).
	pass   [2]map[table]saved
	v6     bool // ip6tables is managed
	v6seen bool // whether ip6tables was checked for leftovers
	// staleWarned holds stale sets whose destruction failed and was
	// logged at warning level.
	staleWarned map[string]bool
	// foreignWarned holds the objects named like handoff's but not in its
	// registry that were reported.
	foreignWarned map[string]bool

	counts countCache // what Counters last read
	held   heldStats

	// repairs counts the drifts found and repaired: chains, rules, jumps
	// and sets changed behind handoff's back, and index sets emptied.
	repairs atomic.Uint64
	// syncs counts and times every apply: Syncs and canary checks.
	syncs dataplane.SyncRecorder

	stop context.CancelFunc
	done chan struct{}
}

// New opens the kernel data plane in o.NetNS and starts its canary. It
// touches no rule or set until the first Sync, which adopts the sets and
// chains a previous run left.
func New(ctx context.Context, o Options) (*Dataplane, error) {
	ns := netns.None()
	if o.NetNS != "" {
		var err error
		if ns, err = netns.GetFromPath(o.NetNS); err != nil {
			return nil, fmt.Errorf("kernel: netns %s: %w", o.NetNS, err)
		}
	}
	if _, err := o.markLayout(); err != nil {
		closeNS(ns)
		return nil, fmt.Errorf("kernel: %w", err)
	}
	s, err := newNLSets(ns)
	if err != nil {
		closeNS(ns)
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if _, err := s.names(); err != nil {
		s.close()
		closeNS(ns)
		return nil, fmt.Errorf("kernel: listing ipsets: %w", err)
	}
	r, err := newNLRouting(ns)
	if err != nil {
		s.close()
		closeNS(ns)
		return nil, fmt.Errorf("kernel: %w", err)
	}
	d := newDataplane(o, s, s, [2]iptables{execTables{ipv4, ns}, execTables{ipv6, ns}})
	d.ns = ns
	d.routing = r
	d.close = func() { s.close(); r.close() }
	d.start(ctx)
	return d, nil
}

// openNS opens the network namespace at path; "" is the caller's own,
// which needs no handle.
func openNS(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("opening netns %s: %w", path, err)
	}
	return ns, nil
}

func closeNS(ns netns.NsHandle) {
	if ns.IsOpen() {
		ns.Close()
	}
}

// newDataplane wires a Dataplane to its seams without starting the canary.
func newDataplane(o Options, sets ipsets, flows flowDeleter, ipt [2]iptables) *Dataplane {
	layout, err := o.markLayout()
	if err != nil {
		panic(err) // New checked it; tests pass valid masks
	}
	d := &Dataplane{
		o:       o,
		log:     o.logger(),
		ns:      netns.None(),
		sets:    sets,
		flows:   flows,
		ipt:     ipt,
		svcs:    map[string]*service{},
		touched: map[string]*touched{},
		layout:  layout,
	}
	for f := range d.cache {
		d.cache[f] = map[table]*tableCache{}
	}
	return d
}

// logger is o.Logger, or logrus's standard logger, with component=kernel.
func (o Options) logger() *logrus.Entry {
	if o.Logger != nil {
		return o.Logger.WithField("component", "kernel")
	}
	return logrus.WithField("component", "kernel")
}

// start runs the canary goroutine unless it is disabled.
func (d *Dataplane) start(ctx context.Context) {
	every := d.o.CanaryInterval
	if every == 0 {
		every = DefaultCanaryInterval
	}
	if every < 0 {
		return
	}
	ctx, d.stop = context.WithCancel(context.WithoutCancel(ctx))
	d.done = make(chan struct{})
	go d.canaryLoop(ctx, every)
}

// Repairs returns how many differences between the kernel and the
// desired state the canary found and repaired since New.
func (d *Dataplane) Repairs() uint64 { return d.repairs.Load() }

// SyncStats returns the counts and durations of the Syncs and canary
// checks so far, and the repairs among them.
func (d *Dataplane) SyncStats() dataplane.SyncStats { return d.syncs.Stats() }

// Close stops the canary and releases the netlink sockets and the
// namespace handle. Kernel objects stay. Close is idempotent.
func (d *Dataplane) Close() error {
	if d.stop != nil {
		d.stop()
		<-d.done
	}
	d.syncMu.Lock() // wait for a Sync in flight
	defer d.syncMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if d.close != nil {
		d.close()
	}
	closeNS(d.ns)
	return nil
}

// Pin adds p.Client to the set of p.Backend, or refreshes its timeout and
// comment when it is there, and points the client's entry in the service's
// index at the backend. The kernel has acknowledged the pin when Pin
// returns.
//
// The timeout is p.TTL, or the service's ClientTTL when p.TTL is 0, in
// whole seconds (at least 1, at most 2147483). In a service whose
// ClientTTL is 0 pins never expire and p.TTL is ignored. The comment is
// p.Key cut to 255 bytes, with anything but printable ASCII and '"'
// replaced by '_'.
//
// Pin does not remove the client from the service's other backends: a
// client pinned to two backends is forwarded to the one synced first. To
// move a client, Unpin it from the old backend.
func (d *Dataplane) Pin(ctx context.Context, p dataplane.Pin) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	s, b, err := d.lookupLocked(p.Service, p.Backend)
	if err != nil {
		return err
	}
	ip, err := s.client(p.Client)
	if err != nil {
		return err
	}
	timeout := s.timeout(p.TTL)
	c := sanitizeComment(p.Key)
	es := [2]setAdd{d.indexAdd(s, b, ip), {set: b.set, ip: ip, cidr: s.cidr, timeout: timeout, comment: c}}
	var errs [2]error
	d.sets.addBatch(es[:], true, errs[:])
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("ipset %q: add %s: %w", es[i].set, ip, err)
		}
	}
	if len(d.shadow) > 0 {
		// The set is being rebuilt: the copy must get the pin too, unless
		// the copy's smaller maxelem has no room for it.
		if r, ok := d.shadow[b.set]; ok {
			r.pinned(ip)
			if err := d.sets.add(r.tmp, ip, s.cidr, timeout, c, true); err != nil && !errors.Is(err, dataplane.ErrFull) {
				return fmt.Errorf("ipset %q: add %s: %w", r.tmp, ip, err)
			}
		}
	}
	return nil
}

// Unpin removes client from backend's set; absent is not an error.
func (d *Dataplane) Unpin(ctx context.Context, service, backend string, client netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	s, b, err := d.lookupLocked(service, backend)
	if err != nil {
		return err
	}
	ip, err := s.client(client)
	if err != nil {
		return err
	}
	if err := d.sets.del(b.set, ip, s.cidr); err != nil {
		return fmt.Errorf("ipset %q: del %s: %w", b.set, ip, err)
	}
	if r, ok := d.shadow[b.set]; ok {
		r.unpin(ip)
		if err := d.sets.del(r.tmp, ip, s.cidr); err != nil {
			return fmt.Errorf("ipset %q: del %s: %w", r.tmp, ip, err)
		}
	}
	return nil
}

// Lookup returns the pin of client in service: the first backend, in Sync
// order, whose set holds it. Only Service, Backend and Client are filled;
// the kernel's test command reports neither the key nor the remaining
// time (use Pins for those).
func (d *Dataplane) Lookup(ctx context.Context, service string, client netip.Addr) (dataplane.Pin, bool, error) {
	if err := ctx.Err(); err != nil {
		return dataplane.Pin{}, false, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	s, _, err := d.lookupLocked(service, "")
	if err != nil {
		return dataplane.Pin{}, false, err
	}
	ip, err := s.client(client)
	if err != nil {
		return dataplane.Pin{}, false, err
	}
	for _, b := range s.backends {
		ok, err := d.sets.test(b.set, ip, s.cidr)
		if err != nil {
			return dataplane.Pin{}, false, fmt.Errorf("ipset %q: test %s: %w", b.set, ip, err)
		}
		if ok {
			return dataplane.Pin{Service: service, Backend: b.name, Client: ip}, true, nil
		}
	}
	return dataplane.Pin{}, false, nil
}

// Pins calls fn for each live pin of backend beName (of every backend of
// service when beName is ""), with Key from the entry's comment and TTL the time
// left (0: never expires).
//
// Pins streams: each backend's set is read from the kernel as fn takes its
// pins, so a walk costs one receive buffer whatever the sets' sizes. Each
// walk reads over a netlink socket of its own and holds no lock while fn
// runs, so fn may take its time and call any method of the Dataplane, Pins
// included. A pin made or removed during the walk may or may not be seen;
// every other pin is seen once. The kernel refuses to swap or destroy a set
// while it is being listed, so a Sync that rebuilds or removes a set
// interrupts the walks of it: Pins then returns an error.
func (d *Dataplane) Pins(ctx context.Context, service, beName string, fn func(dataplane.Pin) error) error {
	d.mu.RLock()
	s, b, err := d.lookupLocked(service, beName)
	d.mu.RUnlock()
	if err != nil {
		return err
	}
	bes := s.backends
	if b != nil {
		bes = []backend{*b}
	}
	for _, b := range bes {
		if err := ctx.Err(); err != nil {
			return err
		}
		// ferr is fn's or ctx's error, returned as is.
		var ferr error
		n := 0
		err := d.sets.list(b.set, func(m member) error {
			if n++; n%pinsCtxEvery == 0 {
				if ferr = ctx.Err(); ferr != nil {
					return ferr
				}
			}
			p := dataplane.Pin{Service: service, Backend: b.name, Client: m.ip, Key: m.comment}
			if s.ttl > 0 {
				p.TTL = time.Duration(m.timeout) * time.Second
			}
			ferr = fn(p)
			return ferr
		})
		if ferr != nil {
			return ferr
		}
		if err != nil {
			return fmt.Errorf("ipset %q: list: %w", b.set, err)
		}
	}
	return nil
}

// pinsCtxEvery is how many pins Pins hands fn between checks of its ctx.
const pinsCtxEvery = 4096

// Forget deletes the conntrack entries of TCP flows that were DNATed from
// the service's VIP (any local address when the VIP is unspecified) to
// backend, and returns how many went. The clients' next packets on those
// flows find no state and are reset or re-classified.
func (d *Dataplane) Forget(ctx context.Context, service, backend string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	d.mu.RLock()
	s, b, err := d.lookupLocked(service, backend)
	closed := d.closed
	d.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	if closed {
		return 0, errClosed
	}
	vip, be := s.vip, b.addr
	n, err := d.flows.deleteFlows(s.fam, func(f flow) bool { return flowMatches(vip, be, f) })
	if err != nil {
		return n, fmt.Errorf("conntrack: forget flows of service %q to backend %q (%s): %w", service, backend, be, err)
	}
	return n, nil
}

// flowMatches reports whether f is a TCP flow to vip that was DNATed to be.
func flowMatches(vip, be netip.AddrPort, f flow) bool {
	if f.proto != unix.IPPROTO_TCP || f.dst.Port() != vip.Port() || f.replySrc != be {
		return false
	}
	if f.dst == be {
		return false // not DNATed: a direct connection to the backend
	}
	return vip.Addr().IsUnspecified() || f.dst.Addr() == vip.Addr()
}

// lookupLocked finds a service and, unless backend is "", its backend.
// The caller holds d.mu.
func (d *Dataplane) lookupLocked(svcName, beName string) (*service, *backend, error) {
	if d.closed {
		return nil, nil, errClosed
	}
	s := d.svcs[svcName]
	if s == nil {
		return nil, nil, fmt.Errorf("kernel: service %q: %w", svcName, dataplane.ErrUnknown)
	}
	if beName == "" {
		return s, nil, nil
	}
	b := s.byName[beName]
	if b == nil {
		return nil, nil, fmt.Errorf("kernel: service %q: backend %q: %w", svcName, beName, dataplane.ErrUnknown)
	}
	return s, b, nil
}

// client returns ip unmapped, checking that it suits the service's family.
func (s *service) client(ip netip.Addr) (netip.Addr, error) {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return ip, fmt.Errorf("kernel: service %q: invalid client address", s.name)
	}
	if familyOf(ip) != s.fam {
		return ip, fmt.Errorf("kernel: service %q: client %s is not %s", s.name, ip, s.fam)
	}
	return dataplane.PinKey(ip, int(s.cidr)), nil
}

// sanitizeComment makes key a valid ipset comment: at most 255 bytes of
// printable ASCII without '"'. Valid keys are returned without copying.
func sanitizeComment(key string) string {
	if len(key) > maxComment {
		key = key[:maxComment]
	}
	i := 0
	for i < len(key) && okCommentByte(key[i]) {
		i++
	}
	if i == len(key) {
		return key
	}
	b := []byte(key)
	for ; i < len(b); i++ {
		if !okCommentByte(b[i]) {
			b[i] = '_'
		}
	}
	return string(b)
}

func okCommentByte(c byte) bool { return c >= 0x20 && c < 0x7f && c != '"' }

// isHandoffSet reports whether an ipset name is handoff's: a pin set
// (ho-, ho6-, hn6-), an index set (hoi-, hoi6-, hni6-) or a counting set
// (hoc-, hoc6-).
func isHandoffSet(name string) bool {
	for _, p := range []string{"ho-", "ho6-", "hoi-", "hoi6-", "hn6-", "hni6-", "hoc-", "hoc6-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// indexSetName is the dispatch index of a service: hoi-<svc> (hoi6- for
// IPv6). Its prefix keeps it apart from every pin set name.
func indexSetName(service string, fam family) string {
	if fam == ipv6 {
		return "hoi6-" + service
	}
	return "hoi-" + service
}

// countSetName is the counting set of a service: hoc-<svc> (hoc6- for
// IPv6), whose entries, its backends' addresses, count their
// kernel-forwarded traffic. A service name short enough for its chain
// (dataplane.MaxChainNameLen) keeps it within the ipset name limit.
func countSetName(service string, fam family) string {
	if fam == ipv6 {
		return "hoc6-" + service
	}
	return "hoc-" + service
}

// netSetName is the pin set of a backend of a service that pins IPv6
// networks (hash:net): hn6-<svc>-<be>, as long as its ho6- name. Sets of
// the two types cannot be swapped into each other, so a service that
// starts or stops pinning networks gets sets of other names: the rules
// move to them and the old sets are destroyed with their pins.
func netSetName(service, backend string) string { return "hn6-" + service + "-" + backend }

// netIndexSetName is the dispatch index of a service that pins IPv6
// networks: hni6-<svc>.
func netIndexSetName(service string) string { return "hni6-" + service }

// indexAdd is the index entry that sends ip to backend b, noted as touched
// when the index is being filled or collected. The caller holds d.mu.
func (d *Dataplane) indexAdd(s *service, b *backend, ip netip.Addr) setAdd {
	if t := d.touched[s.index]; t != nil {
		t.add(ip)
	}
	return setAdd{set: s.index, ip: ip, cidr: s.cidr, mark: d.layout.mark(b.slot)}
}

// Scratch names start with "_" after the prefix, which no service name can.
const (
	probeTag = "_probe-"
	tempTag  = "_t-"
)

// isProbeSet reports whether name is a (possibly concurrent) Probe's.
func isProbeSet(name string) bool {
	return strings.HasPrefix(name, "ho-"+probeTag) || strings.HasPrefix(name, "ho6-"+probeTag)
}

// probeSetName is Probe's scratch set of a family.
func probeSetName(fam family, pid int) string {
	p := "ho-"
	if fam == ipv6 {
		p = "ho6-"
	}
	return p + probeTag + strconv.Itoa(pid)
}

// isTempSet reports whether name is a scratch set of a rebuild.
func isTempSet(name string) bool {
	return strings.HasPrefix(name, "ho-"+tempTag) || strings.HasPrefix(name, "ho6-"+tempTag) ||
		strings.HasPrefix(name, "hoi-"+tempTag) || strings.HasPrefix(name, "hoi6-"+tempTag)
}

// tempSetName is the scratch set used while rebuilding set name.
func tempSetName(name string) string {
	h := fnv.New64a()
	h.Write([]byte(name))
	p := "ho-"
	if strings.HasPrefix(name, "ho6-") {
		p = "ho6-"
	}
	return p + tempTag + strconv.FormatUint(h.Sum64(), 16)
}
