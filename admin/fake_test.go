package admin

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/dataplane"
)

// fakeController behaves like the engine for the services and backends of
// its status: unknown services and backends are ErrNotFound, a client of
// the wrong family is ErrInvalid, a config-file backend cannot be
// deregistered (ErrConflict). It records every change as a line in calls.
type fakeController struct {
	mu     sync.Mutex
	status balancer.Status
	pins   map[string][]balancer.ClientPin // by service
	calls  []string
	// err, when set, is returned by every method.
	err error
	// moved is what Drain returns.
	moved int
}

func newFake() *fakeController {
	return &fakeController{
		status: balancer.Status{
			Mode:               "kernel",
			State:              balancer.StateServing,
			Version:            "",
			Uptime:             12.5,
			Reloads:            map[string]uint64{"ok": 3, "invalid": 1},
			LastReload:         &balancer.ReloadResult{OK: false, At: time.Unix(1700000000, 0)},
			Conntrack:          &balancer.ConntrackStatus{Entries: 1000, Max: 262144, Fill: 1000.0 / 262144},
			InconclusiveChecks: 7,
			Sync: &dataplane.SyncStats{Syncs: 12, Failures: 1, Seconds: 0.5, Repairs: 3, LastOK: time.Unix(1700000100, 0),
				Counts: []uint64{0, 0, 2, 5, 9, 10, 11, 11, 11, 12, 12, 12, 12, 12}},
			Services: []balancer.ServiceStatus{{
				Name:       "web",
				Listen:     "198.18.1.1:80",
				Open:       true,
				Classify:   "source",
				MaxClients: 1000,
				Pinned:     300,
				Active:     7,
				Classified: map[string]uint64{
					"pinned":                290,
					"no-backend":            4,
					"unclassified/no-match": 5,
					"rejected/timeout":      1,
				},
				FirstConnections: map[string]uint64{"in-kernel": 280, "transparent": 10},
				Refused:          6,
				Migrations:       2,
				MigratedClients:  40,
				MigrationSeconds: 0.25,
				PinsAdded:        300,
				PinsUnpinned:     2,
				PinsExpired:      7,
				Backends: []balancer.BackendStatus{
					{Name: "be1", Address: "198.19.1.11:80", Pool: "default", Weight: 2, Health: "up",
						Pinned: 250, Active: 5, Connections: 100, BytesIn: 1000, BytesOut: 50000,
						Packets: 777, ForwardBytes: 88888, HealthChecks: 50, HealthLatency: 0.002},
					{Name: "be2", Address: "198.19.1.12:80", Pool: "default", Weight: 1, Health: "down",
						Draining: true, Registered: true, Pinned: 50, Active: 2, Connections: 10,
						BytesIn: 10, BytesOut: 20, Packets: 3, ForwardBytes: 4, HealthChecks: 60, HealthFailedChecks: 4, HealthLatency: 1},
				},
			}, {
				Name:       "v6",
				Listen:     "[2001:db8::1]:443",
				Open:       false,
				Classify:   "sni",
				MaxClients: 0,
				Classified: map[string]uint64{},
				Backends: []balancer.BackendStatus{
					{Name: "a", Address: "[2001:db8::11]:443", Pool: "default", Weight: 1, Health: "up"},
				},
			}},
		},
		pins: map[string][]balancer.ClientPin{
			"web": {
				{Client: "198.18.0.5", Backend: "be1", Key: "198.18.0.5", ExpiresIn: 1800},
				{Client: "198.18.0.6", Backend: "be2", Key: "198.18.0.6", ExpiresIn: 12.5},
				{Client: "198.18.0.7", Backend: "be1", Key: "manual"},
			},
		},
	}
}

func (f *fakeController) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeController) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeController) service(name string) (*balancer.ServiceStatus, error) {
	if f.err != nil {
		return nil, f.err
	}
	for i := range f.status.Services {
		if f.status.Services[i].Name == name {
			return &f.status.Services[i], nil
		}
	}
	return nil, fmt.Errorf("service %q: %w", name, balancer.ErrNotFound)
}

func (f *fakeController) backend(service, name string) (*balancer.ServiceStatus, *balancer.BackendStatus, error) {
	s, err := f.service(service)
	if err != nil {
		return nil, nil, err
	}
	for i := range s.Backends {
		if s.Backends[i].Name == name {
			return s, &s.Backends[i], nil
		}
	}
	return nil, nil, fmt.Errorf("service %q has no backend %q: %w", service, name, balancer.ErrNotFound)
}

func (f *fakeController) checkClient(s *balancer.ServiceStatus, client netip.Addr) error {
	v6 := strings.HasPrefix(s.Listen, "[")
	if client.Is6() != v6 {
		return fmt.Errorf("%w: client %s: wrong family for service %q", balancer.ErrInvalid, client, s.Name)
	}
	return nil
}

func (f *fakeController) Status(ctx context.Context) (balancer.Status, error) {
	if f.err != nil {
		return balancer.Status{}, f.err
	}
	return f.status, nil
}

func (f *fakeController) State() balancer.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status.State
}

func (f *fakeController) Clients(ctx context.Context, service, backend string, limit int, fn func(balancer.ClientPin) error) error {
	if _, err := f.service(service); err != nil {
		return err
	}
	if backend != "" {
		if _, _, err := f.backend(service, backend); err != nil {
			return err
		}
	}
	f.record("clients %s backend=%s limit=%d", service, backend, limit)
	n := 0
	for _, p := range f.pins[service] {
		if backend != "" && p.Backend != backend {
			continue
		}
		if limit > 0 && n >= limit {
			break
		}
		n++
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeController) PinClient(ctx context.Context, service string, client netip.Addr, backend string) error {
	s, _, err := f.backend(service, backend)
	if err != nil {
		return err
	}
	if err := f.checkClient(s, client); err != nil {
		return err
	}
	f.record("pin %s %s %s", service, client, backend)
	return nil
}

func (f *fakeController) UnpinClient(ctx context.Context, service string, client netip.Addr) error {
	s, err := f.service(service)
	if err != nil {
		return err
	}
	if err := f.checkClient(s, client); err != nil {
		return err
	}
	f.record("unpin %s %s", service, client)
	return nil
}

func (f *fakeController) Register(ctx context.Context, service string, r balancer.Registration) error {
	if _, err := f.service(service); err != nil {
		return err
	}
	if _, b, err := f.backend(service, r.Name); err == nil && !b.Registered {
		return fmt.Errorf("%w: backend %q of service %q is in the config file", balancer.ErrConflict, r.Name, service)
	}
	f.record("register %s name=%s address=%s weight=%d pool=%s ttl=%s", service, r.Name, r.Address, r.Weight, r.Pool, r.TTL)
	return nil
}

func (f *fakeController) Deregister(ctx context.Context, service, name string) error {
	_, b, err := f.backend(service, name)
	if err != nil {
		return err
	}
	if !b.Registered {
		return fmt.Errorf("%w: backend %q of service %q is in the config file", balancer.ErrConflict, name, service)
	}
	f.record("deregister %s %s", service, name)
	return nil
}

func (f *fakeController) Drain(ctx context.Context, service, backend string, op balancer.DrainOp) (int, error) {
	if _, _, err := f.backend(service, backend); err != nil {
		return 0, err
	}
	f.record("drain %s %s op=%d", service, backend, op)
	if op == balancer.DrainMigrate {
		return f.moved, nil
	}
	return 0, nil
}

func (f *fakeController) SetOpen(ctx context.Context, service string, open bool) error {
	if _, err := f.service(service); err != nil {
		return err
	}
	f.record("open %s %v", service, open)
	return nil
}

func (f *fakeController) ReloadConfig(ctx context.Context) error {
	if f.err != nil {
		return f.err
	}
	f.record("reload")
	return nil
}
