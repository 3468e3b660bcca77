package classifier

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"

	"github.com/handoff-lb/handoff/config"
)

// A Router holds one service's classification: how to read a client's key,
// its routes and its pools. It is immutable and safe for concurrent use; a
// config reload or a backend registration builds a new one.
type Router struct {
	service  string
	classify config.Classify
	payload  config.Payload // MaxBytes and Timeout positive unless classify is source
	parser   Parser         // nil for classify: source
	routes   []route
	pools    []*Pool
	def      *Pool
}

type route struct {
	prefix netip.Prefix   // valid for cidr
	key    string         // set for key
	re     *regexp.Regexp // set for key_regex
	lo, hi int            // hash_range, when hash is set
	hash   bool
	pool   *Pool
}

// A Decision is where one client goes, for the balancer to pin.
type Decision struct {
	Pool    string
	Backend string
	Address netip.AddrPort
	Key     string // the classification key
	Label   string // the key for humans and the ipset comment; see Label
}

// DefaultPool is the name of the pool that takes clients no route matches.
const DefaultPool = config.DefaultPool

// New builds the Router of svc, taken as config gives it: it defaults
// nothing. It checks what it relies on (known classify and balance names,
// positive payload max_bytes and timeout unless classify is source, routes
// naming existing pools, one condition per route, unique backend names,
// weights ≥ 1) and copies what it keeps, so svc may change afterwards.
func New(svc *config.Service) (*Router, error) {
	r := &Router{service: svc.Name, classify: svc.Classify}
	if r.classify != config.ClassifySource {
		r.payload = svc.Payload
		p, err := NewParser(r.classify, r.payload)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", svc.Name, err)
		}
		if r.payload.MaxBytes <= 0 || r.payload.Timeout <= 0 {
			return nil, fmt.Errorf("service %q: payload max_bytes %d, timeout %v: want both more than 0", svc.Name, r.payload.MaxBytes, r.payload.Timeout)
		}
		r.parser = p
	}
	byName := make(map[string]*Pool, len(svc.Pools))
	backends := map[string]string{}
	for i := range svc.Pools {
		cp := &svc.Pools[i]
		if cp.Name == "" || byName[cp.Name] != nil {
			return nil, fmt.Errorf("service %q: pool name %q empty or repeated", svc.Name, cp.Name)
		}
		for _, b := range cp.Backends {
			if other, dup := backends[b.Name]; dup || b.Name == "" {
				return nil, fmt.Errorf("service %q pool %q: backend name %q empty or already in pool %q", svc.Name, cp.Name, b.Name, other)
			}
			backends[b.Name] = cp.Name
		}
		p, err := newPool(svc.Name, cp)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", svc.Name, err)
		}
		byName[p.name] = p
		r.pools = append(r.pools, p)
	}
	r.def = byName[DefaultPool]
	for i, rt := range svc.Routes {
		m := rt.Match
		out := route{pool: byName[rt.Pool], prefix: m.CIDR, key: m.Key, re: m.KeyRegex}
		if out.pool == nil {
			return nil, fmt.Errorf("service %q route %d: no pool %q", svc.Name, i+1, rt.Pool)
		}
		set := 0
		for _, b := range []bool{m.CIDR.IsValid(), m.Key != "", m.KeyRegex != nil, m.HashRange != nil} {
			if b {
				set++
			}
		}
		if set != 1 {
			return nil, fmt.Errorf("service %q route %d: %d conditions, need exactly one", svc.Name, i+1, set)
		}
		if h := m.HashRange; h != nil {
			if h[0] < 0 || h[0] > h[1] || h[1] >= config.HashRangeModulus {
				return nil, fmt.Errorf("service %q route %d: hash_range %v not within [0, %d)", svc.Name, i+1, *h, config.HashRangeModulus)
			}
			out.hash, out.lo, out.hi = true, h[0], h[1]
		}
		out.prefix = out.prefix.Masked()
		r.routes = append(r.routes, out)
	}
	return r, nil
}

// Service returns the service's name.
func (r *Router) Service() string { return r.service }

// Pools returns the service's pools in config order. Don't modify the slice.
func (r *Router) Pools() []*Pool { return r.pools }

// Pool returns the pool with the given name, or nil.
func (r *Router) Pool(name string) *Pool {
	for _, p := range r.pools {
		if p.name == name {
			return p
		}
	}
	return nil
}

// Classify returns the key of a new client connection. With classify:
// source that is [SourceKey] of the remote address, and nothing is read.
// Otherwise it is [Read] with the service's parser, max_bytes and timeout;
// peeked holds the bytes read, on error too. conn stays the caller's.
func (r *Router) Classify(ctx context.Context, conn net.Conn) (key string, peeked []byte, err error) {
	if r.parser == nil {
		a, err := remoteAddr(conn)
		if err != nil {
			return "", nil, err
		}
		return SourceKey(a), nil, nil
	}
	return Read(ctx, conn, r.parser, r.payload.MaxBytes, r.payload.Timeout)
}

func remoteAddr(conn net.Conn) (netip.Addr, error) {
	if a, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr(), nil
	}
	ap, err := netip.ParseAddrPort(conn.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("client address: %w", err)
	}
	return ap.Addr(), nil
}

// Route returns the pool for a client and its key: the pool of the first
// route that matches (cidr: the client's address; key: the exact key;
// key_regex: the key; hash_range: [Bucket] of the key), else the pool
// named "default", else an error wrapping [ErrNoRoute].
func (r *Router) Route(client netip.Addr, key string) (*Pool, error) {
	client = client.Unmap()
	bucket := -1
	for i := range r.routes {
		rt := &r.routes[i]
		switch {
		case rt.prefix.IsValid():
			if rt.prefix.Contains(client) {
				return rt.pool, nil
			}
		case rt.key != "":
			if rt.key == key {
				return rt.pool, nil
			}
		case rt.re != nil:
			if rt.re.MatchString(key) {
				return rt.pool, nil
			}
		case rt.hash:
			if bucket < 0 {
				bucket = Bucket(key)
			}
			if rt.lo <= bucket && bucket <= rt.hi {
				return rt.pool, nil
			}
		}
	}
	if r.def != nil {
		return r.def, nil
	}
	return nil, fmt.Errorf("service %q: %w", r.service, ErrNoRoute)
}

// Decide routes a client with key (as Classify returned it) to a pool and
// picks a backend there with v (nil: every backend usable). Errors wrap
// [ErrNoRoute] or [ErrNoBackend].
func (r *Router) Decide(client netip.Addr, key string, v View) (Decision, error) {
	p, err := r.Route(client, key)
	if err != nil {
		return Decision{}, err
	}
	return r.decide(p, key, Label(r.classify, key), v)
}

// Unclassified decides for a client whose key could not be read, under
// on_unclassified: default. It skips the routes and picks in the default
// pool, hashing the client's address ([SourceKey]) so that such clients
// still spread over its backends; the label is "src=ADDRESS". Without a
// default pool it returns an error wrapping [ErrNoRoute].
func (r *Router) Unclassified(client netip.Addr, v View) (Decision, error) {
	if r.def == nil {
		return Decision{}, fmt.Errorf("service %q: %w", r.service, ErrNoRoute)
	}
	key := SourceKey(client)
	return r.decide(r.def, key, Label(config.ClassifySource, key), v)
}

func (r *Router) decide(p *Pool, key, label string, v View) (Decision, error) {
	b, err := p.Pick(key, v)
	if err != nil {
		if errors.Is(err, ErrNoBackend) {
			err = fmt.Errorf("service %q: %w", r.service, err)
		}
		return Decision{}, err
	}
	return Decision{Pool: p.name, Backend: b.Name, Address: b.Address, Key: key, Label: label}, nil
}
