package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
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
	acceptor *proxy.Acceptor // ln served by the engine's proxy server; nil while not accepting
	ctx      context.Context // handlers' context; set by serve
	cancel   context.CancelFunc
	group    *proxy.Group   // the proxied connections; aborted when ctx ends
	wg       sync.WaitGroup // accepted connections, until they end
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

// serve starts accepting (when the listener is open); close stops it and
// waits for every connection.
func (s *service) serve(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	group := s.e.srv.NewGroup()
	context.AfterFunc(ctx, func() { group.Abort(context.Cause(ctx)) })
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctx, s.cancel, s.group = ctx, cancel, group
	if s.ln != nil {
		if err := s.startAccepting(s.ln); err != nil {
			s.log.WithError(err).Error("listener not served: closed")
			s.ln.Close()
			s.ln = nil
		}
	}
}

// startAccepting has the engine's proxy server accept on ln; s.mu is held.
func (s *service) startAccepting(ln net.Listener) error {
	a, err := s.e.srv.Serve(ln, proxy.ServeOptions{Accept: s.accept, AcceptError: s.acceptError})
	if err != nil {
		return err
	}
	s.acceptor = a
	return nil
}

// pause stops accepting and closes the listener; connections already
// accepted go on. Closing a closed service does nothing.
func (s *service) pause() {
	s.mu.Lock()
	ln, a := s.ln, s.acceptor
	s.ln, s.acceptor = nil, nil
	s.mu.Unlock()
	if a != nil {
		a.Stop()
	}
	if ln != nil {
		ln.Close()
	}
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
		if err := s.startAccepting(s.ln); err != nil {
			s.ln.Close()
			s.ln = nil
			return fmt.Errorf("service %s: %w", s.name, err)
		}
	}
	return nil
}

// close stops accepting, ends the connections being proxied and waits for
// every connection.
func (s *service) close() {
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel() // aborts the group
	}
	s.mu.Unlock()
	s.pause()
	s.wg.Wait()
}

// acceptError logs an accept that failed for lack of resources (such as
// file descriptors); accepting backs off instead of spinning.
func (s *service) acceptError(err error, retryIn time.Duration) {
	if l := s.logs.accept.Entry(func() *logrus.Entry { return s.log }); l != nil {
		l.WithError(err).WithField("retry_in", retryIn).Warn("accept failed")
	}
}

// conn is one accepted connection of a service, from accept to its end:
// the proxy.Result of its route.
type conn struct {
	s      *service
	snap   *snapshot // the service's config when it was accepted
	c      *proxy.Conn
	client netip.Addr
	// pinKey is what the client is pinned as: its address, or its
	// network's under ipv6_pin_prefix. The client is classified by its
	// address.
	pinKey   netip.Addr
	log      connLog
	accepted time.Time

	// proxying
	b, first   *backend // the backend dialed now, and the first one
	key, label string
	pin        dataplane.Pin // a pinned client's pin; its key is keyOf(pin)
	tried      []string      // backends that failed to connect
	connected  bool
	start      time.Time // when the backend accepted, for the access log
	r          proxy.Route
}

// accept takes a new connection, on the proxy server's event loop: in
// userspace mode a pinned client goes straight to its backend (the route
// returned); any other connection goes to handle, in a goroutine. Past
// max_connections it is reset at once.
func (s *service) accept(c *proxy.Conn) *proxy.Route {
	snap := s.snap.Load()
	if !snap.limit.TryAcquire() {
		c.Reset()
		if s.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
			s.log.WithField("client", c.RemoteAddr()).Debug("refused: max_connections reached")
		}
		return nil
	}
	s.wg.Add(1)
	client := c.RemoteAddrPort().Addr().Unmap()
	pc := &conn{s: s, snap: snap, c: c, client: client, pinKey: dataplane.PinKey(client, snap.cfg.IPv6PinPrefix), log: connLog{s: s, client: client}}
	if !s.e.kernel {
		if r := pc.pinned(); r != nil {
			return r
		}
	}
	pc.accepted = time.Now()
	go pc.handle()
	return nil
}

// end releases what the connection held of its service.
func (pc *conn) end() {
	pc.snap.limit.Release()
	pc.s.wg.Done()
}

// reset resets the client's connection and ends it.
func (pc *conn) reset() {
	pc.c.Reset()
	pc.end()
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

// pinned returns the route of a client pinned in userspace mode to a
// backend that is up, or nil. It runs on the event loop, which the
// affinity table's lookup holds up only while another goroutine writes
// the client's shard (a pin, or a sweep of expired pins: about a
// millisecond per 15,000 pins in the shard).
func (pc *conn) pinned() *proxy.Route {
	s := pc.s
	pin, ok, err := s.e.dp.Lookup(s.ctx, s.name, pc.pinKey)
	if err != nil {
		if l := s.logs.lookup.Entry(pc.log.get); l != nil {
			l.WithError(err).Warn("affinity lookup failed")
		}
		return nil
	}
	if !ok {
		return nil
	}
	b := s.backend(pin.Backend)
	if b == nil || b.down.Load() {
		return nil
	}
	pc.pin = pin // its key, for a fall-over, is made only if one happens
	return pc.route(b, "", pin.Key, nil)
}

// handle runs a connection that needs more than a lookup, in a goroutine
// of its own: the client is classified, pinned, and its first connection
// is reset (kernel mode, reset) or proxied. The client's other connections
// that race in meanwhile follow the same decision and are proxied.
func (pc *conn) handle() {
	s, ctx := pc.s, pc.s.ctx
	// Every connection reads its own first bytes; the first to be
	// classified pins the client, and the others follow its decision (a
	// client's racing connections may ask for different names: one
	// decision, one pin, per client). Waiting happens only while a pin is
	// being made, never while another connection's bytes are awaited.
	d, err := s.classify(ctx, pc.snap, pc.c, pc.client)
	if err != nil {
		s.unclassified(err, d, &pc.log)
		pc.reset()
		return
	}
	for attempt := 0; ; attempt++ {
		f, leader := s.decisions.begin(pc.pinKey)
		if leader {
			pc.lead(f, d)
			return
		}
		fd, ok := f.wait(ctx)
		if ok && !fd.backend.down.Load() && s.backend(fd.backend.name) == fd.backend {
			s.first(pc.snap, FirstProxied)
			pc.proxy(fd.backend, fd.key, fd.label, d.peeked)
			return
		}
		if ok {
			s.decisions.forget(pc.pinKey) // its backend went down or away since
		}
		if attempt == 2 || ctx.Err() != nil {
			pc.reset()
			return
		}
	}
}

// lead pins a new client as d says, records the decision in f for the
// connections racing in, and serves the connection. A client whose pin
// finds no room (a full set, a spent pin budget) is served as on_full
// says: proxied to the backend decided, without a pin, or reset; its next
// connection is decided afresh.
func (pc *conn) lead(f *flight, d decision) {
	s := pc.s
	err := s.pin(s.ctx, pc.snap, d, pc.pinKey, pc.accepted, &pc.log, false)
	s.decisions.finish(pc.pinKey, f, d, err == nil)
	if err != nil {
		if unpinnable(err) && pc.snap.cfg.OnFull == config.OnFullProxy {
			s.first(pc.snap, FirstProxied)
			pc.proxy(d.backend, d.key, unpinnedLabel, d.peeked)
			return
		}
		pc.reset()
		return
	}
	if s.e.kernel && pc.snap.cfg.FirstConnection == config.FirstReset {
		s.first(pc.snap, FirstReset)
		pc.reset()
		return
	}
	s.first(pc.snap, FirstProxied)
	pc.proxy(d.backend, d.key, d.label, d.peeked)
}

// proxy hands the connection to the event loop along the route to b.
func (pc *conn) proxy(b *backend, key, label string, peeked []byte) {
	if r := pc.route(b, key, label, peeked); r != nil {
		pc.c.Proxy(r)
	}
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
	s.counts.added.Add(1)
	s.accessPin("pinned", client, d.backend.name, "", d.label)
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

// route returns the route to b (key and label are the client's: key is ""
// for a pinned client, whose pin gives it if a fall-over needs it; peeked
// the bytes to replay), or nil after resetting the client when its PROXY
// header cannot be made. When the dial fails, DialFailed tries the next
// backends in the pool policy's order for key; a client that lands
// elsewhere is re-pinned there (label is its pin's comment), so it sees
// one successful connection.
func (pc *conn) route(b *backend, key, label string, peeked []byte) *proxy.Route {
	cfg := pc.snap.cfg
	var hdr []byte
	if cfg.ProxyProtocol != config.ProxyProtocolOff && cfg.ProxyProtocol != "" && !pc.s.e.kernel {
		var err error
		if hdr, err = proxy.Header(cfg.ProxyProtocol, pc.c.RemoteAddr(), pc.c.LocalAddr()); err != nil {
			if l := pc.s.logs.header.Entry(pc.log.get); l != nil {
				l.WithError(err).WithField("backend", b.name).Warn("writing PROXY header")
			}
			pc.reset()
			return nil
		}
	}
	pc.b, pc.first, pc.key, pc.label = b, b, key, label
	pc.r = proxy.Route{
		Backend:        b.addr,
		ConnectTimeout: cfg.Timeouts.Connect,
		Idle:           cfg.Timeouts.Idle,
		Header:         hdr,
		Replay:         peeked,
		Group:          pc.s.group,
		Flow:           &b.flow,
		Result:         pc,
	}
	if pc.s.transparent(pc.snap) {
		pc.r.Source = pc.c.RemoteAddrPort()
	}
	return &pc.r
}

// Connected counts the connection on its backend; a client that fell over
// to another backend is re-pinned there. It runs on the event loop.
func (pc *conn) Connected() {
	pc.connected = true
	pc.b.active.Add(1)
	if pc.s.e.access != nil {
		pc.start = time.Now()
	}
	if pc.b != pc.first {
		s := pc.s
		s.wg.Add(1) // this connection holds the count above zero
		go func() {
			defer s.wg.Done()
			s.repin(s.ctx, pc.pinKey, pc.first, pc.b, pc.label, &connLog{s: s, client: pc.client})
		}()
	}
	if pc.log.debug() {
		pc.log.get().WithField("backend", pc.b.name).Debug("proxying")
	}
}

// Done counts the connection and ends it (its bytes were counted as they
// moved: the route names the backend's flow). It runs on the event loop.
func (pc *conn) Done(st proxy.Stats, err error) {
	b := pc.b
	if pc.connected {
		b.active.Add(-1)
		b.conns.Add(1)
		pc.accessConn(st, err)
	}
	if pc.log.debug() {
		l := pc.log.get().WithFields(logrus.Fields{"backend": b.name, "bytes_in": st.ClientToBackend, "bytes_out": st.BackendToClient})
		if err != nil {
			l = l.WithError(err)
		}
		l.Debug("proxied connection ended")
	}
	pc.end()
}

// accessConn writes a proxied connection's line to the access log: its
// backend, bytes each way, duration since the backend accepted, and how it
// ended. It runs on the event loop (logrus formats and writes in the
// calling goroutine; no goroutine per connection).
func (pc *conn) accessConn(st proxy.Stats, err error) {
	if pc.s.e.access == nil {
		return
	}
	pc.s.e.access.WithFields(logrus.Fields{
		"event": "connection", "service": pc.s.name, "client": pc.c.RemoteAddrPort().String(), "backend": pc.b.name,
		"bytes_in": st.ClientToBackend, "bytes_out": st.BackendToClient,
		"duration": time.Since(pc.start).Round(time.Microsecond).String(), "end": endOf(pc.s.ctx, err),
	}).Info("proxied")
}

// accessReset writes the access log's line for a client reset because no
// backend answered.
func (pc *conn) accessReset() {
	if pc.s.e.access != nil {
		pc.s.e.access.WithFields(logrus.Fields{"event": "connection", "service": pc.s.name, "client": pc.c.RemoteAddrPort().String(), "end": "no backend answered"}).Info("reset")
	}
}

// endOf names how a proxied connection ended, for the access log.
func endOf(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return "closed"
	case errors.Is(err, proxy.ErrIdle):
		return "idle-timeout"
	case ctx.Err() != nil && (errors.Is(err, ctx.Err()) || errors.Is(err, context.Cause(ctx))):
		return "shutdown"
	}
	return "error: " + err.Error()
}

// accessPin writes a pin event to the access log: pinned, pinned-by-hand,
// migrated (from names the old backend), unpinned.
func (s *service) accessPin(event string, client netip.Addr, backend, from, key string) {
	if s.e.access == nil {
		return
	}
	f := logrus.Fields{"event": event, "service": s.name, "client": client.String()}
	if backend != "" {
		f["backend"] = backend
	}
	if from != "" {
		f["from"] = from
	}
	if key != "" {
		f["key"] = key
	}
	s.e.access.WithFields(f).Info("pin")
}

// unpinnedLabel is the label proxy gets for a client served without a pin,
// which a failed dial must not pin elsewhere. (A key of these very bytes
// would only lose that re-pin.)
const unpinnedLabel = "\x00unpinned"

// maxDialAttempts bounds how many backends one connection tries.
const maxDialAttempts = 3

// DialFailed reports the failure to the health monitor and proxies the
// client to the next candidate of the backend's pool, or resets it when
// there is none (or it tried maxDialAttempts backends).
func (pc *conn) DialFailed(c *proxy.Conn, err error) {
	s, b := pc.s, pc.b
	if l := s.logs.dial.Entry(pc.log.get); l != nil {
		l.WithError(err).WithField("backend", b.name).Warn("backend dial failed")
	}
	if m := s.e.health.Load(); m != nil {
		m.ReportFailure(s.name, b.name, err)
	}
	pc.tried = append(pc.tried, b.name)
	if pc.key == "" && pc.pin.Client.IsValid() {
		pc.key = keyOf(pc.pin)
	}
	var next *backend
	if len(pc.tried) < maxDialAttempts {
		next = s.nextCandidate(pc.snap, b.pool, pc.key, pc.tried)
	}
	if next == nil {
		pc.accessReset()
		pc.reset()
		return
	}
	pc.b = next
	pc.r.Backend, pc.r.Flow = next.addr, &next.flow
	c.Proxy(&pc.r)
}

func (s *service) nextCandidate(snap *snapshot, pool, key string, tried []string) *backend {
	p := snap.router.Pool(pool)
	if p == nil {
		return nil
	}
	for _, cb := range p.Candidates(key, s.e.view, maxDialAttempts+len(tried)) {
		if !slices.Contains(tried, cb.Name) {
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
