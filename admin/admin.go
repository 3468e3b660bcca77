// Package admin is handoff's control plane over HTTP: the JSON API under
// /api/v1 (DESIGN.md §6), Prometheus metrics at /metrics, the status page at
// /, liveness at /healthz, readiness at /readyz and, when enabled, pprof. It
// is a thin skin over the engine: every request becomes one Controller
// call.
//
// The package also holds the API's Go client, which the CLI uses.
package admin

import (
	"context"
	"net/netip"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
)

// ClusterReader reports the cluster this host belongs to (DESIGN.md §8);
// *cluster.Node implements it. It serves GET /api/v1/cluster, the
// handoff_cluster_* metrics and the status page's cluster section.
type ClusterReader interface {
	Status(ctx context.Context) (cluster.Status, error)
}

// Controller is what the admin server needs of the engine: its read side
// and its changes; *balancer.Engine implements it. Errors wrapping
// balancer.ErrNotFound, ErrInvalid and ErrConflict become 404, 400 and 409.
type Controller interface {
	Reader
	Pinner
	Registrar
	Operator
}

// Reader is the engine's read side: all that the GET requests, the metrics
// and the status page use.
type Reader interface {
	Status(ctx context.Context) (balancer.Status, error)
	// State is cheap and takes no lock: /readyz calls it.
	State() balancer.State
	// Clients calls fn for each pin of service (of backend, when not ""),
	// at most limit of them when limit > 0, without collecting them first.
	Clients(ctx context.Context, service, backend string, limit int, fn func(balancer.ClientPin) error) error
}

// Pinner pins clients by hand and removes their pins.
type Pinner interface {
	PinClient(ctx context.Context, service string, client netip.Addr, backend string) error
	UnpinClient(ctx context.Context, service string, client netip.Addr) error
}

// Registrar registers (or renews) and deregisters backends.
type Registrar interface {
	Register(ctx context.Context, service string, r balancer.Registration) error
	Deregister(ctx context.Context, service, backend string) error
}

// Operator steers traffic: drains, listeners, and the config file.
type Operator interface {
	// Drain returns how many clients it moved (DrainMigrate only).
	Drain(ctx context.Context, service, backend string, op balancer.DrainOp) (moved int, err error)
	SetOpen(ctx context.Context, service string, open bool) error
	// ReloadConfig re-reads the config file and applies it. An invalid file
	// is an error wrapping balancer.ErrInvalid whose message lists every
	// problem.
	ReloadConfig(ctx context.Context) error
}
