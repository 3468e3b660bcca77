package balancer

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/atomicfile"
)

// RuntimeFile is the file under state_dir holding the changes made through
// the API: registered backends, drains, closed listeners and pins made by
// hand. Other pins are kept by the data plane itself (the kernel's sets,
// the affinity table). The operator's config file is never rewritten.
const RuntimeFile = "runtime.json"

const runtimeVersion = 1

// runtimeState is what RuntimeFile holds. Every slice is kept sorted so the
// file is stable and diffable.
type runtimeState struct {
	Version       int                    `json:"version"`
	Registrations []registration         `json:"registrations"`
	Drains        []dataplane.BackendRef `json:"drains"`
	Closed        []string               `json:"closed"`         // services whose listener is closed
	Pins          []handPin              `json:"pins,omitempty"` // made by hand; by service, then client
}

// registration is a backend added through the API.
type registration struct {
	Service string         `json:"service"`
	Name    string         `json:"name"`
	Address netip.AddrPort `json:"address"`
	Weight  int            `json:"weight"`
	Pool    string         `json:"pool"`
	TTL     jsonDuration   `json:"ttl"` // 0: no expiry; a restart grants a fresh one
}

// jsonDuration is a time.Duration written as a Go duration string.
type jsonDuration time.Duration

func (d jsonDuration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = jsonDuration(v)
	return nil
}

func (st *runtimeState) registration(service, name string) *registration {
	for i := range st.Registrations {
		if r := &st.Registrations[i]; r.Service == service && r.Name == name {
			return r
		}
	}
	return nil
}

func (st *runtimeState) draining(service, backend string) bool {
	return slices.Contains(st.Drains, dataplane.BackendRef{Service: service, Backend: backend})
}

func (st *runtimeState) setDrain(service, backend string, on bool) {
	ref := dataplane.BackendRef{Service: service, Backend: backend}
	st.Drains = slices.DeleteFunc(st.Drains, func(r dataplane.BackendRef) bool { return r == ref })
	if on {
		st.Drains = append(st.Drains, ref)
		slices.SortFunc(st.Drains, func(a, b dataplane.BackendRef) int {
			return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Backend, b.Backend))
		})
	}
}

func (st *runtimeState) closed(service string) bool { return slices.Contains(st.Closed, service) }

func (st *runtimeState) setClosed(service string, closed bool) {
	st.Closed = slices.DeleteFunc(st.Closed, func(s string) bool { return s == service })
	if closed {
		st.Closed = append(st.Closed, service)
		slices.Sort(st.Closed)
	}
}

func (st *runtimeState) clone() runtimeState {
	return runtimeState{
		Version:       st.Version,
		Registrations: slices.Clone(st.Registrations),
		Drains:        slices.Clone(st.Drains),
		Closed:        slices.Clone(st.Closed),
		Pins:          slices.Clone(st.Pins),
	}
}

// loadRuntime reads dir/RuntimeFile. A missing file is an empty state; a
// corrupt one is an error (the operator decides, nothing is discarded).
func loadRuntime(dir string) (runtimeState, error) {
	st := runtimeState{Version: runtimeVersion}
	if dir == "" {
		return st, nil
	}
	path := filepath.Join(dir, RuntimeFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("runtime state: %w", err)
	}
	return parseRuntime(path, b)
}

// parseRuntime decodes the runtime state file at path, whose content is b.
func parseRuntime(path string, b []byte) (runtimeState, error) {
	var st runtimeState
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("runtime state %s is corrupt (fix or remove it): %w", path, err)
	}
	if st.Version != runtimeVersion {
		return st, fmt.Errorf("runtime state %s: version %d, this handoff reads %d", path, st.Version, runtimeVersion)
	}
	return st, nil
}

// encodeRuntime is the content of the runtime state file holding st.
func encodeRuntime(st runtimeState) ([]byte, error) {
	st.Version = runtimeVersion
	b, err := json.MarshalIndent(st, "", "  ")
	return append(b, '\n'), err
}

// saveRuntime writes st to dir/RuntimeFile atomically (atomicfile.Write).
func saveRuntime(dir string, st runtimeState) error {
	if dir == "" {
		return nil
	}
	b, err := encodeRuntime(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("runtime state: %w", err)
	}
	err = atomicfile.Write(filepath.Join(dir, RuntimeFile), func(w *bufio.Writer) error {
		_, err := w.Write(b)
		return err
	})
	if err != nil {
		return fmt.Errorf("runtime state: %w", err)
	}
	return nil
}

// effective returns the running config: file's services with the registered
// backends added to their pools. A registration whose service or pool the
// file no longer has, or that now clashes with a backend of the file, is
// skipped and reported in skipped (it stays saved, and applies again if the
// file brings its pool back). file is not modified.
func effective(file *config.Config, st *runtimeState) (cfg *config.Config, skipped []string) {
	if len(st.Registrations) == 0 {
		return file, nil
	}
	out := *file
	out.Services = slices.Clone(file.Services)
	cloned := map[int]bool{}
	// Set names are "ho-<service>-<backend>" and names may hold '-': the
	// config parser refuses two services' backends sharing a set, and a
	// registration must not make them share one either (service "a",
	// backend "b-c" and service "a-b", backend "c").
	owners := setOwners(file)
	for _, r := range st.Registrations {
		si := slices.IndexFunc(out.Services, func(s config.Service) bool { return s.Name == r.Service })
		if si < 0 {
			skipped = append(skipped, fmt.Sprintf("%s/%s: service not in the config", r.Service, r.Name))
			continue
		}
		if !cloned[si] {
			sc := &out.Services[si]
			sc.Pools = slices.Clone(sc.Pools)
			for i := range sc.Pools {
				sc.Pools[i].Backends = slices.Clone(sc.Pools[i].Backends)
			}
			cloned[si] = true
		}
		sc := &out.Services[si]
		if sc.Backend(r.Name) != nil {
			skipped = append(skipped, fmt.Sprintf("%s/%s: the config file now has a backend of that name", r.Service, r.Name))
			continue
		}
		p := sc.Pool(r.Pool)
		if p == nil {
			skipped = append(skipped, fmt.Sprintf("%s/%s: pool %q not in the config", r.Service, r.Name, r.Pool))
			continue
		}
		b := config.Backend{Name: r.Name, Address: r.Address, Weight: r.Weight}
		if err := sc.CheckBackend(b); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s/%s: %v", r.Service, r.Name, err))
			continue
		}
		set := dataplane.SetName(r.Service, r.Name, sc.Listen.Addr().Is6())
		if o, taken := owners[set]; taken && o.Service != r.Service {
			skipped = append(skipped, fmt.Sprintf("%s/%s: ipset name %q is also the set of service %q backend %q", r.Service, r.Name, set, o.Service, o.Backend))
			continue
		}
		owners[set] = dataplane.BackendRef{Service: r.Service, Backend: r.Name}
		p.Backends = append(p.Backends, b)
	}
	return &out, skipped
}

// setOwners maps the ipset name of every backend of cfg to its service and
// backend names.
func setOwners(cfg *config.Config) map[string]dataplane.BackendRef {
	owners := map[string]dataplane.BackendRef{}
	for _, s := range cfg.Services {
		for _, p := range s.Pools {
			for _, b := range p.Backends {
				owners[dataplane.SetName(s.Name, b.Name, s.Listen.Addr().Is6())] = dataplane.BackendRef{Service: s.Name, Backend: b.Name}
			}
		}
	}
	return owners
}

// applyRuntime applies the saved runtime state once the health monitor
// runs: drains, and a fresh TTL for every registration that has one (a
// restart must not count the downtime against a heartbeat).
func (e *Engine) applyRuntime() {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	for _, r := range e.rt.Registrations {
		if r.TTL > 0 {
			if err := e.health.Load().Renew(r.Service, r.Name, time.Duration(r.TTL)); err != nil {
				e.log.WithError(err).Debug("registration TTL")
			}
		}
	}
	e.applyDrains()
}

// applyDrains sets every backend's draining flag from the runtime state;
// reloadMu is held.
func (e *Engine) applyDrains() {
	e.mu.Lock()
	svcs := maps.Clone(e.services)
	e.mu.Unlock()
	changed := false
	for name, s := range svcs {
		s.mu.Lock()
		for _, b := range s.backends {
			want := e.rt.draining(name, b.name)
			if b.draining.Swap(want) != want {
				changed = true
			}
		}
		s.mu.Unlock()
	}
	if changed {
		e.view.bump()
	}
}

// saveRuntimeLocked persists st and, when that works, makes it current; reloadMu
// is held. A change that cannot be saved is refused, so what the API
// acknowledged survives a restart.
func (e *Engine) saveRuntimeLocked(st runtimeState) error {
	if err := saveRuntime(e.stateDir, st); err != nil {
		return fmt.Errorf("saving the change under state_dir: %w", err)
	}
	e.rt = st
	return nil
}

// saveOrUndoLocked saves st, whose effective config was just applied; when
// that fails it applies the current state's config again, so that a change
// refused for want of saving does not run either. reloadMu is held.
func (e *Engine) saveOrUndoLocked(ctx context.Context, st runtimeState) error {
	err := e.saveRuntimeLocked(st)
	if err == nil {
		return nil
	}
	prev, _ := effective(e.fileCfg, &e.rt)
	if uerr := e.apply(ctx, prev); uerr != nil {
		return fmt.Errorf("%w; undoing the change failed too, so it runs until the next change or reload: %v", err, uerr)
	}
	return err
}
