package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/hostname"
)

// Limits checked by Parse.
const (
	MaxWeight       = 1000
	MaxClientTTL    = 2147483 * time.Second // ipset's largest timeout
	MaxPayloadBytes = 1 << 20               // payload.max_bytes
)

var (
	serviceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,11}$`)
	objectNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`) // pools and backends
)

var (
	modes         = []Mode{ModeAuto, ModeKernel, ModeUserspace}
	logLevels     = []LogLevel{LogTrace, LogDebug, LogInfo, LogWarn, LogError}
	logFormats    = []LogFormat{LogText, LogJSON}
	firstConns    = []FirstConnection{FirstProxy, FirstReset}
	unclassified  = []OnUnclassified{UnclassifiedDefault, UnclassifiedReject}
	backendDown   = []OnBackendDown{BackendDownRehash, BackendDownReclassify}
	onFull        = []OnFull{OnFullProxy, OnFullReject}
	proxyProtocol = []ProxyProtocol{ProxyProtocolOff, ProxyProtocolV1, ProxyProtocolV2}
	balances      = []Balance{BalanceMaglev, BalanceSourceHash, BalanceRoundRobin, BalanceRandom, BalanceHotStandby, BalanceLeastConn}
	checks        = []Check{CheckTCP, CheckHTTP, CheckSendExpect, CheckNone}
)

var (
	topKeys      = []string{"mode", "log", "admin", "metrics", "kernel", "state_dir", "services", "cluster"}
	metricsKeys  = []string{"listen"}
	kernelKeys   = []string{"mark_mask", "queue", "route_table", "rule_priority"}
	logKeys      = []string{"level", "format", "summary_interval", "access"}
	adminKeys    = []string{"listen", "token_file", "pprof"}
	serviceKeys  = []string{"name", "listen", "first_connection", "client_ttl", "snat", "max_clients", "on_full", "pin_budget", "ipv6_pin_prefix", "classify", "payload", "on_unclassified", "on_backend_down", "timeouts", "max_connections", "proxy_protocol", "health", "routes", "pools", "balance", "backends", "failback"}
	shorthand    = []string{"balance", "backends", "failback"}
	payloadKeys  = []string{"pattern", "max_bytes", "timeout"}
	timeoutsKeys = []string{"connect", "idle"}
	healthKeys   = []string{"check", "interval", "timeout", "rise", "fall", "http", "send", "expect"}
	httpKeys     = []string{"path", "expect_status"}
	routeKeys    = []string{"match", "pool"}
	matchKeys    = []string{"cidr", "key", "key_regex", "hash_range"}
	poolKeys     = []string{"name", "balance", "failback", "backends"}
	backendKeys  = []string{"name", "address", "weight"}
	budgetKeys   = []string{"per_prefix", "ipv4_prefix", "ipv6_prefix"}

	// Keys written one level too high, and where they belong.
	topHints     = map[string]string{"name": "services[].name", "listen": "services[].listen", "pools": "services[].pools", "backends": "services[].backends", "routes": "services[].routes", "level": "log.level", "format": "log.format", "token_file": "admin.token_file", "pprof": "admin.pprof"}
	serviceHints = map[string]string{"check": "health.check", "interval": "health.interval", "rise": "health.rise", "fall": "health.fall", "pattern": "payload.pattern", "max_bytes": "payload.max_bytes", "connect": "timeouts.connect", "idle": "timeouts.idle", "match": "routes[].match", "address": "backends[].address", "weight": "backends[].weight"}
	poolHints    = map[string]string{"address": "backends[].address", "weight": "backends[].weight"}
)

// Load reads and parses the config file at path. An unreadable file is one
// error naming the path; otherwise the error is Parse's, plus what a
// deployed file must also get right: admin.token_file exists and holds a
// token, and every pool has at least one backend (a pool without one
// resets every new client).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return parse(path, data, true)
}

// Parse parses and validates a config, applying defaults. file names the
// config in errors and becomes Config.Path. On failure the error is an
// Errors holding every problem found, sorted by position, and the config
// is nil.
//
// Beyond DESIGN.md section 4: YAML anchors, aliases and merge keys (<<)
// work, top-level keys starting with "x-" are ignored (a place to define
// anchors), and failback may be written on the service with the balance
// and backends shorthand.
func Parse(file string, data []byte) (*Config, error) {
	return parse(file, data, false)
}

// parse is Parse; with files it also checks what a deployed file must
// hold and Parse leaves to the caller, as Load does: the files the config
// names exist and can be read (admin.token_file), and every pool has a
// backend.
func parse(file string, data []byte, files bool) (*Config, error) {
	p := &parser{file: file, files: files}
	var c *Config
	if root := p.decode(data); root != nil {
		c = p.config(root)
	}
	if len(p.errs) > 0 {
		return nil, p.errs.sorted()
	}
	c.Path = file
	return c, nil
}

// svcPos is where a parsed service's parts are written, for the checks
// across services.
type svcPos struct {
	name, listen *yaml.Node
	backends     []*yaml.Node // name nodes of backends with valid names, in order
}

func (p *parser) config(root *yaml.Node) *Config {
	f := p.mapping(root, "", "", topKeys, topHints)
	if f.bad {
		return nil
	}
	c := &Config{}
	c.Mode, _ = enum(f, "mode", ModeAuto, modes)
	p.kernelMode = c.Mode == ModeKernel || c.Mode == ModeAuto

	lf := f.sub("log", logKeys)
	c.Log.Level, _ = enum(lf, "level", LogInfo, logLevels)
	c.Log.Format, _ = enum(lf, "format", LogText, logFormats)
	c.Log.SummaryInterval, _ = lf.duration("summary_interval", DefaultSummaryInterval)
	c.Log.Access = lf.boolean("access", true)

	af := f.sub("admin", adminKeys)
	var tfn *yaml.Node
	c.Admin.TokenFile, tfn = af.str("token_file", "")
	if tfn != nil && p.files && c.Admin.TokenFile != "" {
		if err := checkTokenFile(c.Admin.TokenFile); err != nil {
			af.errorf(tfn, "token_file", "%v", err)
		}
	}
	c.Admin.Pprof = af.boolean("pprof", false)
	var adminAddrs []netip.AddrPort
	c.Admin.Listen, adminAddrs = p.adminListen(af, c.Admin.TokenFile)
	mf := f.sub("metrics", metricsKeys)
	var metricsAddrs []netip.AddrPort
	c.Metrics.Listen, metricsAddrs = p.metricsListen(mf, adminAddrs)

	c.Kernel = p.kernel(f.sub("kernel", kernelKeys))

	var sn *yaml.Node
	c.StateDir, sn = f.str("state_dir", DefaultStateDir)
	if sn != nil && !filepath.IsAbs(c.StateDir) {
		f.errorf(sn, "state_dir", "%q is not an absolute path", c.StateDir)
	}

	items, list := f.list("services")
	switch {
	case !f.has("services"):
		f.errorf(f.pos("services"), "services", "required; a config needs at least one service")
	case list != nil && len(items) == 0:
		f.errorf(list, "services", "empty; a config needs at least one service")
	}
	var pos []*svcPos
	for i, it := range items {
		s, sp := p.service(c, i, it)
		if s != nil {
			c.Services = append(c.Services, *s)
			pos = append(pos, sp)
		}
	}
	p.crossServices(c, pos, adminAddrs, metricsAddrs)
	if slots, err := dataplane.MarkSlots(c.Kernel.MarkMask); err == nil {
		for i, s := range c.Services {
			n := 0
			for _, pl := range s.Pools {
				n += len(pl.Backends)
			}
			if n > slots {
				p.at(pos[i].name, fmt.Sprintf("service %q", s.Name), "backends", "%d backends, but kernel.mark_mask %#x numbers at most %d per service", n, c.Kernel.MarkMask, slots)
			}
		}
	}
	c.Cluster = p.cluster(f)
	return c
}

// kernel reads the kernel section.
func (p *parser) kernel(kf *fields) Kernel {
	k := Kernel{}
	mask, mn := kf.integer("mark_mask", DefaultMarkMask, 1, math.MaxUint32)
	k.MarkMask = uint32(mask)
	if mn != nil {
		if _, err := dataplane.MarkSlots(k.MarkMask); err != nil {
			kf.errorf(mn, "mark_mask", "%v", err)
			k.MarkMask = DefaultMarkMask
		}
	}
	k.Queue, _ = kf.integer("queue", DefaultQueue, 1, math.MaxUint16)
	var tn *yaml.Node
	k.RouteTable, tn = kf.integer("route_table", DefaultRouteTable, 1, 0x7fffffff)
	if k.RouteTable >= 253 && k.RouteTable <= 255 {
		kf.errorf(tn, "route_table", "%d is one of the kernel's own tables (default, main, local); choose another", k.RouteTable)
	}
	k.RulePriority, _ = kf.integer("rule_priority", DefaultRulePriority, 1, 32765)
	return k
}

// checkTokenFile checks that the admin token file can be read and holds a
// token, as the admin server will want it.
func checkTokenFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s does not exist; create it with a random token, e.g. head -c 32 /dev/urandom | base64 > %s; chmod 600 %s", path, path, path)
		}
		return err
	}
	if strings.TrimSpace(string(b)) == "" {
		return fmt.Errorf("%s is empty; it must hold the token", path)
	}
	return nil
}

// adminListen checks admin.listen and returns it with the addresses it
// binds, when they are IP addresses.
func (p *parser) adminListen(af *fields, tokenFile string) (string, []netip.AddrPort) {
	listen, ln := af.str("listen", DefaultAdminListen)
	if ln == nil {
		return listen, []netip.AddrPort{netip.MustParseAddrPort(DefaultAdminListen)}
	}
	if listen == AdminOff {
		return "", nil
	}
	if path, ok := strings.CutPrefix(listen, AdminUnixPrefix); ok {
		if !filepath.IsAbs(path) {
			af.errorf(ln, "listen", "%q: the socket path %q is not absolute", listen, path)
		}
		return listen, nil // a socket of mode 0600 needs no token
	}
	aps, loopback, ok := listenAddrs(af, ln, "listen", listen)
	if !ok {
		return listen, nil
	}
	if !loopback && tokenFile == "" {
		af.errorf(ln, "listen", "%q is not a loopback address, so admin.token_file is required", listen)
	}
	return listen, aps
}

// metricsListen checks metrics.listen ("" or absent: off) and returns it
// with the addresses it binds.
func (p *parser) metricsListen(mf *fields, admin []netip.AddrPort) (string, []netip.AddrPort) {
	listen, ln := mf.str("listen", "")
	if ln == nil || listen == "" || listen == AdminOff {
		return "", nil
	}
	aps, _, ok := listenAddrs(mf, ln, "listen", listen)
	if !ok {
		return listen, nil
	}
	for _, a := range aps {
		for _, b := range admin {
			if a.Port() == b.Port() && (a.Addr() == b.Addr() || a.Addr().IsUnspecified() || b.Addr().IsUnspecified()) {
				mf.errorf(ln, "listen", "%q conflicts with admin.listen", listen)
				return listen, nil
			}
		}
	}
	return listen, aps
}

// listenAddrs parses the host:port of an HTTP listener and returns the
// addresses it binds and whether they are all loopback; ok is false after
// an error (recorded).
func listenAddrs(f *fields, ln *yaml.Node, key, listen string) (aps []netip.AddrPort, loopback, ok bool) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		f.errorf(ln, key, "%q is not host:port (IPv6 as [addr]:port)", listen)
		return nil, false, false
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || pn == 0 {
		f.errorf(ln, key, "%q: port %q is not a number 1..65535", listen, port)
		return nil, false, false
	}
	var addrs []netip.Addr
	switch a, err := netip.ParseAddr(host); {
	case host == "localhost":
		loopback = true
		addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
	case host == "":
		addrs = []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}
	case err == nil:
		a = a.Unmap().WithZone("")
		loopback = a.IsLoopback()
		addrs = []netip.Addr{a}
	}
	aps = make([]netip.AddrPort, len(addrs))
	for i, a := range addrs {
		aps[i] = netip.AddrPortFrom(a, uint16(pn))
	}
	return aps, loopback, true
}

func (p *parser) service(c *Config, i int, n *yaml.Node) (*Service, *svcPos) {
	where := fmt.Sprintf("services[%d]", i)
	if name := peekName(n); name != "" {
		where = fmt.Sprintf("service %q", name)
	}
	f := p.mapping(n, where, "", serviceKeys, serviceHints)
	if f.bad {
		return nil, nil
	}
	if f.node == nil {
		p.at(n, where, "", "expected a service, found nothing")
		return nil, nil
	}
	s := &Service{}
	pos := &svcPos{}

	var nameOK bool
	if f.required("name") {
		var nn *yaml.Node
		if s.Name, nn = f.str("name", ""); nn != nil {
			if nameOK = serviceNameRE.MatchString(s.Name); nameOK {
				pos.name = nn
			} else {
				f.errorf(nn, "name", "%q is not a valid service name: 1 to 12 lower-case letters, digits and '-', not starting with '-' (it goes into ipset and chain names)", s.Name)
			}
		}
	}
	if nameOK {
		if chain := dataplane.ServiceChain(s.Name); len(chain) > dataplane.MaxChainNameLen {
			f.errorf(pos.name, "name", "chain name %q is %d characters, the limit is %d", chain, len(chain), dataplane.MaxChainNameLen)
		}
	}
	if f.required("listen") {
		if v, ln := f.str("listen", ""); ln != nil {
			if ap, err := parseListen(v); err != nil {
				f.errorf(ln, "listen", "%v", err)
			} else {
				s.Listen, pos.listen = ap, ln
			}
		}
	}

	s.FirstConnection, _ = enum(f, "first_connection", FirstProxy, firstConns)
	if ttl, tn := f.duration("client_ttl", DefaultClientTTL); tn != nil {
		switch {
		case ttl%time.Second != 0:
			f.errorf(tn, "client_ttl", "%s is not whole seconds (ipset timeouts are in seconds)", tn.Value)
		case ttl > MaxClientTTL:
			f.errorf(tn, "client_ttl", "%s is more than %s (%ds, ipset's largest timeout); use 0 for no expiry", tn.Value, MaxClientTTL, int(MaxClientTTL/time.Second))
		default:
			s.ClientTTL = ttl
		}
	} else {
		s.ClientTTL = ttl
	}
	s.SNAT = f.boolean("snat", false)
	s.MaxClients, _ = f.integer("max_clients", DefaultMaxClients, 1, math.MaxInt32)
	s.OnFull, _ = enum(f, "on_full", OnFullProxy, onFull)
	bf := f.sub("pin_budget", budgetKeys)
	s.PinBudget.PerPrefix, _ = bf.integer("per_prefix", DefaultPinBudget, 0, math.MaxInt32)
	s.PinBudget.IPv4Prefix, _ = bf.integer("ipv4_prefix", DefaultBudgetPrefix4, 1, 32)
	s.PinBudget.IPv6Prefix, _ = bf.integer("ipv6_prefix", DefaultBudgetPrefix6, 1, 128)
	if s.IPv6PinPrefix, _ = f.integer("ipv6_pin_prefix", 0, 0, 128); s.IPv6PinPrefix == 128 {
		s.IPv6PinPrefix = 0 // a /128 is one address
	}

	var cn *yaml.Node
	s.Classify, cn = enum(f, "classify", ClassifySource, classifiers())
	p.payload(f, s, cn)

	s.OnUnclassified, _ = enum(f, "on_unclassified", UnclassifiedDefault, unclassified)
	s.OnBackendDown, _ = enum(f, "on_backend_down", BackendDownRehash, backendDown)

	tf := f.sub("timeouts", timeoutsKeys)
	s.Timeouts.Connect, _ = tf.positive("connect", DefaultConnectTimeout)
	s.Timeouts.Idle, _ = tf.duration("idle", DefaultIdleTimeout)
	s.MaxConnections, _ = f.integer("max_connections", DefaultMaxConnections, 1, math.MaxInt32)

	var ppn *yaml.Node
	s.ProxyProtocol, ppn = enum(f, "proxy_protocol", ProxyProtocolOff, proxyProtocol)
	// Only mode: kernel contradicts it: in auto mode such a service makes
	// the daemon run in userspace (KernelBlockers), and --mode userspace
	// overrides the file's mode.
	if ppn != nil && s.ProxyProtocol != ProxyProtocolOff && c.Mode == ModeKernel {
		f.errorf(ppn, "proxy_protocol", "%s needs userspace mode; connections forwarded in the kernel carry no PROXY header (mode is %s)", s.ProxyProtocol, c.Mode)
	}

	p.health(f, s)
	p.pools(f, s, pos, nameOK)
	p.routes(f, s)

	if s.OnUnclassified == UnclassifiedDefault && s.Pool(DefaultPool) == nil && len(s.Pools) > 0 {
		n := f.pos("pools")
		if on := f.vals["on_unclassified"]; on != nil {
			n = on
		}
		f.errorf(n, "on_unclassified", "default sends clients no route matches to the pool named \"default\", and there is none; add that pool or set on_unclassified: reject")
	}
	return s, pos
}

// payload reads the payload section, which every classifier but source
// uses. Its limits and pattern are read (and checked) for every classify,
// so that a config can switch classify without losing them; only classify:
// payload uses the pattern.
func (p *parser) payload(f *fields, s *Service, classifyNode *yaml.Node) {
	pf := f.sub("payload", payloadKeys)
	pattern, pn := pf.str("pattern", "")
	switch {
	case s.Classify == "":
		// invalid, reported
	case s.Classify == ClassifyPayload && !pf.present("pattern"):
		n := f.pos("payload")
		if n == f.node && classifyNode != nil {
			n = classifyNode
		}
		if !pf.bad {
			pf.errorf(n, "pattern", "required when classify is payload")
		}
	case s.Classify == ClassifyPayload && pn == nil:
		if isNull(pf.vals["pattern"]) {
			pf.errorf(pf.keys["pattern"], "pattern", "must not be empty")
		} // else of the wrong kind, reported
	case s.Classify == ClassifyPayload:
		if pattern == "" {
			pf.errorf(pn, "pattern", "must not be empty")
		} else if re, err := regexp.Compile(pattern); err != nil {
			pf.errorf(pn, "pattern", "invalid regexp: %v", reErr(err))
		} else {
			s.Payload.Pattern = re
		}
	case pn != nil:
		// Accepted so that a config can switch classify without losing its
		// pattern (the DESIGN.md example does this), but unused: it must
		// still compile.
		if _, err := regexp.Compile(pattern); err != nil {
			pf.errorf(pn, "pattern", "invalid regexp: %v", reErr(err))
		}
	}
	def := DefaultPayload(s.Classify)
	s.Payload.MaxBytes, _ = pf.integer("max_bytes", def.MaxBytes, 1, MaxPayloadBytes)
	s.Payload.Timeout, _ = pf.positive("timeout", def.Timeout)
}

// reErr drops the "error parsing regexp: " prefix that Compile adds.
func reErr(err error) string {
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}

func (p *parser) health(f *fields, s *Service) {
	hf := f.sub("health", healthKeys)
	h, def := &s.Health, DefaultHealth()
	h.Check, _ = enum(hf, "check", def.Check, checks)
	var in, tn *yaml.Node
	h.Interval, in = hf.positive("interval", def.Interval)
	h.Timeout, tn = hf.positive("timeout", def.Timeout)
	if h.Timeout > h.Interval {
		switch {
		case tn != nil:
			hf.errorf(tn, "timeout", "%s is longer than health.interval %s", h.Timeout, h.Interval)
		default:
			hf.errorf(in, "interval", "%s is shorter than health.timeout %s (default); the timeout must not exceed the interval", h.Interval, h.Timeout)
		}
	}
	h.Rise, _ = hf.integer("rise", def.Rise, 1, math.MaxInt32)
	h.Fall, _ = hf.integer("fall", def.Fall, 1, math.MaxInt32)

	xf := hf.sub("http", httpKeys)
	var pn *yaml.Node
	h.HTTPPath, pn = xf.str("path", def.HTTPPath)
	if pn != nil {
		if err := CheckHTTPPath(h.HTTPPath); err != nil {
			xf.errorf(pn, "path", "%q %v", h.HTTPPath, err)
		}
	}
	h.ExpectStatus, _ = xf.integer("expect_status", def.ExpectStatus, MinExpectStatus, MaxExpectStatus)
	h.Send, _ = hf.str("send", "")
	h.Expect, _ = hf.str("expect", "")
	if h.Check == CheckSendExpect && h.Expect == "" {
		n := hf.pos("expect")
		if n == nil {
			n = f.pos("health")
		}
		hf.errorf(n, "expect", "required when check is send-expect")
	}
}

// pools reads the pools of a service, or the shorthand balance/backends
// (one pool named default), and checks pool and backend names.
func (p *parser) pools(f *fields, s *Service, pos *svcPos, nameOK bool) {
	poolNames := map[string]*yaml.Node{}
	backendNames := map[string]*yaml.Node{}
	addPool := func(pf *fields, name string, nameNode *yaml.Node) {
		pool := Pool{Name: name}
		pool.Balance, _ = enum(pf, "balance", BalanceMaglev, balances)
		pool.Failback = failback(pf, pool.Balance)
		items, list := pf.list("backends")
		if p.files && len(items) == 0 && !pf.bad && (list != nil || !pf.has("backends")) {
			n := list
			if n == nil {
				n = pf.pos("backends")
			}
			pf.errorf(n, "backends", "none; a pool needs at least one backend (backends registered through the API join a pool that has one)")
		}
		for j, it := range items {
			b, bn := p.backend(s, f.where, pf.where, j, it)
			if b == nil {
				continue
			}
			if bn != nil {
				if first := backendNames[b.Name]; first != nil {
					p.at(bn, fmt.Sprintf("%s: backend %q", f.where, b.Name), "name", "duplicate; backend names are unique within a service (first at line %d)", first.Line)
				} else {
					backendNames[b.Name] = bn
					if nameOK {
						pos.backends = append(pos.backends, bn)
						p.setNameLength(s, b.Name, bn)
					}
				}
			}
			pool.Backends = append(pool.Backends, *b)
		}
		if nameNode != nil {
			if first := poolNames[name]; first != nil {
				p.at(nameNode, pf.where, "name", "duplicate; pool names are unique within a service (first at line %d)", first.Line)
			}
			poolNames[name] = nameNode
		}
		s.Pools = append(s.Pools, pool)
	}

	if !f.present("pools") {
		addPool(f, DefaultPool, nil)
		return
	}
	for _, k := range shorthand {
		if f.present(k) {
			f.errorf(f.keys[k], k, "the shorthand balance/backends/failback cannot be combined with pools; move it into a pool")
		}
	}
	items, list := f.list("pools")
	if len(items) == 0 {
		if list != nil || isNull(f.vals["pools"]) {
			f.errorf(f.pos("pools"), "pools", "at least one pool is required (or write balance and backends on the service for one pool named default)")
		}
		return
	}
	for j, it := range items {
		where := fmt.Sprintf("%s: pools[%d]", f.where, j)
		if name := peekName(it); name != "" {
			where = fmt.Sprintf("%s: pool %q", f.where, name)
		}
		pf := p.mapping(it, where, "", poolKeys, poolHints)
		if pf.bad {
			continue
		}
		if pf.node == nil {
			p.at(it, where, "", "expected a pool, found nothing")
			continue
		}
		var name string
		var nn *yaml.Node
		if pf.required("name") {
			if name, nn = pf.str("name", ""); nn != nil && !objectNameRE.MatchString(name) {
				pf.errorf(nn, "name", "%q is not a valid pool name: lower-case letters, digits, '-' and '_', starting with a letter or digit", name)
			}
		}
		addPool(pf, name, nn)
	}
}

// failback reads a pool's failback: rehash or keep, or the booleans of
// older configs (true is rehash, false keep).
func failback(pf *fields, b Balance) bool {
	def := b == BalanceHotStandby || b == BalanceMaglev || b == BalanceSourceHash
	v := pf.scalar("failback")
	if v == nil {
		return def
	}
	switch v.Value {
	case "rehash":
		return true
	case "keep":
		return false
	}
	if isBool(v.Value) {
		return pf.boolean("failback", def)
	}
	hint := ""
	if c := closest(v.Value, []string{"rehash", "keep"}); c != "" {
		hint = fmt.Sprintf("; did you mean %q?", c)
	}
	pf.errorf(v, "failback", "%q is not one of rehash, keep (or true, false)%s", v.Value, hint)
	return def
}

// backend reads one backend and applies the backend rule (checkBackend) to
// the fields it could read. The name node is nil when the name is missing
// or invalid.
func (p *parser) backend(s *Service, svcWhere, poolWhere string, j int, n *yaml.Node) (*Backend, *yaml.Node) {
	where := fmt.Sprintf("%s: backends[%d]", poolWhere, j)
	if name := peekName(n); name != "" {
		where = fmt.Sprintf("%s: backend %q", svcWhere, name)
	}
	bf := p.mapping(n, where, "", backendKeys, nil)
	if bf.bad {
		return nil, nil
	}
	if bf.node == nil {
		p.at(n, where, "", "expected a backend, found nothing")
		return nil, nil
	}
	b := &Backend{Weight: DefaultWeight}
	var parts backendCheck
	var w written
	nodes := map[string]*yaml.Node{}
	if bf.required("name") {
		if name, nn := bf.str("name", ""); nn != nil {
			b.Name, nodes["name"] = name, nn
			parts |= checkName
		}
	}
	if bf.required("address") {
		if v, an := bf.str("address", ""); an != nil {
			if ap, err := parseIPPort(v); err != nil {
				bf.errorf(an, "address", "%v", err)
			} else {
				b.Address, w.address, nodes["address"] = ap, v, an
				parts |= checkAddress
			}
		}
	}
	if weight, wn := bf.anyInteger("weight", DefaultWeight); wn != nil {
		b.Weight, w.weight, nodes["weight"] = weight, wn.Value, wn
		parts |= checkWeight
	}
	if p.kernelMode && parts&checkAddress != 0 {
		parts |= checkForward
	}
	for _, e := range s.checkBackend(*b, parts, w) {
		bf.errorf(nodes[e.Field], e.Field, "%s", e.Msg)
		delete(nodes, e.Field)
		switch e.Field {
		case "address":
			b.Address = netip.AddrPort{}
		case "weight":
			b.Weight = DefaultWeight
		}
	}
	return b, nodes["name"]
}

// setNameLength checks that the ipset name of a backend, whose name node is
// n, fits the kernel.
func (p *parser) setNameLength(s *Service, backend string, n *yaml.Node) {
	for _, e := range s.checkBackend(Backend{Name: backend}, checkSetName, written{}) {
		p.at(n, fmt.Sprintf("service %q: backend %q", s.Name, backend), e.Field, "%s", e.Msg)
	}
}

func (p *parser) routes(f *fields, s *Service) {
	items, _ := f.list("routes")
	if len(items) == 0 {
		return
	}
	pools := make(map[string]bool, len(s.Pools))
	names := make([]string, 0, len(s.Pools))
	for _, pl := range s.Pools {
		if !pools[pl.Name] {
			pools[pl.Name] = true
			names = append(names, pl.Name)
		}
	}
	known := strings.Join(names, ", ")
	if len(names) > 20 {
		known = strings.Join(names[:20], ", ") + ", …"
		names = nil // too many to suggest from
	}
	for k, it := range items {
		where := fmt.Sprintf("%s: routes[%d]", f.where, k)
		rf := p.mapping(it, where, "", routeKeys, map[string]string{"cidr": "match.cidr", "key": "match.key", "key_regex": "match.key_regex", "hash_range": "match.hash_range"})
		if rf.bad {
			continue
		}
		if rf.node == nil {
			p.at(it, where, "", "expected a route, found nothing")
			continue
		}
		var r Route
		if rf.required("match") {
			p.match(rf, s, &r.Match)
		}
		if rf.required("pool") {
			if name, pn := rf.str("pool", ""); pn != nil {
				r.Pool = name
				if !pools[name] && len(pools) > 0 {
					hint := ""
					if c := closest(name, names); c != "" {
						hint = fmt.Sprintf("; did you mean %q?", c)
					}
					rf.errorf(pn, "pool", "no pool named %q in this service (pools: %s)%s", name, known, hint)
				}
			}
		}
		s.Routes = append(s.Routes, r)
	}
}

func (p *parser) match(rf *fields, s *Service, m *Match) {
	mf := rf.sub("match", matchKeys)
	if mf.bad {
		return
	}
	var set []string
	for _, k := range matchKeys {
		if mf.present(k) {
			set = append(set, k)
		}
	}
	if len(set) != 1 {
		found := "none"
		if len(set) > 0 {
			found = strings.Join(set, ", ")
		}
		n := mf.node
		if n == nil {
			n = rf.pos("match")
		}
		rf.errorf(n, "match", "needs exactly one of cidr, key, key_regex, hash_range (found %s)", found)
	}
	if v, n := mf.str("cidr", ""); n != nil {
		if pfx, err := parsePrefix(v); err != nil {
			mf.errorf(n, "cidr", "%v", err)
		} else if s.Listen.IsValid() && pfx.Addr().Is4() != s.Listen.Addr().Is4() {
			mf.errorf(n, "cidr", "%s is %s but the service listens on %s", v, family(pfx.Addr()), family(s.Listen.Addr()))
		} else {
			m.CIDR = pfx
		}
	} else if mf.present("cidr") && mf.vals["cidr"] != nil && isNull(mf.vals["cidr"]) {
		mf.errorf(mf.keys["cidr"], "cidr", "empty")
	}
	if mf.present("key") {
		if v, n := mf.str("key", ""); n == nil || v == "" {
			if n == nil && !isNull(mf.vals["key"]) {
				// wrong kind, reported
			} else {
				if n == nil {
					n = mf.keys["key"]
				}
				mf.errorf(n, "key", "must not be empty")
			}
		} else if s.Classify == ClassifySNI || s.Classify == ClassifyHTTPHost {
			// The classifier yields names lowercased, without a trailing
			// dot, and IP literals without brackets, in canonical form:
			// a key written otherwise would never match.
			if k, ok := hostRouteKey(v); ok {
				m.Key = k
			} else {
				mf.errorf(n, "key", "%q is not a host name or IP address, which is all classify: %s yields", v, s.Classify)
			}
		} else {
			m.Key = v
		}
	}
	if v, n := mf.str("key_regex", ""); n != nil {
		if re, err := regexp.Compile(v); err != nil {
			mf.errorf(n, "key_regex", "invalid regexp: %v", reErr(err))
		} else {
			m.KeyRegex = re
		}
	} else if mf.present("key_regex") && isNull(mf.vals["key_regex"]) {
		mf.errorf(mf.keys["key_regex"], "key_regex", "empty")
	}
	if mf.present("hash_range") {
		m.HashRange = p.hashRange(mf)
	}
}

func (p *parser) hashRange(mf *fields) *[2]int {
	v := mf.vals["hash_range"]
	label := mf.label("hash_range")
	if v == nil || v.Kind != yaml.SequenceNode || len(v.Content) != 2 {
		n := v
		if isNull(v) {
			n = mf.keys["hash_range"]
		}
		mf.errorf(n, "hash_range", "expected [lo, hi] with 0 <= lo <= hi <= %d", HashRangeModulus-1)
		return nil
	}
	var r [2]int
	for i, it := range v.Content {
		it = resolve(it)
		n, ok := p.integer(it, mf.where, label, 0, HashRangeModulus-1)
		if !ok {
			return nil
		}
		r[i] = n
	}
	if r[0] > r[1] {
		mf.errorf(v, "hash_range", "[%d, %d]: lo is above hi", r[0], r[1])
		return nil
	}
	return &r
}

// crossServices checks what spans services: names, listen addresses,
// ipset names.
func (p *parser) crossServices(c *Config, pos []*svcPos, admin, metrics []netip.AddrPort) {
	names := map[string]*yaml.Node{}
	type owner struct {
		svc, be string
		n       *yaml.Node
	}
	sets := map[string]owner{}
	listens := listenIndex{exact: map[netip.AddrPort]int{}, any: map[famPort]int{}, some: map[famPort]int{}}
	for i := range c.Services {
		s, sp := &c.Services[i], pos[i]
		where := fmt.Sprintf("service %q", s.Name)
		if sp.name != nil {
			if first := names[s.Name]; first != nil {
				p.at(sp.name, where, "name", "duplicate; service names are unique (first at line %d)", first.Line)
			} else {
				names[s.Name] = sp.name
			}
		}
		if sp.listen != nil {
			if j := listens.add(i, s.Listen); j >= 0 {
				o := &c.Services[j]
				p.at(sp.listen, where, "listen", "%s conflicts with the listen address %s of service %q (line %d)", s.Listen, o.Listen, o.Name, pos[j].listen.Line)
			}
			for _, a := range admin {
				if overlaps(s.Listen, a) {
					p.at(sp.listen, where, "listen", "%s conflicts with admin.listen %s", s.Listen, c.Admin.Listen)
					break
				}
			}
			for _, a := range metrics {
				if overlaps(s.Listen, a) {
					p.at(sp.listen, where, "listen", "%s conflicts with metrics.listen %s", s.Listen, c.Metrics.Listen)
					break
				}
			}
		}
		if sp.name == nil || sp.listen == nil {
			continue
		}
		for _, bn := range sp.backends {
			set := dataplane.SetName(s.Name, bn.Value, s.Listen.Addr().Is6())
			if first, dup := sets[set]; dup && first.svc != s.Name {
				p.at(bn, fmt.Sprintf("service %q: backend %q", s.Name, bn.Value), "name",
					"ipset name %q is also the set of service %q backend %q (line %d); rename one", set, first.svc, first.be, first.n.Line)
			} else if !dup {
				sets[set] = owner{s.Name, bn.Value, bn}
			}
		}
	}
}

// listenIndex finds listen addresses that overlap earlier ones in linear
// time (see overlaps).
type listenIndex struct {
	exact map[netip.AddrPort]int // first service on each address
	any   map[famPort]int        // first service on the unspecified address of a family and port
	some  map[famPort]int        // first service on a family and port
}

type famPort struct {
	v6   bool
	port uint16
}

// add records service i on ap and returns the index of an earlier service
// whose address overlaps, or -1.
func (x listenIndex) add(i int, ap netip.AddrPort) int {
	fp := famPort{ap.Addr().Is6(), ap.Port()}
	conflict := -1
	if j, ok := x.exact[ap]; ok {
		conflict = j
	} else if j, ok := x.any[fp]; ok {
		conflict = j
	} else if j, ok := x.some[fp]; ok && ap.Addr().IsUnspecified() {
		conflict = j
	}
	if _, ok := x.exact[ap]; !ok {
		x.exact[ap] = i
	}
	if _, ok := x.some[fp]; !ok {
		x.some[fp] = i
	}
	if _, ok := x.any[fp]; !ok && ap.Addr().IsUnspecified() {
		x.any[fp] = i
	}
	return conflict
}

// overlaps reports whether two listen addresses cannot both be bound: the
// same port and family, and the same address or one unspecified. (IPv6
// listeners are IPv6-only: a service has one family.)
func overlaps(a, b netip.AddrPort) bool {
	if a.Port() != b.Port() || a.Addr().Is4() != b.Addr().Is4() {
		return false
	}
	return a.Addr() == b.Addr() || a.Addr().IsUnspecified() || b.Addr().IsUnspecified()
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// parseListen parses a service's listen address: ip:port with a non-zero
// port, IPv6 as [addr]:port, no zone, no IPv4-mapped IPv6; the unspecified
// address means every local address.
func parseListen(s string) (netip.AddrPort, error) {
	ap, err := parseIPPort(s)
	if err != nil {
		return ap, err
	}
	if err := checkAddrPort(ap, s, true); err != nil {
		return netip.AddrPort{}, err
	}
	return ap, nil
}

// parseIPPort parses ip:port, IPv6 as [addr]:port, saying what is missing
// when it cannot. What the address may be is checkAddrPort's rule.
func parseIPPort(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err == nil {
		return ap, nil
	}
	if a, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		if a.Is4() {
			return ap, fmt.Errorf("%q has no port; write %s:PORT", s, a)
		}
		return ap, fmt.Errorf("%q has no port; write IPv6 as [%s]:PORT", s, a)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return ap, fmt.Errorf("%q is not ip:port (IPv6 as [addr]:port)", s)
	}
	if host == "" {
		return ap, fmt.Errorf("%q has no IP address; write 0.0.0.0:%s or [::]:%s for every local address", s, port, port)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return ap, fmt.Errorf("%q: %q is not an IP address (host names are not resolved)", s, host)
	}
	return ap, fmt.Errorf("%q: port %q is not a number 1..65535", s, port)
}

// parsePrefix parses a route cidr: canonical (no host bits), no IPv4-mapped
// IPv6.
func parsePrefix(s string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(s)
	if err != nil {
		if a, err := netip.ParseAddr(s); err == nil {
			return pfx, fmt.Errorf("%q has no prefix length; write %s/%d for one address", s, a, a.BitLen())
		}
		return pfx, fmt.Errorf("%q is not a CIDR prefix like 198.18.0.0/15 or 2001:2::/48", s)
	}
	if pfx.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix; write it as IPv4", s)
	}
	if m := pfx.Masked(); m != pfx {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; did you mean %s?", s, m)
	}
	return pfx, nil
}

// hostRouteKey returns a route key of an sni or http-host service in the
// form those classifiers give keys: an IP literal (brackets allowed) in its
// canonical text form, or a host name as hostname.Key makes it. ok is false
// for anything else.
func hostRouteKey(k string) (string, bool) {
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(k, "["), "]")); err == nil {
		return a.String(), a.Zone() == ""
	}
	h, err := hostname.Key([]byte(k))
	return h, err == nil
}
