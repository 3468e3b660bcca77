// Package fallback is handoff's userspace data plane, used where the kernel
// path (ipset + iptables DNAT) is unavailable: an in-process sticky affinity
// table with the kernel's TTL semantics (Dataplane), saved under state_dir.
// Every connection is then carried by package proxy.
package fallback

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

// Defaults and internal cadences of the affinity table.
const (
	DefaultSaveInterval = 30 * time.Second // Options.SaveInterval when 0

	sweepInterval  = 10 * time.Second // periodic removal of expired pins
	sweepOnFullGap = time.Second      // at most one extra sweep per second when a backend is full
	fullLogGap     = 10 * time.Second // at most one "table full" warning per backend per gap
	shardCount     = 64               // power of two
	never          = math.MaxInt64    // entry.expires of a pin that never expires
)

// Options configure New. The zero value is usable: no persistence, the
// standard logger, real time.
type Options struct {
	// StateDir holds affinity.json. "" disables persistence.
	StateDir string
	// SaveInterval is how often the table is saved while running (it is
	// always saved by Close). 0 means DefaultSaveInterval.
	SaveInterval time.Duration
	// Logger receives the table's logs; nil means logrus' standard logger.
	Logger *logrus.Entry
	// Now is the clock pin expiries are computed with; nil means time.Now.
	// It is a test seam.
	Now func() time.Time
}

// Dataplane is the userspace affinity table: which backend each client of a
// service is pinned to, with the kernel data plane's semantics (a pin lives
// ClientTTL since the client's last new connection, at most MaxClients pins
// per backend). It implements balancer.Dataplane; every connection is proxied
// by the balancer, which asks Lookup where to send it.
//
// All methods are safe for concurrent use. Lookup takes only a read lock of
// one of 64 shards, so lookups of different clients do not contend.
type Dataplane struct {
	syncs        dataplane.SyncRecorder
	log          *logrus.Entry
	now          func() time.Time
	base         time.Time // expiries are nanoseconds since base (monotonic when now is time.Now)
	stateDir     string
	saveInterval time.Duration

	cfg    atomic.Pointer[table] // services of the last Sync; nil before the first
	shards [shardCount]shard

	syncMu  sync.Mutex // serializes Sync and guards pending
	pending []record   // pins loaded from disk, applied by the first Sync

	saveMu    sync.Mutex   // serializes saves
	lastSweep atomic.Int64 // since-base time of the last sweep
	refused   atomic.Uint64

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// table is an immutable snapshot of the declared services; Sync replaces it.
type table struct {
	services map[string]*service
}

type service struct {
	name       string
	ttl        time.Duration
	maxClients int
	backends   map[string]*backend
}

// backend outlives Syncs that keep it (same service, same name), so its pin
// count stays exact; entries point at it.
type backend struct {
	service    string
	name       string
	pins       atomic.Int64 // entries pointing here, live or expired-but-not-removed
	refused    atomic.Uint64
	lastFull   atomic.Int64 // since-base time of the last "full" warning
	lastLogged atomic.Uint64
}

type shard struct {
	mu    sync.RWMutex
	pins  map[pinKey]*entry
	dirty atomic.Bool // changed since the last save
}

type pinKey struct {
	service string
	client  netip.Addr
}

// entry is one pin. backend and key change only under the shard's write
// lock; expires is refreshed by Lookup under the read lock.
type entry struct {
	backend *backend
	key     string
	expires atomic.Int64 // since-base nanoseconds; never = no expiry
}

// New returns an empty affinity table, or the one saved in o.StateDir. Pins
// loaded from disk stay pending until the first Sync, which keeps those of
// declared services and backends. A corrupt state file is logged, renamed
// aside and ignored. The caller must Close the Dataplane.
func New(o Options) (*Dataplane, error) {
	d := &Dataplane{
		log:          o.Logger,
		now:          o.Now,
		stateDir:     o.StateDir,
		saveInterval: o.SaveInterval,
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	if d.log == nil {
		d.log = logrus.NewEntry(logrus.StandardLogger())
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.saveInterval <= 0 {
		d.saveInterval = DefaultSaveInterval
	}
	d.base = d.now()
	d.lastSweep.Store(math.MinInt64)
	for i := range d.shards {
		d.shards[i].pins = make(map[pinKey]*entry)
	}
	if d.stateDir != "" {
		pending, err := d.load()
		if err != nil {
			return nil, err
		}
		d.pending = pending
	}
	go d.maintain()
	return d, nil
}

// Close stops the sweeper, saves the table (when persistence is on) and
// returns the save's error. Later calls return the same error. The table
// stays usable in memory, but is no longer saved.
func (d *Dataplane) Close() error {
	d.closeOnce.Do(func() {
		close(d.stop)
		<-d.done
		if d.stateDir != "" {
			d.closeErr = d.save()
		}
	})
	return d.closeErr
}

// Refused returns how many Pin calls were refused because a backend held
// MaxClients pins, since New. It is a counter for metrics.
func (d *Dataplane) Refused() uint64 { return d.refused.Load() }

// SyncStats returns the counts and durations of the Syncs so far.
func (d *Dataplane) SyncStats() dataplane.SyncStats { return d.syncs.Stats() }

// Sync declares the services and backends. It remembers each service's
// ClientTTL and MaxClients (0 or less: no limit) for later Pin and Lookup
// calls, and drops the pins of services and backends s no longer declares. A
// backend is known by its service and name; changing its address keeps its
// pins. Lowering MaxClients keeps the pins already there. The first Sync also
// restores the pins loaded from disk.
func (d *Dataplane) Sync(ctx context.Context, s dataplane.State) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	start := time.Now()
	defer func() { d.syncs.Record(time.Since(start), err) }()

	old := d.cfg.Load()
	next := &table{services: make(map[string]*service, len(s.Services))}
	for _, ds := range s.Services {
		if _, dup := next.services[ds.Name]; dup {
			return fmt.Errorf("service %q: declared twice", ds.Name)
		}
		if ds.ClientTTL < 0 {
			return fmt.Errorf("service %q: negative client TTL %v", ds.Name, ds.ClientTTL)
		}
		svc := &service{
			name:       ds.Name,
			ttl:        ds.ClientTTL,
			maxClients: ds.MaxClients,
			backends:   make(map[string]*backend, len(ds.Backends)),
		}
		for _, db := range ds.Backends {
			if _, dup := svc.backends[db.Name]; dup {
				return fmt.Errorf("service %q: backend %q declared twice", ds.Name, db.Name)
			}
			if b := old.backend(ds.Name, db.Name); b != nil {
				svc.backends[db.Name] = b
			} else {
				svc.backends[db.Name] = newBackend(ds.Name, db.Name)
			}
		}
		next.services[ds.Name] = svc
	}
	// Publish first, then purge: a Pin that saw the old table holds its shard's
	// lock, so the purge of that shard runs after it and removes what it added.
	d.cfg.Store(next)
	if old == nil {
		d.restore(next)
		return nil
	}
	dropped := make(map[*backend]int)
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		for k, e := range sh.pins {
			if next.backend(k.service, e.backend.name) != e.backend {
				delete(sh.pins, k)
				e.backend.pins.Add(-1)
				dropped[e.backend]++
				sh.dirty.Store(true)
			}
		}
		sh.mu.Unlock()
	}
	for b, n := range dropped {
		d.log.WithFields(logrus.Fields{"service": b.service, "backend": b.name, "pins": n}).
			Info("affinity table: dropped pins of a backend no longer declared")
	}
	return nil
}

// restore inserts the pins loaded from disk that t declares and that are
// still live; it runs once, in the first Sync.
func (d *Dataplane) restore(t *table) {
	now := d.since()
	var restored, undeclared, expired, full int
	for _, r := range d.pending {
		b := t.backend(r.service, r.backend)
		switch {
		case b == nil:
			undeclared++
			continue
		case r.expires <= now:
			expired++
			continue
		}
		svc := t.services[r.service]
		k := pinKey{service: r.service, client: r.client}
		sh := d.shard(r.client)
		sh.mu.Lock()
		if _, ok := sh.pins[k]; ok {
			sh.mu.Unlock() // pinned again since start, or listed twice: keep that one
			continue
		}
		if !b.reserve(svc.maxClients) {
			sh.mu.Unlock()
			full++
			continue
		}
		e := &entry{backend: b, key: r.key}
		e.expires.Store(r.expires)
		sh.pins[k] = e
		sh.dirty.Store(true)
		sh.mu.Unlock()
		restored++
	}
	d.pending = nil
	if restored+undeclared+expired+full > 0 {
		d.log.WithFields(logrus.Fields{
			"restored": restored, "undeclared": undeclared, "expired": expired, "full": full,
		}).Info("affinity table: restored saved pins")
	}
}

// Pin adds or replaces the pin of p.Client in p.Service: a client has at most
// one pin per service, so pinning it to another backend moves it. The pin
// expires p.TTL from now, or the service's ClientTTL when p.TTL is 0, or
// never when both are 0. When the backend already holds MaxClients pins, Pin
// returns an error wrapping dataplane.ErrFull and the previous pin stays; an
// undeclared service or backend wraps dataplane.ErrUnknown.
func (d *Dataplane) Pin(ctx context.Context, p dataplane.Pin) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !p.Client.IsValid() {
		return fmt.Errorf("service %q: pin: invalid client address", p.Service)
	}
	if p.TTL < 0 {
		return fmt.Errorf("service %q: pin %s: negative TTL %v", p.Service, p.Client, p.TTL)
	}
	p.Client = p.Client.Unmap()
	err := d.pin(p)
	if errors.Is(err, dataplane.ErrFull) && d.sweepIfDue() > 0 {
		err = d.pin(p) // expired pins made room, as ipset does when full
	}
	if errors.Is(err, dataplane.ErrFull) {
		d.refusedPin(p)
	}
	return err
}

func (d *Dataplane) pin(p dataplane.Pin) error {
	k := pinKey{service: p.Service, client: p.Client}
	sh := d.shard(p.Client)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	svc, b, err := d.cfg.Load().lookupBackend(p.Service, p.Backend)
	if err != nil {
		return err
	}
	ttl := p.TTL
	if ttl == 0 {
		ttl = svc.ttl
	}
	e := sh.pins[k]
	if e == nil || e.backend != b {
		if !b.reserve(svc.maxClients) {
			return fmt.Errorf("service %q backend %q: %d clients pinned: %w", p.Service, p.Backend, svc.maxClients, dataplane.ErrFull)
		}
		if e != nil {
			e.backend.pins.Add(-1)
		}
		e = &entry{backend: b} // a fresh entry: a racing Lookup still holds the old one
		sh.pins[k] = e
	}
	e.key = p.Key
	e.expires.Store(d.expiry(ttl))
	sh.dirty.Store(true)
	return nil
}

// refusedPin counts a refusal and logs it, at most once per fullLogGap per
// backend, with how many were refused since the last warning.
func (d *Dataplane) refusedPin(p dataplane.Pin) {
	d.refused.Add(1)
	svc, b, err := d.cfg.Load().lookupBackend(p.Service, p.Backend)
	if err != nil {
		return
	}
	total := b.refused.Add(1)
	now := d.since()
	last := b.lastFull.Load()
	if last != math.MinInt64 && now-last < int64(fullLogGap) || !b.lastFull.CompareAndSwap(last, now) {
		return
	}
	since := total - b.lastLogged.Swap(total)
	d.log.WithFields(logrus.Fields{
		"service": p.Service, "backend": p.Backend, "client": p.Client,
		"max_clients": svc.maxClients, "refused": since,
	}).Warn("affinity table full: new clients of this backend are not pinned (raise max_clients)")
}

// Lookup returns the live pin of client in service and, as a new connection of
// that client, refreshes it: it then expires the service's ClientTTL from now,
// or never when ClientTTL is 0 (the kernel's SET --exist --timeout rule).
// Expired pins are not returned. An undeclared service wraps
// dataplane.ErrUnknown.
func (d *Dataplane) Lookup(ctx context.Context, service string, client netip.Addr) (dataplane.Pin, bool, error) {
	client = client.Unmap()
	k := pinKey{service: service, client: client}
	sh := d.shard(client)
	now := d.since()

	sh.mu.RLock()
	t := d.cfg.Load()
	svc := t.service(service)
	if svc == nil {
		sh.mu.RUnlock()
		return dataplane.Pin{}, false, fmt.Errorf("service %q: %w", service, dataplane.ErrUnknown)
	}
	e := sh.pins[k]
	if e == nil || svc.backends[e.backend.name] != e.backend {
		sh.mu.RUnlock()
		return dataplane.Pin{}, false, nil
	}
	if exp := e.expires.Load(); exp <= now {
		sh.mu.RUnlock()
		d.removeExpired(sh, k, e)
		return dataplane.Pin{}, false, nil
	}
	e.expires.Store(d.expiryAt(now, svc.ttl))
	if !sh.dirty.Load() {
		sh.dirty.Store(true)
	}
	p := dataplane.Pin{Service: service, Backend: e.backend.name, Client: client, Key: e.key, TTL: svc.ttl}
	sh.mu.RUnlock()
	return p, true, nil
}

// removeExpired deletes e if it is still k's entry and still expired.
func (d *Dataplane) removeExpired(sh *shard, k pinKey, e *entry) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.pins[k] == e && e.expires.Load() <= d.since() {
		delete(sh.pins, k)
		e.backend.pins.Add(-1)
		sh.dirty.Store(true)
	}
}

// Unpin removes the pin of client in service if it points at backend (at any
// backend when backend is ""). No pin is not an error; an undeclared service
// or backend wraps dataplane.ErrUnknown.
func (d *Dataplane) Unpin(ctx context.Context, service, backendName string, client netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	client = client.Unmap()
	k := pinKey{service: service, client: client}
	sh := d.shard(client)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := d.cfg.Load()
	svc := t.service(service)
	if svc == nil {
		return fmt.Errorf("service %q: %w", service, dataplane.ErrUnknown)
	}
	var b *backend
	if backendName != "" {
		if b = svc.backends[backendName]; b == nil {
			return fmt.Errorf("service %q backend %q: %w", service, backendName, dataplane.ErrUnknown)
		}
	}
	e := sh.pins[k]
	if e == nil || b != nil && e.backend != b {
		return nil
	}
	delete(sh.pins, k)
	e.backend.pins.Add(-1)
	sh.dirty.Store(true)
	return nil
}

// Pins calls fn for every live pin of backend in service (of every backend
// when backend is ""), in no particular order, stopping at the first error fn
// returns. Pin.TTL is the remaining lifetime, 0 for a pin that never expires.
// fn runs without any lock held, so it may call the Dataplane; pins changed
// meanwhile may or may not be seen.
func (d *Dataplane) Pins(ctx context.Context, service, backendName string, fn func(dataplane.Pin) error) error {
	svc := d.cfg.Load().service(service)
	if svc == nil {
		return fmt.Errorf("service %q: %w", service, dataplane.ErrUnknown)
	}
	if backendName != "" && svc.backends[backendName] == nil {
		return fmt.Errorf("service %q backend %q: %w", service, backendName, dataplane.ErrUnknown)
	}
	var batch []dataplane.Pin
	for i := range d.shards {
		if err := ctx.Err(); err != nil {
			return err
		}
		sh := &d.shards[i]
		batch = batch[:0]
		now := d.since()
		sh.mu.RLock()
		for k, e := range sh.pins {
			if k.service != service || backendName != "" && e.backend.name != backendName ||
				svc.backends[e.backend.name] != e.backend {
				continue
			}
			exp := e.expires.Load()
			if exp <= now {
				continue
			}
			var ttl time.Duration
			if exp != never {
				ttl = time.Duration(exp - now)
			}
			batch = append(batch, dataplane.Pin{Service: service, Backend: e.backend.name, Client: k.client, Key: e.key, TTL: ttl})
		}
		sh.mu.RUnlock()
		for _, p := range batch {
			if err := fn(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// Forget returns 0, nil: it has nothing to drop. In the kernel data plane a
// client's established flows live on in conntrack after its pin moves, so
// Forget deletes those entries. Here every connection is a userspace proxy
// (a proxy.Route the balancer owns) that the table never sees: the pin is
// read once, when the connection is accepted, and no per-flow state is kept.
// Cutting live proxied connections is the balancer's job.
func (d *Dataplane) Forget(ctx context.Context, service, backend string) (int, error) {
	return 0, nil
}

// maintain is the Dataplane's one goroutine: it sweeps expired pins and saves
// the table periodically until Close.
func (d *Dataplane) maintain() {
	defer close(d.done)
	sweep := time.NewTicker(sweepInterval)
	defer sweep.Stop()
	var saveC <-chan time.Time
	if d.stateDir != "" {
		save := time.NewTicker(d.saveInterval)
		defer save.Stop()
		saveC = save.C
	}
	for {
		select {
		case <-d.stop:
			return
		case <-sweep.C:
			d.sweep()
		case <-saveC:
			if !d.dirty() {
				continue
			}
			if err := d.save(); err != nil {
				d.log.WithError(err).Warn("affinity table: save failed; will retry")
			}
		}
	}
}

// sweepIfDue sweeps unless a sweep ran within sweepOnFullGap, and returns how
// many pins it removed.
func (d *Dataplane) sweepIfDue() int {
	last := d.lastSweep.Load()
	if last != math.MinInt64 && d.since()-last < int64(sweepOnFullGap) {
		return 0
	}
	return d.sweep()
}

// sweep removes every expired pin and returns how many.
func (d *Dataplane) sweep() int {
	d.lastSweep.Store(d.since())
	removed := 0
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.Lock()
		now := d.since()
		for k, e := range sh.pins {
			if e.expires.Load() <= now {
				delete(sh.pins, k)
				e.backend.pins.Add(-1)
				removed++
				sh.dirty.Store(true)
			}
		}
		sh.mu.Unlock()
	}
	if removed > 0 {
		d.log.WithField("pins", removed).Debug("affinity table: expired pins removed")
	}
	return removed
}

// since returns the table clock: nanoseconds since base.
func (d *Dataplane) since() int64 { return int64(d.now().Sub(d.base)) }

// expiry returns the expires value of a pin with lifetime ttl (0 = never).
func (d *Dataplane) expiry(ttl time.Duration) int64 { return d.expiryAt(d.since(), ttl) }

func (d *Dataplane) expiryAt(now int64, ttl time.Duration) int64 {
	if ttl <= 0 || int64(ttl) > never-now {
		return never
	}
	return now + int64(ttl)
}

// shard returns the shard holding client's pins (of every service).
func (d *Dataplane) shard(client netip.Addr) *shard {
	a := client.As16()
	var h uint64
	for _, c := range a {
		h = (h ^ uint64(c)) * 0x100000001b3 // FNV-1a
	}
	return &d.shards[(h^h>>32)&(shardCount-1)]
}

func newBackend(service, name string) *backend {
	b := &backend{service: service, name: name}
	b.lastFull.Store(math.MinInt64)
	return b
}

// reserve takes one of the backend's max pin slots (max <= 0: unlimited).
func (b *backend) reserve(max int) bool {
	for {
		n := b.pins.Load()
		if max > 0 && n >= int64(max) {
			return false
		}
		if b.pins.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (t *table) service(name string) *service {
	if t == nil {
		return nil
	}
	return t.services[name]
}

func (t *table) backend(svc, name string) *backend {
	if s := t.service(svc); s != nil {
		return s.backends[name]
	}
	return nil
}

func (t *table) lookupBackend(svcName, name string) (*service, *backend, error) {
	svc := t.service(svcName)
	if svc == nil {
		return nil, nil, fmt.Errorf("service %q: %w", svcName, dataplane.ErrUnknown)
	}
	b := svc.backends[name]
	if b == nil {
		return nil, nil, fmt.Errorf("service %q backend %q: %w", svcName, name, dataplane.ErrUnknown)
	}
	return svc, b, nil
}
