package balancer

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/config"
)

// FuzzLoadRuntime feeds arbitrary bytes to the runtime state loader: it
// either refuses them or returns a state that saves and loads back the
// same, and that the config merge (effective) takes without panicking.
func FuzzLoadRuntime(f *testing.F) {
	f.Add([]byte(`{"version":1,"registrations":[{"service":"web","name":"be3","address":"198.19.0.3:80","weight":1,"pool":"default","ttl":"30s"}],"drains":[{"service":"web","backend":"be1"}],"closed":["web"],"pins":[{"service":"web","client":"198.18.0.9","backend":"be1"}]}`))
	f.Add([]byte(`{"version":1,"registrations":[{"service":"web","name":"x","address":"[2001:2::1]:80","ttl":"-5s"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"pins":[{"service":"","client":"","backend":""}]}`))
	f.Add([]byte("\xff\x00{"))
	file := &config.Config{Services: []config.Service{{
		Name:   "web",
		Listen: netip.MustParseAddrPort("198.18.1.1:80"),
		Pools: []config.Pool{{Name: "default", Balance: config.BalanceMaglev, Backends: []config.Backend{
			{Name: "be1", Address: netip.MustParseAddrPort("198.19.1.1:80"), Weight: 1},
		}}},
	}}}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := parseRuntime(RuntimeFile, data)
		if err != nil {
			return
		}
		cfg, _ := effective(file, &st)
		for _, s := range cfg.Services {
			for _, p := range s.Pools {
				for _, b := range p.Backends {
					if err := s.CheckBackend(b); err != nil {
						t.Fatalf("effective config holds a backend that breaks the rules: %v", err)
					}
				}
			}
		}
		b, err := encodeRuntime(st)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseRuntime(RuntimeFile, b)
		if err != nil {
			t.Fatalf("a state that loaded does not load after saving: %v", err)
		}
		if !reflect.DeepEqual(normal(st), normal(again)) {
			t.Fatalf("save and load changed the state:\n%+v\n%+v", st, again)
		}
	})
}

// normal makes nil and empty slices compare equal, and durations exact.
func normal(st runtimeState) runtimeState {
	st.Version = runtimeVersion
	for i := range st.Registrations {
		st.Registrations[i].TTL = jsonDuration(time.Duration(st.Registrations[i].TTL))
	}
	if len(st.Registrations) == 0 {
		st.Registrations = nil
	}
	if len(st.Drains) == 0 {
		st.Drains = nil
	}
	if len(st.Closed) == 0 {
		st.Closed = nil
	}
	if len(st.Pins) == 0 {
		st.Pins = nil
	}
	return st
}
