package admin

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"
)

// metricName finds the metric names in a PromQL expression (handoff's, and
// the Go and process collectors').
var metricName = regexp.MustCompile(`\b(?:handoff|go|process)_[a-z0-9_]+\b`)

// TestMonitoringNamesExist: every metric that a rule, a rule test's input
// series or a panel of the dashboard in deploy/monitoring names is in the
// exposition, so a renamed metric cannot leave them silently empty.
func TestMonitoringNamesExist(t *testing.T) {
	s, _ := newTestServer(t, false, Options{Cluster: testCluster()}) // the handoff_cluster_* metrics too
	s.ObservePin("web", 1)                                           // the histogram has a series
	mfs := scrape(t, s)
	exists := func(name string) bool {
		if mfs[name] != nil {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && mfs[base] != nil && mfs[base].GetType() == dto.MetricType_HISTOGRAM {
				return true
			}
		}
		return false
	}

	dir := "../deploy/monitoring"
	named := map[string][]string{} // metric → where
	files := decodeAll(t, filepath.Join(dir, "*.yaml"), yaml.Unmarshal, func(f string, doc *ruleFile) {
		for _, g := range doc.Groups {
			for _, r := range g.Rules {
				for _, m := range metricName.FindAllString(r.Expr, -1) {
					named[m] = append(named[m], f+" "+r.Alert+r.Record)
				}
			}
		}
		for _, tc := range doc.Tests {
			for _, in := range tc.InputSeries {
				for _, m := range metricName.FindAllString(in.Series, 1) {
					named[m] = append(named[m], f+" input series")
				}
			}
		}
	})
	dashboards := decodeAll(t, filepath.Join(dir, "*.json"), json.Unmarshal, func(f string, d *dashboard) {
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				for _, m := range metricName.FindAllString(tg.Expr, -1) {
					named[m] = append(named[m], f+" panel "+p.Title)
				}
			}
		}
	})
	if files == 0 || dashboards == 0 || len(named) < 20 {
		t.Fatalf("found %d rule files, %d dashboards, %d metric names in %s", files, dashboards, len(named), dir)
	}
	for _, m := range slices.Sorted(func(yield func(string) bool) {
		for k := range named {
			if !yield(k) {
				return
			}
		}
	}) {
		if !exists(m) {
			t.Errorf("%s, named by %s, is not in /metrics", m, strings.Join(slices.Compact(named[m]), ", "))
		}
	}
}

// ruleFile is what the test reads of a Prometheus rule file with its unit
// tests.
type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Alert, Record, Expr string
		}
	}
	Tests []struct {
		InputSeries []struct {
			Series string
		} `yaml:"input_series"`
	}
}

// dashboard is what the test reads of a Grafana dashboard.
type dashboard struct {
	Panels []struct {
		Title   string
		Targets []struct{ Expr string }
	}
}

// decodeAll decodes each file that matches pattern with unmarshal and
// hands it, by its base name, to use; it returns how many files matched.
func decodeAll[T any](t *testing.T, pattern string, unmarshal func([]byte, any) error, use func(file string, v *T)) int {
	t.Helper()
	files, _ := filepath.Glob(pattern)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v T
		if err := unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		use(filepath.Base(f), &v)
	}
	return len(files)
}
