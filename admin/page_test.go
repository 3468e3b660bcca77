package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// demoReader serves canned state: Status returns statuses in turn and then
// the last one forever, and Clients walks pins. A service missing from the
// status is ErrNotFound.
type demoReader struct {
	mu       sync.Mutex
	statuses []balancer.Status
	pins     []balancer.ClientPin
	err      error // returned by every method when set
}

func (d *demoReader) State() balancer.State { return balancer.StateServing }

func (d *demoReader) Status(ctx context.Context) (balancer.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return balancer.Status{}, d.err
	}
	st := d.statuses[0]
	if len(d.statuses) > 1 {
		d.statuses = d.statuses[1:]
	}
	return st, nil
}

func (d *demoReader) check(service string) error {
	if d.err != nil {
		return d.err
	}
	for _, s := range d.statuses[0].Services {
		if s.Name == service {
			return nil
		}
	}
	return fmt.Errorf("service %q: %w", service, balancer.ErrNotFound)
}

func (d *demoReader) Clients(ctx context.Context, service, backend string, limit int, fn func(balancer.ClientPin) error) error {
	d.mu.Lock()
	err := d.check(service)
	pins := slices.Clone(d.pins)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	n := 0
	for _, p := range pins {
		if backend != "" && p.Backend != backend {
			continue
		}
		if limit > 0 && n == limit {
			break
		}
		n++
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// demoStatus is a realistic daemon: two services, one backend down, one
// draining, one registered through the API. It is what the screenshot
// shows.
func demoStatus() balancer.Status {
	now := time.Now()
	return balancer.Status{
		Mode:    "kernel",
		Version: "v0.9.0",
		Started: now.Add(-(3*24*time.Hour + 4*time.Hour + 12*time.Minute)),
		Uptime:  (3*24*time.Hour + 4*time.Hour + 12*time.Minute).Seconds(),
		Reloads: map[string]uint64{"ok": 4},
		Services: []balancer.ServiceStatus{{
			Name: "web-frontend", Listen: "203.0.113.10:443", Open: true, Classify: "sni", MaxClients: 65536,
			Pinned: 18342, Active: 1274, Migrations: 3, MigratedClients: 2210, MigrationSeconds: 0.8,
			Classified: map[string]uint64{"pinned": 48210, "unclassified/no-match": 12},
			Backends: []balancer.BackendStatus{
				{Name: "web-eu-1", Address: "10.20.0.11:8443", Pool: "default", Weight: 1, Health: "up",
					Since: now.Add(-76 * time.Hour), Pinned: 7320, Active: 541, Connections: 210433,
					BytesIn: 3_400_000_000, BytesOut: 41_200_000_000, Packets: 9_100_000, ForwardBytes: 212_000_000_000},
				{Name: "web-eu-2", Address: "10.20.0.12:8443", Pool: "default", Weight: 1, Health: "up", Draining: true,
					Since: now.Add(-76 * time.Hour), Pinned: 4105, Active: 318, Connections: 198224,
					BytesIn: 3_100_000_000, BytesOut: 38_900_000_000, ForwardBytes: 187_000_000_000},
				{Name: "web-us-1", Address: "10.30.0.21:8443", Pool: "default", Weight: 1, Health: "down",
					Reason: "tcp connect 10.30.0.21:8443: connection refused", Since: now.Add(-7*time.Minute - 12*time.Second),
					Pinned: 0, Active: 0, Connections: 120377, BytesIn: 2_000_000_000, BytesOut: 22_000_000_000},
				{Name: "web-us-2", Address: "10.30.0.22:8443", Pool: "default", Weight: 2, Health: "up", Registered: true,
					ExpiresIn: 24, Since: now.Add(-7 * time.Minute), Pinned: 6917, Active: 415, Connections: 8311,
					BytesIn: 410_000_000, BytesOut: 5_300_000_000, ForwardBytes: 12_800_000_000},
			},
		}, {
			Name: "game-relay", Listen: "198.51.100.20:7777", Open: true, Classify: "payload", MaxClients: 100000,
			Pinned: 2904, Active: 2904,
			Backends: []balancer.BackendStatus{
				{Name: "relay-ams", Address: "10.40.0.5:7777", Pool: "eu", Weight: 1, Health: "up", Pinned: 1650, Active: 1650,
					Connections: 5120, BytesIn: 880_000_000, BytesOut: 1_930_000_000},
				{Name: "relay-fra", Address: "10.40.0.6:7777", Pool: "eu", Weight: 1, Health: "up", Pinned: 1101, Active: 1101,
					Connections: 3877, BytesIn: 610_000_000, BytesOut: 1_420_000_000},
				{Name: "relay-nyc", Address: "10.50.0.5:7777", Pool: "us", Weight: 1, Health: "up", Pinned: 153, Active: 153,
					Connections: 402, BytesIn: 51_000_000, BytesOut: 97_000_000},
			},
		}},
	}
}

// names are every service and backend name of st.
func names(st balancer.Status) []string {
	var out []string
	for _, s := range st.Services {
		out = append(out, s.Name)
		for _, b := range s.Backends {
			out = append(out, b.Name)
		}
	}
	return out
}

func TestStatusPage(t *testing.T) {
	hostile := demoStatus()
	hostile.Services[0].Backends[2].Reason = `<img src=x onerror="alert(1)">`
	hostile.Services[1].Name = `game"><script>alert(2)</script>`

	for _, tc := range []struct {
		desc   string
		ctl    *demoReader
		method string
		code   int
		want   []string
		reject []string
	}{
		{desc: "every name, health, draining and bar", ctl: &demoReader{statuses: []balancer.Status{demoStatus()}},
			method: "GET", code: 200,
			want: append(names(demoStatus()), "kernel mode", "v0.9.0", "3d 4h", "203.0.113.10:443", "10.30.0.21:8443",
				`<span class="badge b-down">down</span>`, `<span class="badge b-drain">draining</span>`,
				"connection refused", "for 7m 1", `style="width: 39.9%"`, "18\u202f342", "API")},
		{desc: "values are escaped", ctl: &demoReader{statuses: []balancer.Status{hostile}}, method: "GET", code: 200,
			want:   []string{"&lt;img src=x onerror=&#34;alert(1)&#34;&gt;", "game&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"},
			reject: []string{"<img src=x", "<script>alert"}},
		{desc: "no services", ctl: &demoReader{statuses: []balancer.Status{{Mode: "userspace", State: balancer.StateServing}}}, method: "GET", code: 200,
			want: []string{"No services are configured.", "userspace mode"}, reject: []string{"serving"}},
		{desc: "starting", ctl: &demoReader{statuses: []balancer.Status{{Mode: "kernel", State: balancer.StateStarting}}}, method: "GET", code: 200,
			want: []string{`<span class="badge b-drain">starting</span>`, "Starting: the services are opening their listeners."}, reject: []string{"No services are configured."}},
		{desc: "the engine fails", ctl: &demoReader{statuses: []balancer.Status{{}}, err: errors.New("engine stopped")},
			method: "GET", code: 500, want: []string{"The engine did not report its status: engine stopped"}},
		{desc: "HEAD", ctl: &demoReader{statuses: []balancer.Status{demoStatus()}}, method: "HEAD", code: 200},
		{desc: "POST", ctl: &demoReader{statuses: []balancer.Status{demoStatus()}}, method: "POST", code: 405},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			rec := httptest.NewRecorder()
			StatusPage(tc.ctl, nil).ServeHTTP(rec, httptest.NewRequest(tc.method, "/", nil))
			body := rec.Body.String()
			if rec.Code != tc.code {
				t.Fatalf("status %d, want %d\n%s", rec.Code, tc.code, body)
			}
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, r := range tc.reject {
				if strings.Contains(body, r) {
					t.Errorf("page has %q", r)
				}
			}
			if tc.method == "HEAD" && body != "" {
				t.Errorf("HEAD has a body of %d bytes", len(body))
			}
			if tc.code == 200 && tc.method == "GET" {
				checkSelfContained(t, rec.Result().Header, body)
			}
		})
	}
}

// checkSelfContained: no external asset, and the CSP admits the page's
// script by its hash (so the browser runs it).
func checkSelfContained(t *testing.T, h http.Header, body string) {
	t.Helper()
	if ct := h.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if m := regexp.MustCompile(`(?i)(src|href)="(https?:)?//`).FindString(body); m != "" {
		t.Errorf("page loads an external asset: %s", m)
	}
	scripts := regexp.MustCompile(`(?s)<script>(.*?)</script>`).FindAllStringSubmatch(body, -1)
	if len(scripts) != 1 {
		t.Fatalf("%d scripts, want 1", len(scripts))
	}
	sum := sha256.Sum256([]byte(scripts[0][1]))
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "'sha256-"+base64.StdEncoding.EncodeToString(sum[:])+"'") {
		t.Errorf("the CSP %q does not admit the page's script", csp)
	}
	if h.Get("Referrer-Policy") != "no-referrer" {
		t.Error("no Referrer-Policy: a ?token= URL could leak")
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{FormatBytes(0), "0 B"},
		{FormatBytes(1023), "1023 B"},
		{FormatBytes(1536), "1.5 KiB"},
		{FormatBytes(12 << 30), "12.0 GiB"},
		{FormatBytes(1 << 62), "4.0 EiB"},
		{FormatSeconds(-3), "0s"},
		{FormatSeconds(0), "0s"},
		{FormatSeconds(45.4), "45s"},
		{FormatSeconds(60), "1m"},
		{FormatSeconds(725), "12m 5s"},
		{FormatSeconds(4*3600 + 12*60 + 9), "4h 12m"},
		{FormatSeconds(3*86400 + 4*3600 + 59), "3d 4h"},
		{FormatSeconds(86400 + 30), "1d"},
		{groupDigits(int64(-1234567)), "-1\u202f234\u202f567"},
		{groupDigits(uint64(999)), "999"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// chromiumPath finds headless Chromium. Without it the test skips, except
// under CI=true, where it fails: CI must install the package.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Skip(t, "chromium is not installed (apt-get install -y chromium): skipping the browser test")
	return ""
}

// runChromium runs headless Chromium with args and returns its stdout. It
// reaches nothing but the URL it is given.
func runChromium(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
		"--hide-scrollbars", "--force-device-scale-factor=1", "--user-data-dir=" + t.TempDir(),
	}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// TestStatusPageInChromium loads the page as an operator would: through the
// admin server with a token (?token=, then the cookie), in headless
// Chromium. The DOM must name every service and backend, and after one
// refresh (virtual time runs the script's timer) it must show the state
// of the second Status call. HANDOFF_SCREENSHOT=1 also writes
// docs/status-page.png.
func TestStatusPageInChromium(t *testing.T) {
	bin := chromiumPath(t)
	later := demoStatus()
	later.Services[1].Backends = append(later.Services[1].Backends, balancer.BackendStatus{
		Name: "relay-sgp-late-joiner", Address: "10.60.0.5:7777", Pool: "apac", Health: "up", Registered: true})
	ctl := &demoReader{statuses: []balancer.Status{demoStatus(), later}}
	srv := serveAdmin(t, readOnly{Reader: ctl}, "s3cret-token")

	dom := runChromium(t, bin, "--dump-dom", srv.URL+"/?token=s3cret-token")
	for _, n := range names(demoStatus()) {
		if !strings.Contains(dom, ">"+n) {
			t.Errorf("the rendered page lacks %q", n)
		}
	}
	if !strings.Contains(dom, `class="badge b-down"`) || !strings.Contains(dom, `class="badge b-drain"`) {
		t.Error("the rendered page shows no down or no draining backend")
	}
	if strings.Contains(dom, "relay-sgp-late-joiner") {
		t.Error("the first load shows the second Status call")
	}
	if t.Failed() {
		t.Logf("DOM:\n%s", dom)
	}

	ctl.mu.Lock()
	ctl.statuses = []balancer.Status{demoStatus(), later}
	ctl.mu.Unlock()
	dom = runChromium(t, bin, "--virtual-time-budget=8000", "--dump-dom", srv.URL+"/?token=s3cret-token")
	if !strings.Contains(dom, ">relay-sgp-late-joiner") {
		t.Errorf("after a refresh the page does not show the new backend\n%s", dom)
	}
	if strings.Contains(dom, `class="is-stale"`) {
		t.Errorf("the refresh failed\n%s", dom)
	}

	if os.Getenv("HANDOFF_SCREENSHOT") == "" {
		return
	}
	out, err := filepath.Abs(filepath.Join("..", "docs", "status-page.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Fatal(err)
	}
	ctl.mu.Lock()
	ctl.statuses = []balancer.Status{demoStatus()}
	ctl.mu.Unlock()
	runChromium(t, bin, "--screenshot="+out, "--window-size=1280,900", srv.URL+"/?token=s3cret-token")
	if fi, err := os.Stat(out); err != nil || fi.Size() < 10_000 {
		t.Fatalf("screenshot %s: %v", out, err)
	}
	t.Logf("wrote %s", out)
}

// serveAdmin serves ctl through the admin server, with the status page
// and, when token is not "", authentication, on 127.0.0.1:0.
// readOnly is a Controller whose change side is missing: for tests that
// only read (a change would panic on the nil interface).
type readOnly struct {
	Reader
	Pinner
	Registrar
	Operator
}

func serveAdmin(t *testing.T, ctl Controller, token string) *httptest.Server {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	opts := Options{Controller: ctl, Listen: "127.0.0.1:0", Page: StatusPage(ctl, nil), Logger: logrus.NewEntry(log)}
	if token != "" {
		opts.TokenFile = filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(opts.TokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv
}
