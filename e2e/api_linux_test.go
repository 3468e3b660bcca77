package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// adminAPI talks HTTP to the admin API of a daemon, from inside a
// namespace.
type adminAPI struct {
	t     *testing.T
	base  string
	token string
	hc    *http.Client
}

// newAdminAPI is a client of the admin API at listen (host:port), dialling
// from ns, sending token as the bearer token unless it is empty.
func newAdminAPI(t *testing.T, ns *nstest.NS, listen, token string) *adminAPI {
	return &adminAPI{t: t, base: "http://" + listen, token: token, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, addr)
		}},
	}}
}

// do sends a request and returns the status and body.
func (c *adminAPI) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	code, b, err := c.try(method, path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	return code, b
}

// try is do for any goroutine: it returns errors instead of failing.
func (c *adminAPI) try(method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: reading the body: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}

// must sends a request that must answer want; it decodes the body into out
// (unless out is nil). An error status must come with {"error": "..."}.
func (c *adminAPI) must(want int, method, path string, body, out any) {
	c.t.Helper()
	code, b := c.do(method, path, body)
	if code != want {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, b)
	}
	if want >= 400 {
		var e struct{ Error string }
		if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
			c.t.Fatalf("%s %s: error body %q is not {\"error\": ...}", method, path, b)
		}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// status is GET /api/v1/status.
func (c *adminAPI) status() balancer.Status {
	c.t.Helper()
	var st balancer.Status
	c.must(200, "GET", "/api/v1/status", nil, &st)
	return st
}

// backendNames returns the names of the backends of svc in the status.
func (c *adminAPI) backendNames(svc string) []string {
	c.t.Helper()
	var names []string
	for _, s := range c.status().Services {
		if s.Name == svc {
			for _, b := range s.Backends {
				names = append(names, b.Name)
			}
		}
	}
	return names
}

// backendStatus finds backend name of service svc in st.
func backendStatus(st balancer.Status, svc, name string) (balancer.BackendStatus, bool) {
	for _, s := range st.Services {
		if s.Name == svc {
			for _, b := range s.Backends {
				if b.Name == name {
					return b, true
				}
			}
		}
	}
	return balancer.BackendStatus{}, false
}

// metrics scrapes /metrics and parses it with Prometheus' text parser.
func (c *adminAPI) metrics() map[string]*dto.MetricFamily {
	c.t.Helper()
	code, b := c.do("GET", "/metrics", nil)
	if code != 200 {
		c.t.Fatalf("/metrics: %d %s", code, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		c.t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// metricValue returns the value of the series of family name whose labels
// include want.
func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("/metrics has no %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	t.Fatalf("/metrics has no %s%v", name, want)
	return 0
}
