// Package config parses and validates handoff's YAML configuration into an
// immutable *Config. It never touches the network or the kernel.
//
// Every field of DESIGN.md section 4 is here. Parse reports every problem it
// finds, each with the file, line and column of the offending YAML node.
package config

import (
	"errors"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Mode selects the data plane.
type Mode string

// Modes.
const (
	ModeAuto      Mode = "auto"      // kernel when usable, else userspace
	ModeKernel    Mode = "kernel"    // ipset + iptables; fail at start when unusable
	ModeUserspace Mode = "userspace" // proxy every connection; never touch the kernel's tables
)

// FirstConnection says what happens to a new client's first connection.
type FirstConnection string

// First-connection handling.
const (
	FirstProxy FirstConnection = "proxy" // the default: splice the first connection to the backend (from the client's address in kernel mode)
	FirstReset FirstConnection = "reset" // RST; the retry is DNATed in-kernel: for clients that retry (browsers) only
)

// Classify names how a client's classification key is extracted.
type Classify string

// Key extractors.
const (
	ClassifySource   Classify = "source"    // the client IP
	ClassifyPayload  Classify = "payload"   // a regexp over the first bytes
	ClassifySNI      Classify = "sni"       // TLS ClientHello server name
	ClassifyHTTPHost Classify = "http-host" // Host header of the first HTTP/1.x request
)

// Balance names a pool's backend selection policy.
type Balance string

// Policies.
const (
	BalanceMaglev     Balance = "maglev"
	BalanceSourceHash Balance = "source-hash"
	BalanceRoundRobin Balance = "round-robin"
	BalanceRandom     Balance = "random"
	BalanceHotStandby Balance = "hot-standby"
	BalanceLeastConn  Balance = "least-conn"
)

// OnUnclassified says what happens to a new client whose key cannot be
// read, or that no route matches.
type OnUnclassified string

// Unclassified-client handling.
const (
	UnclassifiedDefault OnUnclassified = "default" // the pool named "default" (DefaultPool)
	UnclassifiedReject  OnUnclassified = "reject"  // RST, no pin
)

// OnBackendDown says what happens to the pins of a backend that goes down.
type OnBackendDown string

// Backend-down handling.
const (
	BackendDownRehash     OnBackendDown = "rehash"     // re-pin onto the backend the pool's policy now picks
	BackendDownReclassify OnBackendDown = "reclassify" // unpin; the next connection is classified again
)

// OnFull says what happens to a new client whose pin cannot be made: its
// backend's set (or the affinity table) is full, or its network's pin
// budget is spent.
type OnFull string

// Full-table handling.
const (
	OnFullProxy  OnFull = "proxy"  // serve the connection without a pin (from the client's address in kernel mode)
	OnFullReject OnFull = "reject" // RST
)

// PinBudget bounds the new pins one client network makes: at most
// PerPrefix pins per IPv4Prefix (IPv6Prefix) network during one window of
// client_ttl (see balancer's budget for what exactly is counted).
// PerPrefix 0 means no budget.
type PinBudget struct {
	PerPrefix  int
	IPv4Prefix int // 1..32
	IPv6Prefix int // 1..128
}

// ProxyProtocol names the PROXY protocol header sent to backends on the
// userspace path.
type ProxyProtocol string

// PROXY protocol versions.
const (
	ProxyProtocolOff ProxyProtocol = "off"
	ProxyProtocolV1  ProxyProtocol = "v1"
	ProxyProtocolV2  ProxyProtocol = "v2"
)

// LogLevel is a logrus level name.
type LogLevel string

// Log levels.
const (
	LogTrace LogLevel = "trace"
	LogDebug LogLevel = "debug"
	LogInfo  LogLevel = "info"
	LogWarn  LogLevel = "warn"
	LogError LogLevel = "error"
)

// LogFormat names how log lines are written.
type LogFormat string

// Log formats.
const (
	LogText LogFormat = "text"
	LogJSON LogFormat = "json"
)

// DefaultPool is the name of the pool that takes the clients no route
// matches, and of the one pool of the balance/backends shorthand.
const DefaultPool = "default"

// Check names a health checker.
type Check string

// Health checkers.
const (
	CheckTCP        Check = "tcp"
	CheckHTTP       Check = "http"
	CheckSendExpect Check = "send-expect"
	CheckNone       Check = "none"
)

// Defaults applied by Parse where a field is absent. DefaultHealth and
// DefaultPayload put together those of a section; other packages take the
// values of a parsed Config and default nothing themselves.
const (
	DefaultAdminListen     = "127.0.0.1:9900"
	DefaultStateDir        = "/var/lib/handoff"
	DefaultClientTTL       = 30 * time.Minute
	DefaultMaxClients      = 1 << 20
	DefaultPinBudget       = 1024  // pin_budget.per_prefix
	DefaultBudgetPrefix4   = 24    // pin_budget.ipv4_prefix
	DefaultBudgetPrefix6   = 64    // pin_budget.ipv6_prefix
	DefaultPayloadMaxBytes = 512   // classify: payload
	DefaultPeekMaxBytes    = 16384 // classify: sni and http-host
	DefaultPayloadTimeout  = 2 * time.Second
	DefaultConnectTimeout  = 3 * time.Second
	DefaultIdleTimeout     = 10 * time.Minute
	DefaultMaxConnections  = 10000
	DefaultSummaryInterval = 5 * time.Second
	DefaultHealthInterval  = 2 * time.Second
	DefaultHealthTimeout   = time.Second
	DefaultRise            = 2
	DefaultFall            = 3
	DefaultHTTPPath        = "/healthz"
	DefaultExpectStatus    = 200
	DefaultWeight          = 1
	DefaultMarkMask        = 0xfff00000 // 12 bits: 4,094 backends per service
	DefaultQueue           = 18511
	DefaultRouteTable      = 18511
	DefaultRulePriority    = 18511
	HashRangeModulus       = 1000 // hash_range buckets: hash(key) mod 1000
)

// Config is one parsed, validated configuration. Treat it as immutable: a
// reload parses a new one.
type Config struct {
	Path     string // the file it was loaded from ("" when parsed from bytes)
	Mode     Mode
	Log      Log
	Admin    Admin
	Kernel   Kernel
	Metrics  Metrics
	StateDir string
	Services []Service
	Cluster  *Cluster // nil: this host on its own
}

// Kernel places the kernel data plane's objects that share a namespace
// with other software: bits of the packet mark, an NFQUEUE number, a route
// table and a routing rule priority. The defaults avoid those of
// kube-proxy, Docker and Tailscale.
type Kernel struct {
	MarkMask     uint32 // mark bits carrying a new connection's backend; contiguous, at least 4
	Queue        int    // NFQUEUE number of held SYNs (classify: source)
	RouteTable   int    // route table of transparent dials, owned by handoff
	RulePriority int    // priority of the ip rule that looks the table up
}

// Log configures logging.
type Log struct {
	Level           LogLevel
	Format          LogFormat
	SummaryInterval time.Duration // periodic info summary; 0 disables it
	// Access logs one line per proxied connection and per pin event, at
	// info level; kernel-forwarded connections are never logged.
	Access bool
}

// Metrics configures the optional listener that serves only /metrics and
// the health probes, without authentication.
type Metrics struct {
	Listen string // host:port; "" when off
}

// AdminOff as admin.listen turns the admin API off.
const AdminOff = "off"

// AdminUnixPrefix starts an admin.listen that names a unix socket
// ("unix:/run/handoff/admin.sock").
const AdminUnixPrefix = "unix:"

// DefaultAdminSocket is the socket the CLI tries when neither a flag nor
// the config names the admin API.
const DefaultAdminSocket = "/run/handoff/admin.sock"

// Admin configures the admin HTTP server.
type Admin struct {
	// Listen is host:port (non-loopback requires TokenFile), or
	// "unix:" and an absolute socket path (mode 0600, no token needed);
	// "" when off.
	Listen    string
	TokenFile string
	Pprof     bool
}

// Service is one balanced TCP service (one VIP:port).
type Service struct {
	Name            string
	Listen          netip.AddrPort // IPv4 or IPv6; an unspecified address means every local address
	FirstConnection FirstConnection
	ClientTTL       time.Duration // pin lifetime since the client's last new connection; 0 = forever
	SNAT            bool
	MaxClients      int // ipset maxelem per backend set, affinity table bound
	OnFull          OnFull
	PinBudget       PinBudget
	Classify        Classify
	Payload         Payload
	OnUnclassified  OnUnclassified
	OnBackendDown   OnBackendDown
	Timeouts        Timeouts
	MaxConnections  int // userspace-proxied connections at once
	ProxyProtocol   ProxyProtocol
	Health          Health
	Routes          []Route
	Pools           []Pool // never empty; the shorthand form becomes one pool named "default"

	// IPv6PinPrefix pins IPv6 clients by network: one pin per /IPv6PinPrefix
	// (hash:net sets in kernel mode), for clients that rotate addresses
	// within their network. 0 pins every address on its own.
	IPv6PinPrefix int
}

// Payload bounds how the first bytes are read for every classifier but source.
type Payload struct {
	Pattern  *regexp.Regexp // classify: payload only; nil otherwise
	MaxBytes int
	Timeout  time.Duration
}

// Timeouts apply to userspace-proxied connections.
type Timeouts struct {
	Connect time.Duration
	Idle    time.Duration // 0 = no idle timeout
}

// Health configures a service's backend health checks.
type Health struct {
	Check        Check
	Interval     time.Duration
	Timeout      time.Duration
	Rise         int
	Fall         int
	HTTPPath     string
	ExpectStatus int
	Send         string
	Expect       string
}

// Route sends clients that match to a pool. Exactly one Match field is set.
type Route struct {
	Match Match
	Pool  string
}

// Match is one route condition.
type Match struct {
	CIDR      netip.Prefix   // valid when set
	Key       string         // exact key; "" when unset
	KeyRegex  *regexp.Regexp // nil when unset
	HashRange *[2]int        // inclusive [lo, hi] of hash(key) mod HashRangeModulus; nil when unset
}

// Pool is a named group of backends with one policy.
type Pool struct {
	Name    string
	Balance Balance
	// Failback says whether a backend that comes back takes back the
	// clients whose policy now picks it (failback: rehash, or true) or
	// they stay where they are (keep, or false). Default: rehash for
	// hot-standby, maglev and source-hash, keep for the others.
	Failback bool
	Backends []Backend
}

// Backend is one real server. Names are unique within a service.
type Backend struct {
	Name    string
	Address netip.AddrPort
	Weight  int // ≥ 1
}

// Bounds of health.http.expect_status.
const (
	MinExpectStatus = 100
	MaxExpectStatus = 599
)

// CheckHTTPPath returns an error unless path can be the request target of an
// http health check: it starts with '/' and holds no space, tab or line
// break (which would break the request line). The error does not quote
// path.
func CheckHTTPPath(path string) error {
	switch {
	case !strings.HasPrefix(path, "/"):
		return errors.New("does not start with /")
	case strings.ContainsAny(path, " \t\r\n"):
		return errors.New("holds a space, tab or line break")
	}
	return nil
}

// DefaultHealth returns the health settings Parse gives a service without a
// health section.
func DefaultHealth() Health {
	return Health{
		Check:        CheckTCP,
		Interval:     DefaultHealthInterval,
		Timeout:      DefaultHealthTimeout,
		Rise:         DefaultRise,
		Fall:         DefaultFall,
		HTTPPath:     DefaultHTTPPath,
		ExpectStatus: DefaultExpectStatus,
	}
}

// DefaultPayload returns the payload settings Parse gives a service with
// classify c and without a payload section (no pattern).
func DefaultPayload(c Classify) Payload {
	p := Payload{MaxBytes: DefaultPeekMaxBytes, Timeout: DefaultPayloadTimeout}
	if c == ClassifyPayload {
		p.MaxBytes = DefaultPayloadMaxBytes
	}
	return p
}

// Pool returns the pool with the given name, or nil.
func (s *Service) Pool(name string) *Pool {
	for i := range s.Pools {
		if s.Pools[i].Name == name {
			return &s.Pools[i]
		}
	}
	return nil
}

// Service returns the service with the given name, or nil.
func (c *Config) Service(name string) *Service {
	for i := range c.Services {
		if c.Services[i].Name == name {
			return &c.Services[i]
		}
	}
	return nil
}

// Backend returns the backend named name in any pool of s, or nil.
func (s *Service) Backend(name string) *Backend {
	for i := range s.Pools {
		for j := range s.Pools[i].Backends {
			if s.Pools[i].Backends[j].Name == name {
				return &s.Pools[i].Backends[j]
			}
		}
	}
	return nil
}
