package classifier

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/handoff-lb/handoff/config"
)

// A View tells pools which backends may take new clients and how loaded
// they are. Health and drain state live in the balancer, which implements
// View; a nil View means every backend is usable with no load.
//
// Generation must change whenever an answer of Usable changes, and only
// after the new answer is visible: pools cache their tables per generation.
// Use one View (one generation counter) per Router. All methods must be
// safe for concurrent use and fast: Pick calls Generation every time and
// least-conn calls Load for every usable backend.
type View interface {
	// Usable reports whether backend of service may take new clients
	// (healthy and not draining).
	Usable(service, backend string) bool
	// Load is the backend's current load for least-conn: its live
	// connections, or its pinned clients.
	Load(service, backend string) int
	// Generation identifies the current answers of Usable.
	Generation() uint64
}

// A Pool is a named group of backends and the policy that picks one of them
// for a key. It is immutable apart from its caches and round-robin counter,
// and safe for concurrent use.
type Pool struct {
	service  string
	name     string
	balance  config.Balance
	backends []config.Backend
	names    []string
	weights  []uint64 // divided by their GCD
	size     int      // maglev table size

	mu  sync.Mutex // serializes rebuilds; lookups are lock-free
	cur atomic.Pointer[poolState]
	exc atomic.Pointer[poolState]
	rr  atomic.Uint64
}

// poolState is what a pool precomputes for one set of usable backends.
type poolState struct {
	gen    uint64
	noView bool     // built for a nil View
	except int      // backend index left out on purpose, or -1
	usable []uint16 // usable backend indices in list order
	cum    []uint64 // cumulative weights of usable (source-hash, random)
	seq    []uint16 // smooth weighted round-robin sequence of backend indices
	table  []uint16 // maglev lookup table of backend indices
}

// maxSeq bounds the round-robin sequence; larger weight sums are scaled.
const maxSeq = 1 << 16

func newPool(service string, p *config.Pool) (*Pool, error) {
	switch p.Balance {
	case config.BalanceMaglev, config.BalanceSourceHash, config.BalanceRoundRobin,
		config.BalanceRandom, config.BalanceHotStandby, config.BalanceLeastConn:
	default:
		return nil, fmt.Errorf("pool %q: unknown balance %q", p.Name, p.Balance)
	}
	if len(p.Backends) >= noBackend {
		return nil, fmt.Errorf("pool %q: %d backends, at most %d", p.Name, len(p.Backends), noBackend-1)
	}
	pool := &Pool{
		service:  service,
		name:     p.Name,
		balance:  p.Balance,
		backends: slices.Clone(p.Backends),
		names:    make([]string, len(p.Backends)),
		weights:  make([]uint64, len(p.Backends)),
		size:     maglevSize(len(p.Backends)),
	}
	var g uint64
	for i, b := range p.Backends {
		if b.Weight < 1 {
			return nil, fmt.Errorf("pool %q backend %q: weight %d, must be ≥ 1", p.Name, b.Name, b.Weight)
		}
		pool.names[i] = b.Name
		pool.weights[i] = uint64(b.Weight)
		g = gcd(g, uint64(b.Weight))
	}
	for i := range pool.weights {
		pool.weights[i] /= g
	}
	return pool, nil
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// Balance returns the pool's policy.
func (p *Pool) Balance() config.Balance { return p.balance }

// Backends returns the pool's backends in config order. The slice is
// shared: don't modify it.
func (p *Pool) Backends() []config.Backend { return p.backends }

// Pick returns the backend for key among the backends v says are usable,
// or an error wrapping [ErrNoBackend]:
//
//   - maglev: consistent hashing of the key (see maglevTable), weighted.
//   - source-hash: hash(key) mod Σweights over the usable backends in list
//     order, each taking weight consecutive slots.
//   - round-robin: smooth weighted round-robin, ignoring key.
//   - random: weighted random, ignoring key.
//   - hot-standby: the first usable backend in list order.
//   - least-conn: the smallest Load/weight, the earliest in list order on a
//     tie.
//
// Pick does not allocate once the pool's tables for v's generation are
// built (the first Pick of a generation builds them).
func (p *Pool) Pick(key string, v View) (config.Backend, error) {
	return p.pick(key, v, p.state(v, -1))
}

// PickExcept is Pick with backend except also treated as unusable: where a
// client of except would go if except were gone. An except that is not in
// the pool is ignored. The tables without except are cached too, so
// re-placing many clients of one backend is cheap.
func (p *Pool) PickExcept(key string, v View, except string) (config.Backend, error) {
	return p.pick(key, v, p.state(v, p.index(except)))
}

func (p *Pool) index(name string) int {
	return slices.Index(p.names, name)
}

func (p *Pool) pick(key string, v View, st *poolState) (config.Backend, error) {
	if len(st.usable) == 0 {
		return config.Backend{}, fmt.Errorf("pool %q: %w", p.name, ErrNoBackend)
	}
	return p.backends[p.first(key, v, st)], nil
}

// first returns the index of the backend Pick chooses; st has a usable
// backend.
func (p *Pool) first(key string, v View, st *poolState) int {
	switch p.balance {
	case config.BalanceMaglev:
		return int(st.table[reduce(hash64(key, seedMaglevKey), uint64(len(st.table)))])
	case config.BalanceSourceHash:
		return int(st.usable[st.slot(hash64(key, seedSourceHash))])
	case config.BalanceRoundRobin:
		return int(st.seq[(p.rr.Add(1)-1)%uint64(len(st.seq))])
	case config.BalanceRandom:
		return int(st.usable[st.slot(rand.Uint64())])
	case config.BalanceLeastConn:
		return int(st.usable[p.leastLoaded(v, st)])
	}
	return int(st.usable[0]) // hot-standby
}

// slot maps h onto the usable backends by weight and returns a position in
// st.usable.
func (st *poolState) slot(h uint64) int {
	x := reduce(h, st.cum[len(st.cum)-1])
	i, _ := slices.BinarySearch(st.cum, x+1)
	return i
}

// leastLoaded returns the position in st.usable of the smallest load/weight.
func (p *Pool) leastLoaded(v View, st *poolState) int {
	best, bl, bw := 0, uint64(0), uint64(0)
	for k, i := range st.usable {
		l, w := p.load(v, int(i)), p.weights[i]
		if k == 0 || l*bw < bl*w {
			best, bl, bw = k, l, w
		}
	}
	return best
}

func (p *Pool) load(v View, i int) uint64 {
	if v == nil {
		return 0
	}
	return uint64(max(0, v.Load(p.service, p.names[i])))
}

// Candidates returns up to n distinct usable backends to try in order for
// key, for dial retries; the first is what Pick would return (and counts as
// a pick for round-robin and random). After the first:
//
//   - maglev: the owners of the following table slots, in table order.
//   - round-robin: the rest of the round-robin sequence.
//   - least-conn: the next least loaded.
//   - others: the following usable backends in list order, wrapping.
//
// It returns nil when no backend is usable.
func (p *Pool) Candidates(key string, v View, n int) []config.Backend {
	st := p.state(v, -1)
	n = min(n, len(st.usable))
	if n <= 0 {
		return nil
	}
	out := make([]config.Backend, 0, n)
	seen := make([]bool, len(p.backends))
	add := func(i int) {
		if !seen[i] && len(out) < n {
			seen[i] = true
			out = append(out, p.backends[i])
		}
	}
	first := p.first(key, v, st)
	add(first)
	switch p.balance {
	case config.BalanceMaglev:
		s := reduce(hash64(key, seedMaglevKey), uint64(len(st.table)))
		for j := 1; j < len(st.table) && len(out) < n; j++ {
			add(int(st.table[(s+uint64(j))%uint64(len(st.table))]))
		}
	case config.BalanceRoundRobin:
		s := slices.Index(st.seq, uint16(first))
		for j := 1; j < len(st.seq) && len(out) < n; j++ {
			add(int(st.seq[(s+j)%len(st.seq)]))
		}
	case config.BalanceLeastConn:
		rest := slices.Clone(st.usable)
		slices.SortStableFunc(rest, func(a, b uint16) int {
			la, lb := p.load(v, int(a))*p.weights[b], p.load(v, int(b))*p.weights[a]
			switch {
			case la < lb:
				return -1
			case la > lb:
				return 1
			}
			return 0
		})
		for _, i := range rest {
			add(int(i))
		}
	}
	s := slices.Index(st.usable, uint16(first))
	for j := 1; j < len(st.usable); j++ {
		add(int(st.usable[(s+j)%len(st.usable)]))
	}
	return out
}

// state returns the pool's tables for v (with backend except left out when
// except ≥ 0), building them if v's generation changed.
func (p *Pool) state(v View, except int) *poolState {
	slot := &p.cur
	if except >= 0 {
		slot = &p.exc
	}
	var gen uint64
	if v != nil {
		gen = v.Generation()
	}
	if st := slot.Load(); st != nil && st.gen == gen && st.noView == (v == nil) && st.except == except {
		return st
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	old := slot.Load()
	if old != nil && old.gen == gen && old.noView == (v == nil) && old.except == except {
		return old
	}
	usable := make([]uint16, 0, len(p.backends))
	for i, name := range p.names {
		if i != except && (v == nil || v.Usable(p.service, name)) {
			usable = append(usable, uint16(i))
		}
	}
	var st *poolState
	if old != nil && old.except == except && slices.Equal(old.usable, usable) {
		c := *old // same backends: keep the tables
		st = &c
	} else {
		st = p.build(usable)
	}
	st.gen, st.noView, st.except = gen, v == nil, except
	slot.Store(st)
	return st
}

// build precomputes what the pool's policy needs for a set of usable
// backends.
func (p *Pool) build(usable []uint16) *poolState {
	st := &poolState{usable: usable}
	if len(usable) == 0 {
		return st
	}
	switch p.balance {
	case config.BalanceMaglev:
		st.table = maglevTable(p.names, p.weights, usable, p.size)
	case config.BalanceSourceHash, config.BalanceRandom:
		st.cum = make([]uint64, len(usable))
		var sum uint64
		for k, i := range usable {
			sum += p.weights[i]
			st.cum[k] = sum
		}
	case config.BalanceRoundRobin:
		st.seq = smoothRoundRobin(p.weights, usable)
	}
	return st
}

// smoothRoundRobin returns one period of nginx's smooth weighted
// round-robin over usable: each backend appears weight times, spread out.
func smoothRoundRobin(weights []uint64, usable []uint16) []uint16 {
	w := make([]int64, len(usable))
	var total int64
	for k, i := range usable {
		w[k] = int64(weights[i])
		total += w[k]
	}
	if total > maxSeq { // scale down, keeping every backend
		var t int64
		for k := range w {
			w[k] = max(1, w[k]*maxSeq/total)
			t += w[k]
		}
		total = t
	}
	cur := make([]int64, len(usable))
	seq := make([]uint16, total)
	for s := range seq {
		best := 0
		for k := range cur {
			cur[k] += w[k]
			if cur[k] > cur[best] {
				best = k
			}
		}
		cur[best] -= total
		seq[s] = usable[best]
	}
	return seq
}
