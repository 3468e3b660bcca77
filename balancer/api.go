package balancer

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// Errors of the control methods (Status, Clients, PinClient, …). The admin
// API maps them to HTTP statuses: ErrNotFound → 404, ErrInvalid → 400,
// ErrConflict → 409; anything else is a 500.
var (
	ErrNotFound = errors.New("not found")
	ErrInvalid  = errors.New("invalid request")
	ErrConflict = errors.New("conflict")
)

// Status is a point-in-time view of the engine: what `handoff status` and
// GET /api/v1/status show, and what the metrics are read from.
type Status struct {
	Mode    string            `json:"mode"`  // kernel | userspace
	State   State             `json:"state"` // starting | serving | stopping
	Version string            `json:"version"`
	Started time.Time         `json:"started"`
	Uptime  float64           `json:"uptime_seconds"`
	Reloads map[string]uint64 `json:"reloads"` // by result: ok | invalid | failed
	// LastReload is the outcome of the last reload; nil before the first.
	LastReload *ReloadResult `json:"last_reload,omitempty"`
	// Sync counts and times the data plane's syncs, when it keeps count.
	Sync *dataplane.SyncStats `json:"sync,omitempty"`
	// Conntrack is the fill of the connection tracking table (kernel
	// mode); nil when unknown.
	Conntrack *ConntrackStatus `json:"conntrack,omitempty"`
	// InconclusiveChecks counts failed health checks not counted against
	// their backend because this host could not open connections (no
	// file descriptor, port or buffer; a full conntrack table).
	InconclusiveChecks uint64          `json:"inconclusive_checks"`
	Services           []ServiceStatus `json:"services"`
}

// ReloadResult is the outcome of one reload.
type ReloadResult struct {
	OK bool      `json:"ok"`
	At time.Time `json:"at"`
}

// ServiceStatus is one service in a Status.
type ServiceStatus struct {
	Name       string `json:"name"`
	Listen     string `json:"listen"`
	Open       bool   `json:"open"` // its listener accepts
	Classify   string `json:"classify"`
	MaxClients int    `json:"max_clients"` // per backend
	Pinned     int64  `json:"pinned"`      // sum over backends
	Active     int64  `json:"active"`      // live proxied connections
	// Refused counts connections reset at once because max_connections
	// were live (userspace proxying; in kernel mode, first connections).
	Refused uint64 `json:"refused"`
	// OnFull is what happens to a new client whose pin finds no room:
	// "proxy" (served without a pin) or "reject".
	OnFull string `json:"on_full"`
	// Classified counts new clients by result: "pinned", "no-backend",
	// "pin-failed", "full" (a backend's set was full), "over-budget" (the
	// client's network spent its pin budget), and "unclassified/<reason>" (no-match, timeout,
	// too-long, malformed, closed), "rejected/<reason>" when
	// on_unclassified is reject.
	Classified map[string]uint64 `json:"classified"`
	// FirstConnections counts new clients' first connections by how they
	// were served: "in-kernel" (SYN held until pinned), "transparent"
	// (proxied from the client's address), "proxied", "reset".
	FirstConnections map[string]uint64 `json:"first_connections"`
	Migrations       uint64            `json:"migrations"`        // backend-down evacuations, failbacks and drain migrations
	MigratedClients  uint64            `json:"migrated_clients"`  // clients those moved
	MigrationSeconds float64           `json:"migration_seconds"` // their total duration
	// PinsAdded counts the pins of new clients and hand pins; PinsUnpinned
	// the pins removed through the API; PinsExpired the pins that ended
	// otherwise (client_ttl passed, or dropped with their backend), derived
	// from the pin counts each time a status is taken.
	PinsAdded    uint64          `json:"pins_added"`
	PinsUnpinned uint64          `json:"pins_unpinned"`
	PinsExpired  uint64          `json:"pins_expired"`
	Backends     []BackendStatus `json:"backends"`
}

// BackendStatus is one backend in a ServiceStatus.
type BackendStatus struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	Pool       string    `json:"pool"`
	Weight     int       `json:"weight"`
	Health     string    `json:"health"`           // up | down
	Reason     string    `json:"reason,omitempty"` // of the last health transition
	Since      time.Time `json:"since,omitzero"`   // the last health transition
	Draining   bool      `json:"draining"`
	Registered bool      `json:"registered"` // added through the API rather than the config file
	// ExpiresIn is the seconds left of a registration's TTL; 0 when the
	// backend has none.
	ExpiresIn   float64 `json:"expires_in,omitempty"`
	Pinned      int64   `json:"pinned"`      // live pins (set members in kernel mode)
	Active      int64   `json:"active"`      // live proxied connections
	Connections uint64  `json:"connections"` // proxied connections served
	BytesIn     uint64  `json:"bytes_in"`    // client → backend, proxied
	BytesOut    uint64  `json:"bytes_out"`   // backend → client, proxied
	// Kernel-forwarded traffic (kernel mode): the packets its DNAT rule
	// matched (one a connection, nat sees no other) and the bytes of its
	// connections both ways, counted by rules that see every packet.
	Packets      uint64 `json:"forwarded_packets"`
	ForwardBytes uint64 `json:"forwarded_bytes"`
	// Health checks run and failed since the backend's checks started, and
	// how long the last one took.
	HealthChecks       uint64  `json:"health_checks"`
	HealthFailedChecks uint64  `json:"health_failed_checks"`
	HealthLatency      float64 `json:"health_latency_seconds"`
}

// ClientPin is one pin as the API lists it.
type ClientPin struct {
	Client    string  `json:"client"`
	Backend   string  `json:"backend"`
	Key       string  `json:"key"`
	ExpiresIn float64 `json:"expires_in"` // seconds; 0 = never
}

// Registration registers or renews a backend through the API. Pool defaults
// to "default", Weight to 1. With TTL > 0 the backend goes down unless it is
// registered again within TTL (a heartbeat).
type Registration struct {
	Name    string
	Address netip.AddrPort
	Weight  int
	Pool    string
	TTL     time.Duration
}

// DrainOp selects what Drain does.
type DrainOp int

const (
	DrainStart   DrainOp = iota // no new clients; pins stay until they expire
	DrainMigrate                // as DrainStart, and move its pins the rehash way now
	DrainUndo                   // take new clients again
)

// svc returns the running service name, or an error wrapping ErrNotFound.
func (e *Engine) svc(name string) (*service, error) {
	e.mu.Lock()
	s := e.services[name]
	e.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("service %q: %w", name, ErrNotFound)
	}
	return s, nil
}

func (s *service) mustBackend(name string) (*backend, error) {
	if b := s.backend(name); b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("service %q has no backend %q: %w", s.name, name, ErrNotFound)
}
