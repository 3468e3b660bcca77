package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/ratelog"
	"github.com/handoff-lb/handoff/proxy"
)

// service is one running service: its listener and the current snapshot of
// its config, router and backends. A reload that keeps the listen address
// swaps the snapshot; handlers keep the one they started with.
type service struct {
	e    *Engine
	name string
	log  *logrus.Entry
	// decisions shares one decision among a new client's racing first
	// connections and held SYNs.
	decisions decisions
	counts    *serviceCounters
	snap      atomic.Pointer[snapshot]

	noBackend atomic.Bool // the last new client found no usable backend
	// budget counts the new pins of each client network (pin_budget);
	// kept across reloads.
	budget budget
	// logs bound the lines that clients can trigger.
	logs        connLimits
	countFailed atomic.Bool // the last recount of pins failed (kernel mode)

	// migrateMu serializes the migrations of the service's clients
	// (backend down, drain --migrate, failback): each lists pins, picks
	// new backends and pins there, and one running between another's
	// listing and pinning could leave clients on a backend that went down.
	migrateMu sync.Mutex

	mu       sync.Mutex
	backends map[string]*backend
	ln       net.Listener    // nil while closed
	ctx      context.Context // handlers' context; set by serve
	cancel   context.CancelFunc
	accepts  sync.WaitGroup // the accept loop
	wg       sync.WaitGroup // handlers
}

// snapshot is what a handler needs of a service's config; immutable.
type snapshot struct {
	cfg    *config.Service
	router *classifier.Router
	limit  *proxy.Limiter
}

func newSnapshot(sc *config.Service) (*snapshot, error) {
	r, err := classifier.New(sc)
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", sc.Name, err)
	}
	return &snapshot{cfg: sc, router: r, limit: proxy.NewLimiter(sc.MaxConnections)}, nil
}

func (e *Engine) newService(sc *config.Service) (*service, error) {
	snap, err := newSnapshot(sc)
	if err != nil {
		return nil, err
	}
	s := e.allocService(sc.Name)
	s.install(snap)
	return s, nil
}

// allocService returns a service named name that has no snapshot yet.
func (e *Engine) allocService(name string) *service {
	return &service{e: e, name: name, log: e.log.WithField("service", name), counts: e.stats.service(name), logs: newConnLimits()}
}

// connLimits are a service's rate limiters of the lines that a client's
// connections can trigger, one per kind of line: a flood of connections
// logs a few lines a second of each, and the next line says how many
// were held back.
type connLimits struct {
	accept, lookup, pinFailed, full, budget, undo, header, dial, repin *ratelog.Limiter
}

func newConnLimits() connLimits {
	l := func() *ratelog.Limiter { return ratelog.Default() }
	return connLimits{accept: l(), lookup: l(), pinFailed: l(), full: l(), budget: l(), undo: l(), header: l(), dial: l(), repin: l()}
}

// install makes snap current and updates the backend table, keeping the
// state of backends that remain. It applies the snapshot's max_connections
// to its limiter, which a reload carries over from the service's previous
// snapshot (see Engine.apply), so connections already open still count.
func (s *service) install(snap *snapshot) {
	snap.limit.SetMax(snap.cfg.MaxConnections)
	var bs []*backend
	for _, pool := range snap.cfg.Pools {
		for _, b := range pool.Backends {
			bs = append(bs, &backend{name: b.Name, addr: b.Address, pool: pool.Name})
		}
	}
	m := s.e.view.set(s.name, bs)
	s.mu.Lock()
	s.backends = m
	s.mu.Unlock()
	s.snap.Store(snap)
}

// open binds the listener; it does not accept yet.
func (s *service) open(ctx context.Context) error {
	addr := s.snap.Load().cfg.Listen
	// One family per listener: "[::]:80" is then IPv6-only and can coexist
	// with "0.0.0.0:80", as the config allows.
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	ln, err := s.e.listen(ctx, network, addr.String())
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err
		}
		return fmt.Errorf("service %s: listen %s: %w", s.name, addr, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return nil
}

func (s *service) addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// serve starts the accept loop (when the listener is open); close stops it
// and waits for every handler.
func (s *service) serve(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	s.mu.Lock()
	s.ctx, s.cancel = ctx, cancel
	if s.ln != nil {
		s.startAccepting(s.ln)
	}
	s.mu.Unlock()
}

// startAccepting runs the accept loop of ln; s.mu is held.
func (s *service) startAccepting(ln net.Listener) {
	s.accepts.Add(1)
	go func() {
		defer s.accepts.Done()
		s.acceptLoop(s.ctx, ln)
	}()
}

// pause closes the listener and waits for the accept loop; connections
// already accepted go on. Closing a closed service does nothing.
func (s *service) pause() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	s.accepts.Wait()
}

// resume opens the listener again and accepts on it.
func (s *service) resume(ctx context.Context) error {
	s.mu.Lock()
	open := s.ln != nil
	s.mu.Unlock()
	if open {
		return nil
	}
	if err := s.open(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx != nil {
		s.startAccepting(s.ln)
	}
	return nil
}

func (s *service) close() {
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	s.mu.Unlock()
	s.accepts.Wait()
	s.wg.Wait()
}

// acceptLoop accepts until the listener closes. Temporary errors (such as
// running out of file descriptors) back off instead of spinning.
func (s *service) acceptLoop(ctx context.Context, ln net.Listener) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if l := s.logs.accept.Entry(func() *logrus.Entry { return s.log }); l != nil {
				l.WithError(err).WithField("retry_in", delay).Warn("accept failed")
			}
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			continue
		}
		delay = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			continue
		}
		snap := s.snap.Load()
		if !snap.limit.TryAcquire() {
			reset(tc)
			if s.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
				s.log.WithField("client", tc.RemoteAddr()).Debug("refused: max_connections reached")
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer snap.limit.Release()
			s.handle(ctx, snap, tc)
		}()
	}
}

// reset closes c with an RST (SO_LINGER 0).
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// clientAddrPort is the source address (unmapped) and port of c.
func clientAddrPort(c net.Conn) netip.AddrPort {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// clientAddr is the unmapped source address of c.
func clientAddr(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// connLog is the logger of one connection, with its client field. It is
// made only when something is logged: most connections log nothing, and a
// logrus entry with a field costs several allocations.
type connLog struct {
	s      *service
	client netip.Addr
	entry  *logrus.Entry
}

func (l *connLog) get() *logrus.Entry {
	if l.entry == nil {
		l.entry = l.s.log.WithField("client", l.client)
	}
	return l.entry
}

// debug reports whether debug messages are logged at all.
func (l *connLog) debug() bool { return l.s.log.Logger.IsLevelEnabled(logrus.DebugLevel) }

// handle runs one connection: in userspace mode a pinned client goes
// straight to its backend; otherwise the client is classified, pinned, and
// its first connection is reset (kernel mode, reset) or proxied. The
// client's other connections that race in meanwhile follow the same
// decision and are proxied.
func (s *service) handle(ctx context.Context, snap *snapshot, c *net.TCPConn) {
	accepted := time.Now()
	client := clientAddr(c)
	log := &connLog{s: s, client: client}
	// key is what the client is pinned as: its address, or its network's
	// under ipv6_pin_prefix. The client is classified by its address.
	key := dataplane.PinKey(client, snap.cfg.IPv6PinPrefix)

	if !s.e.kernel {
		if pin, ok, err := s.e.dp.Lookup(ctx, s.name, key); err != nil {
			if l := s.logs.lookup.Entry(log.get); l != nil {
				l.WithError(err).Warn("affinity lookup failed")
			}
		} else if ok {
			if b := s.backend(pin.Backend); b != nil && !b.down.Load() {
				s.proxy(ctx, snap, c, b, keyOf(pin), pin.Key, nil, log)
				return
			}
		}
	}

	// Every connection reads its own first bytes; the first to be
	// classified pins the client, and the others follow its decision (a
	// client's racing connections may ask for different names: one
	// decision, one pin, per client). Waiting happens only while a pin is
	// being made, never while another connection's bytes are awaited.
	d, err := s.classify(ctx, snap, c, client)
	if err != nil {
		s.unclassified(err, d, log)
		reset(c)
		return
	}
	for attempt := 0; ; attempt++ {
		f, leader := s.decisions.begin(key)
		if leader {
			s.lead(ctx, snap, c, key, f, d, accepted, log)
			return
		}
		fd, ok := f.wait(ctx)
		if ok && !fd.backend.down.Load() && s.backend(fd.backend.name) == fd.backend {
			s.first(snap, FirstProxied)
			s.proxy(ctx, snap, c, fd.backend, fd.key, fd.label, d.peeked, log)
			return
		}
		if ok {
			s.decisions.forget(key) // its backend went down or away since
		}
		if attempt == 2 || ctx.Err() != nil {
			reset(c)
			return
		}
	}
}

// lead pins a new client (client is its pin key) as d says, records the
// decision in f for the connections racing in, and serves the connection.
// A client whose pin finds no room (a full set, a spent pin budget) is
// served as on_full says: proxied to the backend decided, without a pin,
// or reset; its next connection is decided afresh.
func (s *service) lead(ctx context.Context, snap *snapshot, c *net.TCPConn, client netip.Addr, f *flight, d decision, accepted time.Time, log *connLog) {
	err := s.pin(ctx, snap, d, client, accepted, log, false)
	s.decisions.finish(client, f, d, err == nil)
	if err != nil {
		if unpinnable(err) && snap.cfg.OnFull == config.OnFullProxy {
			s.first(snap, FirstProxied)
			s.proxy(ctx, snap, c, d.backend, d.key, unpinnedLabel, d.peeked, log)
			return
		}
		reset(c)
		return
	}
	if s.e.kernel && snap.cfg.FirstConnection == config.FirstReset {
		s.first(snap, FirstReset)
		reset(c)
		return
	}
	s.first(snap, FirstProxied)
	s.proxy(ctx, snap, c, d.backend, d.key, d.label, d.peeked, log)
}

// unclassified counts and logs a new client that got no decision.
func (s *service) unclassified(err error, d decision, log *connLog) {
	switch {
	case errors.Is(err, classifier.ErrNoBackend):
		s.counts.noBackend.Add(1)
		if s.noBackend.CompareAndSwap(false, true) {
			log.get().WithError(err).Error("no usable backend: new clients are reset and not pinned")
		}
	case errors.Is(err, classifier.ErrNoRoute):
		s.counts.noRoute.Add(1)
		if log.debug() {
			log.get().WithError(err).Debug("no route and no default pool: reset")
		}
	default:
		if log.debug() {
			log.get().WithError(err).Debug("unclassified: reset")
		}
	}
}

// pin pins a new client as d says and counts it. It fails when the
// client's network spent its pin budget (errOverBudget), when the data
// plane refuses (a full set wraps dataplane.ErrFull), and when d's backend
// went down meanwhile (the pin is undone). held is a held SYN's attempt:
// when it finds no room the listener meets the connection and tries
// again, so it neither counts nor logs that.
func (s *service) pin(ctx context.Context, snap *snapshot, d decision, client netip.Addr, since time.Time, log *connLog, held bool) error {
	if s.noBackend.CompareAndSwap(true, false) {
		log.get().WithField("backend", d.backend.name).Info("a usable backend is back: new clients are pinned again")
	}
	pb := snap.cfg.PinBudget
	if !s.budget.take(time.Now(), client, pb, snap.cfg.ClientTTL) {
		if !held {
			s.counts.overBudget.Add(1)
			if l := s.logs.budget.Entry(log.get); l != nil {
				l.WithFields(logrus.Fields{"network": network(client, pb), "per_prefix": pb.PerPrefix, "on_full": snap.cfg.OnFull}).
					Warn("pin refused: the client's network made its pin budget of new pins within client_ttl")
			}
		}
		return errOverBudget
	}
	if err := s.e.dp.Pin(ctx, dataplane.Pin{Service: s.name, Backend: d.backend.name, Client: client, Key: d.label}); err != nil {
		s.budget.refund(client, pb)
		switch {
		case held && errors.Is(err, dataplane.ErrFull):
		case errors.Is(err, dataplane.ErrFull):
			s.counts.full.Add(1)
			if l := s.logs.full.Entry(log.get); l != nil {
				l.WithError(err).WithFields(logrus.Fields{"backend": d.backend.name, "max_clients": snap.cfg.MaxClients, "on_full": snap.cfg.OnFull}).
					Warn("pin refused: the backend's client table is full (raise max_clients)")
			}
		default:
			s.counts.pinFailed.Add(1)
			if l := s.logs.pinFailed.Entry(log.get); l != nil {
				l.WithError(err).WithField("backend", d.backend.name).Warn("pin failed: reset")
			}
		}
		return err
	}
	if d.backend.down.Load() {
		// The backend went down while this client was being pinned: the
		// migration of its clients may have listed them before this pin
		// landed (it lists after marking the backend down, so a pin that
		// landed before this check is seen). Undo the pin; the client's
		// next connection is classified afresh.
		if err := s.e.dp.Unpin(ctx, s.name, d.backend.name, client); err != nil {
			if l := s.logs.undo.Entry(log.get); l != nil {
				l.WithError(err).WithField("backend", d.backend.name).Warn("unpinning a client of a backend that went down while it was pinned")
			}
		}
		return fmt.Errorf("backend %s went down while the client was pinned", d.backend.name)
	}
	d.backend.pins.Add(1)
	s.counts.pinned.Add(1)
	if s.e.onPin != nil {
		s.e.onPin(s.name, time.Since(since))
	}
	if log.debug() {
		log.get().WithFields(logrus.Fields{"backend": d.backend.name, "key": d.label}).Debug("pinned")
	}
	return nil
}

// first counts a new client's first connection by how it was served; a
// proxied one counts as transparent when the proxy dials from the client's
// address.
func (s *service) first(snap *snapshot, how FirstOutcome) {
	if how == FirstProxied && s.transparent(snap) {
		how = FirstTransparent
	}
	s.counts.first[how].Add(1)
}

// transparent reports whether the proxy dials the service's backends from
// the clients' own addresses: kernel mode, transparent dials available,
// and backends that route their replies through this host (not snat).
func (s *service) transparent(snap *snapshot) bool {
	return s.e.kernel && s.e.transparent && !snap.cfg.SNAT
}

func (s *service) backend(name string) *backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backends[name]
}

// proxy dials b and splices c to it, replaying peeked bytes first. When the
// dial fails it reports the failure to the health monitor and tries the next
// backends in the pool policy's order for key; a client that lands elsewhere
// is re-pinned there (label is its pin's comment), so it sees one successful
// connection.
func (s *service) proxy(ctx context.Context, snap *snapshot, c *net.TCPConn, b *backend, key, label string, peeked []byte, log *connLog) {
	bc, b := s.dialBackend(ctx, snap, b, key, label, clientAddrPort(c), log)
	if bc == nil {
		reset(c)
		return
	}
	if snap.cfg.ProxyProtocol != config.ProxyProtocolOff && snap.cfg.ProxyProtocol != "" && !s.e.kernel {
		if err := proxy.WriteHeader(bc, snap.cfg.ProxyProtocol, c.RemoteAddr(), c.LocalAddr()); err != nil {
			if l := s.logs.header.Entry(log.get); l != nil {
				l.WithError(err).WithField("backend", b.name).Warn("writing PROXY header")
			}
			reset(c)
			bc.Close()
			return
		}
	}
	b.active.Add(1)
	defer b.active.Add(-1)
	if log.debug() {
		log.get().WithField("backend", b.name).Debug("proxying")
	}
	st, err := proxy.Splice(ctx, c, bc, proxy.SpliceOptions{Idle: snap.cfg.Timeouts.Idle, Replay: peeked})
	b.bytesIn.Add(uint64(st.ClientToBackend))
	b.bytesOut.Add(uint64(st.BackendToClient))
	b.conns.Add(1)
	if log.debug() {
		l := log.get().WithFields(logrus.Fields{"backend": b.name, "bytes_in": st.ClientToBackend, "bytes_out": st.BackendToClient})
		if err != nil {
			l = l.WithError(err)
		}
		l.Debug("proxied connection ended")
	}
}

// unpinnedLabel is the label proxy gets for a client served without a pin,
// which a failed dial must not pin elsewhere. (A key of these very bytes
// would only lose that re-pin.)
const unpinnedLabel = "\x00unpinned"

// maxDialAttempts bounds how many backends one connection tries.
const maxDialAttempts = 3

// dialBackend connects to b, or to the next candidates of b's pool when b
// refuses. It returns nil when every attempt failed.
func (s *service) dialBackend(ctx context.Context, snap *snapshot, b *backend, key, label string, from netip.AddrPort, log *connLog) (*net.TCPConn, *backend) {
	client := dataplane.PinKey(from.Addr(), snap.cfg.IPv6PinPrefix)
	first := b
	tried := map[string]bool{}
	for attempt := 0; b != nil && attempt < maxDialAttempts; attempt++ {
		tried[b.name] = true
		bc, err := s.dial(ctx, snap, b, from)
		if err == nil {
			if b != first {
				s.repin(ctx, client, first, b, label, log)
			}
			return bc, b
		}
		if l := s.logs.dial.Entry(log.get); l != nil {
			l.WithError(err).WithField("backend", b.name).Warn("backend dial failed")
		}
		if m := s.e.health.Load(); m != nil {
			m.ReportFailure(s.name, b.name, err)
		}
		b = s.nextCandidate(snap, b.pool, key, tried)
	}
	return nil, nil
}

// dial connects to b: from the client's address and port when the
// service dials transparently, else from this host's.
func (s *service) dial(ctx context.Context, snap *snapshot, b *backend, from netip.AddrPort) (*net.TCPConn, error) {
	if !s.transparent(snap) {
		return proxy.Dial(ctx, b.addr, snap.cfg.Timeouts.Connect)
	}
	return proxy.DialTransparent(ctx, from, b.addr, snap.cfg.Timeouts.Connect)
}

func (s *service) nextCandidate(snap *snapshot, pool, key string, tried map[string]bool) *backend {
	p := snap.router.Pool(pool)
	if p == nil {
		return nil
	}
	for _, cb := range p.Candidates(key, s.e.view, maxDialAttempts+len(tried)) {
		if !tried[cb.Name] {
			return s.backend(cb.Name)
		}
	}
	return nil
}

// repin moves a client whose dial fell over from one backend to another.
// A client served without a pin (on_full: proxy) is not pinned here.
func (s *service) repin(ctx context.Context, client netip.Addr, from, to *backend, label string, log *connLog) {
	if label == unpinnedLabel {
		return
	}
	if err := s.e.dp.Pin(ctx, dataplane.Pin{Service: s.name, Backend: to.name, Client: client, Key: label}); err != nil {
		if l := s.logs.repin.Entry(log.get); l != nil {
			l.WithError(err).WithField("backend", to.name).Warn("re-pin after failed dial")
		}
		return
	}
	to.pins.Add(1)
	if err := s.e.dp.Unpin(ctx, s.name, from.name, client); err == nil {
		from.pins.Add(-1)
	}
}
