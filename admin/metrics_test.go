package admin

import (
	"errors"
	"maps"
	"math"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape GETs /metrics and parses it.
func scrape(t *testing.T, s *Server, hdr ...string) map[string]*dto.MetricFamily {
	t.Helper()
	w := do(s, "GET", "/metrics", "", hdr...)
	if w.Code != 200 {
		t.Fatalf("/metrics: %d %s", w.Code, w.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(w.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// series flattens the handoff_ gauges and counters into
// `name{label="value",…}` → value, labels sorted by name.
func series(mfs map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, "handoff_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			var v float64
			switch {
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			default:
				continue
			}
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+`"`+l.GetValue()+`"`)
			}
			sort.Strings(labels)
			out[name+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

func TestMetrics(t *testing.T) {
	s, _ := newTestServer(t, false, Options{Version: "v1.2.3"})
	s.ObservePin("web", 3*time.Millisecond)
	s.ObservePin("web", 5*time.Millisecond)
	s.ObservePin("v6", 2*time.Second)
	mfs := scrape(t, s)

	const web, be1, be2 = `service="web"`, `backend="be1",service="web"`, `backend="be2",service="web"`
	want := map[string]float64{
		`handoff_up{}`: 1,
		`handoff_build_info{goversion="` + runtime.Version() + `",mode="kernel",version="v1.2.3"}`: 1,
		`handoff_config_reloads_total{result="ok"}`:                                                3,
		`handoff_config_reloads_total{result="invalid"}`:                                           1,
		`handoff_service_open{` + web + `}`:                                                        1,
		`handoff_service_open{service="v6"}`:                                                       0,
		`handoff_conntrack_entries{}`:                                                              1000,
		`handoff_conntrack_max{}`:                                                                  262144,
		`handoff_health_checks_inconclusive_total{}`:                                               7,

		`handoff_classifications_total{result="pinned",` + web + `}`:                290,
		`handoff_classifications_total{result="no-backend",` + web + `}`:            4,
		`handoff_classifications_total{result="unclassified/no-match",` + web + `}`: 5,
		`handoff_classifications_total{result="rejected/timeout",` + web + `}`:      1,
		`handoff_connections_refused_total{` + web + `}`:                            6,
		`handoff_first_connections_total{outcome="in-kernel",` + web + `}`:          280,
		`handoff_first_connections_total{outcome="transparent",` + web + `}`:        10,
		`handoff_connections_refused_total{service="v6"}`:                           0,
		`handoff_migrations_total{` + web + `}`:                                     2,
		`handoff_migrated_clients_total{` + web + `}`:                               40,
		`handoff_migration_seconds_total{` + web + `}`:                              0.25,
		`handoff_migrations_total{service="v6"}`:                                    0,
		`handoff_migrated_clients_total{service="v6"}`:                              0,
		`handoff_migration_seconds_total{service="v6"}`:                             0,

		`handoff_pins{` + be1 + `}`:                                             250,
		`handoff_pins{` + be2 + `}`:                                             50,
		`handoff_set_fill_ratio{` + be1 + `}`:                                   0.25,
		`handoff_set_fill_ratio{` + be2 + `}`:                                   0.05,
		`handoff_backend_up{` + be1 + `}`:                                       1,
		`handoff_backend_up{` + be2 + `}`:                                       0,
		`handoff_backend_draining{` + be1 + `}`:                                 0,
		`handoff_backend_draining{` + be2 + `}`:                                 1,
		`handoff_active_connections{` + be1 + `}`:                               5,
		`handoff_active_connections{` + be2 + `}`:                               2,
		`handoff_proxied_connections_total{` + be1 + `}`:                        100,
		`handoff_proxied_connections_total{` + be2 + `}`:                        10,
		`handoff_proxied_bytes_total{` + be1 + `,direction="in"}`:               1000,
		`handoff_proxied_bytes_total{` + be1 + `,direction="out"}`:              50000,
		`handoff_proxied_bytes_total{` + be2 + `,direction="in"}`:               10,
		`handoff_proxied_bytes_total{` + be2 + `,direction="out"}`:              20,
		`handoff_forwarded_packets_total{` + be1 + `}`:                          777,
		`handoff_forwarded_packets_total{` + be2 + `}`:                          3,
		`handoff_forwarded_bytes_total{` + be1 + `}`:                            88888,
		`handoff_forwarded_bytes_total{` + be2 + `}`:                            4,
		`handoff_pins{backend="a",service="v6"}`:                                0,
		`handoff_backend_up{backend="a",service="v6"}`:                          1,
		`handoff_backend_draining{backend="a",service="v6"}`:                    0,
		`handoff_active_connections{backend="a",service="v6"}`:                  0,
		`handoff_proxied_connections_total{backend="a",service="v6"}`:           0,
		`handoff_proxied_bytes_total{backend="a",direction="in",service="v6"}`:  0,
		`handoff_proxied_bytes_total{backend="a",direction="out",service="v6"}`: 0,
		`handoff_forwarded_packets_total{backend="a",service="v6"}`:             0,
		`handoff_forwarded_bytes_total{backend="a",service="v6"}`:               0,

		`handoff_config_last_reload_successful{}`:                       0,
		`handoff_config_last_reload_timestamp_seconds{}`:                1700000000,
		`handoff_rule_syncs_total{}`:                                    12,
		`handoff_rule_sync_failures_total{}`:                            1,
		`handoff_rule_repairs_total{}`:                                  3,
		`handoff_rule_last_sync_success_timestamp_seconds{}`:            1700000100,
		`handoff_health_checks_total{` + be1 + `}`:                      50,
		`handoff_health_checks_total{` + be2 + `}`:                      60,
		`handoff_health_check_failures_total{` + be1 + `}`:              0,
		`handoff_health_check_failures_total{` + be2 + `}`:              4,
		`handoff_health_check_seconds{` + be1 + `}`:                     0.002,
		`handoff_health_check_seconds{` + be2 + `}`:                     1,
		`handoff_health_checks_total{backend="a",service="v6"}`:         0,
		`handoff_health_check_failures_total{backend="a",service="v6"}`: 0,
		`handoff_health_check_seconds{backend="a",service="v6"}`:        0,
		`handoff_pins_added_total{` + web + `}`:                         300,
		`handoff_pins_unpinned_total{` + web + `}`:                      2,
		`handoff_pins_expired_total{` + web + `}`:                       7,
		`handoff_pins_migrated_total{` + web + `}`:                      40,
		`handoff_pins_added_total{service="v6"}`:                        0,
		`handoff_pins_unpinned_total{service="v6"}`:                     0,
		`handoff_pins_expired_total{service="v6"}`:                      0,
		`handoff_pins_migrated_total{service="v6"}`:                     0,
	}
	// Label order in the keys above is loose; normalise it.
	want = normalise(want)
	got := series(mfs)
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("missing %s", k)
			continue
		}
		if math.Abs(g-v) > 1e-9 {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected series %s = %v", k, got[k])
		}
	}

	// Types.
	for name, typ := range map[string]dto.MetricType{
		"handoff_classifications_total":  dto.MetricType_COUNTER,
		"handoff_pins":                   dto.MetricType_GAUGE,
		"handoff_proxied_bytes_total":    dto.MetricType_COUNTER,
		"handoff_classification_seconds": dto.MetricType_HISTOGRAM,
		"handoff_rule_sync_seconds":      dto.MetricType_HISTOGRAM,
	} {
		if mf := mfs[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, mf.GetType(), typ)
		}
	}

	// The histogram that ObservePin feeds.
	hist := map[string]*dto.Histogram{}
	for _, m := range mfs["handoff_classification_seconds"].GetMetric() {
		hist[m.GetLabel()[0].GetValue()] = m.GetHistogram()
	}
	if h := hist["web"]; h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-0.008) > 1e-9 {
		t.Errorf("web histogram: count %d sum %v, want 2 and 0.008", h.GetSampleCount(), h.GetSampleSum())
	}
	if h := hist["v6"]; h.GetSampleCount() != 1 {
		t.Errorf("v6 histogram: count %d, want 1", h.GetSampleCount())
	}
	for _, b := range hist["web"].GetBucket() {
		if b.GetUpperBound() == 0.0025 && b.GetCumulativeCount() != 0 || b.GetUpperBound() == 0.005 && b.GetCumulativeCount() != 2 {
			t.Errorf("web bucket le=%v: %d", b.GetUpperBound(), b.GetCumulativeCount())
		}
	}

	if h := mfs["handoff_rule_sync_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleCount() != 12 || h.GetSampleSum() != 0.5 || h.GetBucket()[3].GetCumulativeCount() != 5 {
		t.Errorf("sync histogram: %v", h)
	}

	// The Go and process collectors.
	if mfs["go_goroutines"] == nil {
		t.Error("no go_goroutines")
	}
	if runtime.GOOS == "linux" && mfs["process_resident_memory_bytes"] == nil {
		t.Error("no process_resident_memory_bytes")
	}
}

func normalise(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		name, labels, _ := strings.Cut(strings.TrimSuffix(k, "}"), "{")
		var ls []string
		if labels != "" {
			ls = strings.Split(labels, ",")
		}
		sort.Strings(ls)
		out[name+"{"+strings.Join(ls, ",")+"}"] = v
	}
	return out
}

// A scrape reads the Controller each time: no caching, no polling.
func TestMetricsFollowStatus(t *testing.T) {
	s, f := newTestServer(t, false, Options{})
	key := `handoff_pins{backend="be1",service="web"}`
	if got := series(scrape(t, s))[key]; got != 250 {
		t.Fatalf("%s = %v", key, got)
	}
	f.mu.Lock()
	f.status.Services[0].Backends[0].Pinned = 251
	f.mu.Unlock()
	if got := series(scrape(t, s))[key]; got != 251 {
		t.Fatalf("%s = %v after a change, want 251", key, got)
	}
}

// When the engine does not answer, the scrape still works and says so.
func TestMetricsStatusError(t *testing.T) {
	s, f := newTestServer(t, false, Options{Version: "v1"})
	f.err = errors.New("engine stuck")
	got := series(scrape(t, s))
	if got["handoff_up{}"] != 0 {
		t.Errorf("handoff_up = %v, want 0", got["handoff_up{}"])
	}
	if _, ok := got[`handoff_build_info{goversion="`+runtime.Version()+`",mode="unknown",version="v1"}`]; !ok {
		t.Errorf("no build info in %v", got)
	}
	for k := range got {
		if strings.HasPrefix(k, "handoff_pins") {
			t.Errorf("series from a failed status: %s", k)
		}
	}
}

// The metrics endpoint is behind the token like the API.
func TestMetricsAuth(t *testing.T) {
	s, _ := newTestServer(t, true, Options{})
	checkError(t, do(s, "GET", "/metrics", ""), 401)
	if got := series(scrape(t, s, "Authorization", "Bearer "+testToken)); got["handoff_up{}"] != 1 {
		t.Errorf("handoff_up = %v", got["handoff_up{}"])
	}
}

// The latency histogram of a service that a reload removed goes away at the
// next scrape; a scrape whose status failed removes nothing.
func TestMetricsPruneRemovedService(t *testing.T) {
	s, f := newTestServer(t, false, Options{})
	s.ObservePin("web", time.Millisecond)
	s.ObservePin("v6", time.Millisecond)
	s.ObservePin("gone", time.Millisecond) // not in the status: a service a reload removed
	histServices := func() []string {
		var out []string
		for _, m := range scrape(t, s)["handoff_classification_seconds"].GetMetric() {
			out = append(out, m.GetLabel()[0].GetValue())
		}
		slices.Sort(out)
		return out
	}
	if got, want := histServices(), []string{"v6", "web"}; !slices.Equal(got, want) {
		t.Fatalf("histogram services = %v, want %v", got, want)
	}

	f.mu.Lock()
	f.err = errors.New("engine stuck")
	f.mu.Unlock()
	s.ObservePin("v6", time.Millisecond)
	f.mu.Lock()
	f.status.Services = f.status.Services[:1] // v6 removed
	f.mu.Unlock()
	if got, want := histServices(), []string{"v6", "web"}; !slices.Equal(got, want) {
		t.Fatalf("after a failed status: histogram services = %v, want %v", got, want)
	}
	f.mu.Lock()
	f.err = nil
	f.mu.Unlock()
	if got, want := histServices(), []string{"web"}; !slices.Equal(got, want) {
		t.Fatalf("after v6 left the status: histogram services = %v, want %v", got, want)
	}
	// A service that comes back starts a new series.
	s.ObservePin("v6", 2*time.Millisecond)
	f.mu.Lock()
	f.status = newFake().status
	f.mu.Unlock()
	mfs := scrape(t, s)
	for _, m := range mfs["handoff_classification_seconds"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "v6" && m.GetHistogram().GetSampleCount() != 1 {
			t.Errorf("v6 back: %d samples, want 1 (a new series)", m.GetHistogram().GetSampleCount())
		}
	}
}
