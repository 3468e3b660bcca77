package config

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// FuzzParse checks that Parse never panics, that it is deterministic, that
// its errors are well-formed and sorted, and that whatever it accepts holds
// the invariants the rest of handoff relies on. The seed corpus is in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		c2, err2 := Parse("fuzz.yaml", data)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("not deterministic:\n%v\n---\n%v", err, err2)
		}
		if err != nil {
			if c != nil {
				t.Fatal("a config returned with an error")
			}
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			for i, e := range es {
				if e.File != "fuzz.yaml" || e.Line < 1 || e.Column < 1 || e.Msg == "" {
					t.Fatalf("malformed error %#v", e)
				}
				if i > 0 && (e.Line < es[i-1].Line || e.Line == es[i-1].Line && e.Column < es[i-1].Column) {
					t.Fatalf("errors not sorted:\n%v", err)
				}
			}
			return
		}
		checkInvariants(t, c)
		compare(t, c, c2)
	})
}

// checkInvariants fails t unless c is a config the rest of handoff can use
// without checking it again.
func checkInvariants(t *testing.T, c *Config) {
	t.Helper()
	if !slices.Contains(modes, c.Mode) || !slices.Contains(logLevels, c.Log.Level) || !slices.Contains(logFormats, c.Log.Format) || c.Log.SummaryInterval < 0 {
		t.Errorf("top level %+v", c)
	}
	if c.StateDir == "" {
		t.Errorf("admin %+v, state_dir %q", c.Admin, c.StateDir)
	}
	if len(c.Services) == 0 {
		t.Error("no services")
	}
	names := map[string]bool{}
	sets := map[string]bool{}
	for i, s := range c.Services {
		if !serviceNameRE.MatchString(s.Name) || names[s.Name] {
			t.Errorf("service name %q invalid or repeated", s.Name)
		}
		names[s.Name] = true
		if len(dataplane.ServiceChain(s.Name)) > dataplane.MaxChainNameLen {
			t.Errorf("chain of %q too long", s.Name)
		}
		a := s.Listen.Addr()
		if !s.Listen.IsValid() || s.Listen.Port() == 0 || a.Is4In6() || a.Zone() != "" {
			t.Errorf("service %s: listen %s", s.Name, s.Listen)
		}
		for _, o := range c.Services[:i] {
			if overlaps(s.Listen, o.Listen) {
				t.Errorf("services %s and %s both listen on %s", o.Name, s.Name, s.Listen)
			}
		}
		v6 := a.Is6()
		if !slices.Contains(firstConns, s.FirstConnection) || !slices.Contains(classifiers(), s.Classify) ||
			!slices.Contains(unclassified, s.OnUnclassified) || !slices.Contains(backendDown, s.OnBackendDown) || !slices.Contains(proxyProtocol, s.ProxyProtocol) {
			t.Errorf("service %s: enums %+v", s.Name, s)
		}
		if s.ProxyProtocol != ProxyProtocolOff && c.Mode == ModeKernel {
			t.Errorf("service %s: proxy_protocol %s in mode %s", s.Name, s.ProxyProtocol, c.Mode)
		}
		if !slices.Contains(onFull, s.OnFull) || s.PinBudget.PerPrefix < 0 || s.PinBudget.IPv4Prefix < 1 || s.PinBudget.IPv4Prefix > 32 ||
			s.PinBudget.IPv6Prefix < 1 || s.PinBudget.IPv6Prefix > 128 || s.IPv6PinPrefix < 0 || s.IPv6PinPrefix > 127 {
			t.Errorf("service %s: on_full %q, pin_budget %+v", s.Name, s.OnFull, s.PinBudget)
		}
		if c.Mode != ModeUserspace {
			for _, p := range s.Pools {
				for _, b := range p.Backends {
					if err := s.CheckForward(b); err != nil {
						t.Errorf("mode %s: %v", c.Mode, err)
					}
				}
			}
		}
		if s.ClientTTL < 0 || s.ClientTTL%time.Second != 0 || s.ClientTTL > MaxClientTTL {
			t.Errorf("service %s: client_ttl %s", s.Name, s.ClientTTL)
		}
		if s.MaxClients < 1 || s.MaxClients > 1<<31-1 || s.MaxConnections < 1 {
			t.Errorf("service %s: limits %d %d", s.Name, s.MaxClients, s.MaxConnections)
		}
		if (s.Classify == ClassifyPayload) != (s.Payload.Pattern != nil) {
			t.Errorf("service %s: classify %s with pattern %v", s.Name, s.Classify, s.Payload.Pattern)
		}
		if s.Payload.MaxBytes < 1 || s.Payload.MaxBytes > MaxPayloadBytes || s.Payload.Timeout <= 0 {
			t.Errorf("service %s: payload %+v", s.Name, s.Payload)
		}
		if s.Timeouts.Connect <= 0 || s.Timeouts.Idle < 0 {
			t.Errorf("service %s: timeouts %+v", s.Name, s.Timeouts)
		}
		h := s.Health
		if !slices.Contains(checks, h.Check) || h.Interval <= 0 || h.Timeout <= 0 || h.Timeout > h.Interval || h.Rise < 1 || h.Fall < 1 ||
			len(h.HTTPPath) == 0 || h.HTTPPath[0] != '/' || h.ExpectStatus < 100 || h.ExpectStatus > 599 ||
			(h.Check == CheckSendExpect && h.Expect == "") {
			t.Errorf("service %s: health %+v", s.Name, h)
		}
		if len(s.Pools) == 0 {
			t.Errorf("service %s: no pools", s.Name)
		}
		if s.OnUnclassified == UnclassifiedDefault && s.Pool(DefaultPool) == nil {
			t.Errorf("service %s: no default pool", s.Name)
		}
		pools := map[string]bool{}
		backends := map[string]bool{}
		for _, p := range s.Pools {
			if !objectNameRE.MatchString(p.Name) || pools[p.Name] || !slices.Contains(balances, p.Balance) {
				t.Errorf("service %s: pool %+v", s.Name, p)
			}
			pools[p.Name] = true
			for _, b := range p.Backends {
				if !objectNameRE.MatchString(b.Name) || backends[b.Name] {
					t.Errorf("service %s: backend name %q invalid or repeated", s.Name, b.Name)
				}
				backends[b.Name] = true
				ba := b.Address.Addr()
				if !b.Address.IsValid() || b.Address.Port() == 0 || ba.Is6() != v6 || ba.Is4In6() || ba.IsUnspecified() || b.Address == s.Listen {
					t.Errorf("service %s: backend %s address %s", s.Name, b.Name, b.Address)
				}
				if b.Weight < 1 || b.Weight > MaxWeight {
					t.Errorf("service %s: backend %s weight %d", s.Name, b.Name, b.Weight)
				}
				set := dataplane.SetName(s.Name, b.Name, v6)
				if len(set) > dataplane.MaxSetNameLen || sets[set] {
					t.Errorf("set %s too long or repeated", set)
				}
				sets[set] = true
			}
		}
		for j, r := range s.Routes {
			m := r.Match
			n := 0
			if m.CIDR.IsValid() {
				n++
				if m.CIDR != m.CIDR.Masked() || m.CIDR.Addr().Is6() != v6 {
					t.Errorf("service %s: route %d: cidr %s", s.Name, j, m.CIDR)
				}
			}
			if m.Key != "" {
				n++
			}
			if m.KeyRegex != nil {
				n++
			}
			if m.HashRange != nil {
				n++
				if lo, hi := m.HashRange[0], m.HashRange[1]; lo < 0 || lo > hi || hi >= HashRangeModulus {
					t.Errorf("service %s: route %d: hash_range %v", s.Name, j, *m.HashRange)
				}
			}
			if n != 1 {
				t.Errorf("service %s: route %d: %d conditions", s.Name, j, n)
			}
			if s.Pool(r.Pool) == nil {
				t.Errorf("service %s: route %d: pool %q missing", s.Name, j, r.Pool)
			}
		}
	}
}
