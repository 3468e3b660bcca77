package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/testenv"
)

const testToken = "s3cret-t0ken"

func testLogger() (*logrus.Entry, *logtest.Hook) {
	l, hook := logtest.NewNullLogger()
	l.SetLevel(logrus.DebugLevel)
	return logrus.NewEntry(l), hook
}

// newTestServer builds a server on a fresh fake. With token, it writes a
// token file and listens "everywhere" (which needs it).
func newTestServer(t testing.TB, token bool, opts Options) (*Server, *fakeController) {
	t.Helper()
	f := newFake()
	opts.Controller = f
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if token {
		opts.TokenFile = writeToken(t, testToken+"\n")
		opts.Listen = "0.0.0.0:0"
	}
	if opts.Logger == nil {
		opts.Logger, _ = testLogger()
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s, f
}

func writeToken(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// getJSON GETs target from h, wants status 200, and decodes the body into
// v.
func getJSON(t *testing.T, h http.Handler, target string, v any) *httptest.ResponseRecorder {
	t.Helper()
	w := do(h, "GET", target, "")
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	return w
}

// do sends one request to h as a loopback client would; hdr is pairs of
// header name and value.
func do(h http.Handler, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	req.Host = "127.0.0.1:9900"
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// checkError checks that w is a JSON error with code.
func checkError(t *testing.T, w *httptest.ResponseRecorder, code int) string {
	t.Helper()
	if w.Code != code {
		t.Fatalf("status %d, want %d; body %s", w.Code, code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
		t.Fatalf("body %q: want {\"error\": \"...\"} (%v)", w.Body, err)
	}
	return e.Error
}

func TestCheck(t *testing.T) {
	good := writeToken(t, "  tok\n")
	empty := writeToken(t, " \n\t\n")
	twoWords := writeToken(t, "tok en\n")
	missing := filepath.Join(t.TempDir(), "nope")
	for _, tc := range []struct {
		listen, token string
		want          string // "" = accepted; else the exact error or, with a * prefix, a substring
	}{
		{"127.0.0.1:9900", "", ""},
		{"127.8.9.10:1", "", ""},
		{"[::1]:9900", "", ""},
		{"localhost:9900", "", ""},
		{"LocalHost:0", "", ""},
		{"[::ffff:127.0.0.1]:9900", "", ""},
		{"0.0.0.0:9900", "", "admin.listen 0.0.0.0:9900 is not loopback: set admin.token_file"},
		{":9900", "", "admin.listen :9900 is not loopback: set admin.token_file"},
		{"[::]:9900", "", "admin.listen [::]:9900 is not loopback: set admin.token_file"},
		{"198.18.0.1:9900", "", "admin.listen 198.18.0.1:9900 is not loopback: set admin.token_file"},
		{"admin.example:9900", "", "admin.listen admin.example:9900 is not loopback: set admin.token_file"},
		{"0.0.0.0:9900", good, ""},
		{"127.0.0.1:9900", good, ""},
		{"0.0.0.0:9900", empty, "admin.token_file " + empty + " is empty"},
		{"0.0.0.0:9900", twoWords, "*the token must be one word"},
		{"127.0.0.1:9900", missing, "admin.token_file: open " + missing + ": no such file or directory"},
		{"127.0.0.1", "", `admin.listen "127.0.0.1": want host:port`},
		{"", "", `admin.listen "": want host:port`},
		{"127.0.0.1:http", "", `*port "http": want a number`},
		{"127.0.0.1:70000", "", `*port "70000"`},
	} {
		t.Run(tc.listen+"|"+filepath.Base(tc.token), func(t *testing.T) {
			err := Options{Listen: tc.listen, TokenFile: tc.token}.Check()
			switch {
			case tc.want == "":
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			case err == nil:
				t.Fatalf("Check accepted it; want %q", tc.want)
			case strings.HasPrefix(tc.want, "*"):
				if !strings.Contains(err.Error(), tc.want[1:]) {
					t.Fatalf("Check: %q, want it to contain %q", err, tc.want[1:])
				}
			case err.Error() != tc.want:
				t.Fatalf("Check: %q, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	_, err := New(Options{Controller: newFake(), Listen: "0.0.0.0:9900"})
	if err == nil || err.Error() != "admin.listen 0.0.0.0:9900 is not loopback: set admin.token_file" {
		t.Fatalf("New: %v", err)
	}
	if _, err := New(Options{Listen: "127.0.0.1:9900"}); err == nil {
		t.Fatal("New accepted no Controller")
	}
	if _, err := New(Options{Controller: newFake(), Listen: "0.0.0.0:9900", TokenFile: writeToken(t, "\n")}); err == nil {
		t.Fatal("New accepted an empty token file")
	}
}

func TestEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name         string
		method, path string
		body         string
		ctlErr       error
		moved        int
		code         int
		want         string // a substring of the body
		call         string // the change the Controller saw; "" = none
	}{
		{name: "healthz", method: "GET", path: "/healthz", code: 200, want: "ok\n"},
		{name: "readyz", method: "GET", path: "/readyz", code: 200, want: "serving\n"},
		{name: "status state", method: "GET", path: "/api/v1/status", code: 200, want: `"state": "serving"`},
		{name: "status", method: "GET", path: "/api/v1/status", code: 200, want: `"mode": "kernel"`},
		{name: "status version from options", method: "GET", path: "/api/v1/status", code: 200, want: `"version": "v9.9.9"`},
		{name: "status error", method: "GET", path: "/api/v1/status", ctlErr: errors.New("boom"), code: 500, want: "boom"},

		{name: "pin", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "198.18.0.5", "backend": "be1"}`,
			code: 200, want: `"ok": true`, call: "pin web 198.18.0.5 be1"},
		{name: "pin mapped v4", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "::ffff:198.18.0.5", "backend": "be1"}`,
			code: 200, call: "pin web 198.18.0.5 be1"},
		{name: "pin v6", method: "POST", path: "/api/v1/services/v6/pins", body: `{"client": "2001:db8::5", "backend": "a"}`,
			code: 200, call: "pin v6 2001:db8::5 a"},
		{name: "pin unknown service", method: "POST", path: "/api/v1/services/nope/pins", body: `{"client": "198.18.0.5", "backend": "be1"}`,
			code: 404, want: `service \"nope\"`},
		{name: "pin backend not in service", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "198.18.0.5", "backend": "be9"}`,
			code: 404, want: "no backend"},
		{name: "pin bad IP", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "198.18.0.300", "backend": "be1"}`,
			code: 400, want: `client \"198.18.0.300\": not an IP address`},
		{name: "pin zone", method: "POST", path: "/api/v1/services/v6/pins", body: `{"client": "fe80::1%eth0", "backend": "a"}`,
			code: 400, want: "not an IP address"},
		{name: "pin wrong family", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "2001:db8::5", "backend": "be1"}`,
			code: 400, want: "wrong family"},
		{name: "pin no backend", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "198.18.0.5"}`,
			code: 400, want: "backend: required"},
		{name: "pin unknown field", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "198.18.0.5", "backend": "be1", "ttl": 3}`,
			code: 400, want: `unknown field \"ttl\"`},
		{name: "pin bad JSON", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": `,
			code: 400, want: "request body"},
		{name: "pin wrong type", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": 5, "backend": "be1"}`,
			code: 400, want: "request body"},
		{name: "pin trailing data", method: "POST", path: "/api/v1/services/web/pins", body: `{"client": "198.18.0.5", "backend": "be1"} {}`,
			code: 400, want: "data after the JSON object"},
		{name: "pin empty body", method: "POST", path: "/api/v1/services/web/pins",
			code: 400, want: "empty"},
		{name: "pin body too large", method: "POST", path: "/api/v1/services/web/pins",
			body: `{"client": "198.18.0.5", "backend": "` + strings.Repeat("x", maxBody) + `"}`, code: 413, want: "larger than"},

		{name: "unpin", method: "DELETE", path: "/api/v1/services/web/pins/198.18.0.5", code: 200, call: "unpin web 198.18.0.5"},
		{name: "unpin v6", method: "DELETE", path: "/api/v1/services/v6/pins/2001:db8::5", code: 200, call: "unpin v6 2001:db8::5"},
		{name: "unpin bad IP", method: "DELETE", path: "/api/v1/services/web/pins/not-an-ip", code: 400, want: "not an IP address"},
		{name: "unpin unknown service", method: "DELETE", path: "/api/v1/services/nope/pins/198.18.0.5", code: 404},

		{name: "register", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "weight": 3, "pool": "vip", "ttl": "30s"}`,
			code: 200, call: "register web name=be3 address=198.19.1.13:80 weight=3 pool=vip ttl=30s"},
		{name: "register ttl seconds", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": 90}`,
			code: 200, call: "register web name=be3 address=198.19.1.13:80 weight=0 pool= ttl=1m30s"},
		{name: "register ttl fraction", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": 1.5}`,
			code: 200, call: "register web name=be3 address=198.19.1.13:80 weight=0 pool= ttl=1.5s"},
		{name: "register ttl numeric string", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": "45"}`,
			code: 200, call: "register web name=be3 address=198.19.1.13:80 weight=0 pool= ttl=45s"},
		{name: "register no ttl", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": null}`,
			code: 200, call: "register web name=be3 address=198.19.1.13:80 weight=0 pool= ttl=0s"},
		{name: "register v6", method: "POST", path: "/api/v1/services/v6/backends",
			body: `{"name": "b", "address": "[2001:db8::12]:443"}`,
			code: 200, call: "register v6 name=b address=[2001:db8::12]:443 weight=0 pool= ttl=0s"},
		{name: "register bad ttl", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": "soon"}`, code: 400, want: `ttl \"soon\"`},
		{name: "register negative ttl", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": "-5s"}`, code: 400, want: "must not be negative"},
		{name: "register ttl wrong type", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": true}`, code: 400, want: "ttl"},
		{name: "register ttl past the largest duration", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": 1e300}`, code: 400, want: "want at most 876000h"},
		{name: "register ttl NaN", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": "NaN"}`, code: 400, want: "want at most"},
		{name: "register ttl -Inf", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": "-Inf"}`, code: 400, want: "must not be negative"},
		{name: "register ttl duration past the largest", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "ttl": "900000h"}`, code: 400, want: "too long"},
		{name: "register bad address", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "backend.example:80"}`, code: 400, want: `address \"backend.example:80\": want IP:port`},
		{name: "register address without port", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13"}`, code: 400, want: "want IP:port"},
		{name: "register port 0", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:0"}`, code: 400, want: "port 0"},
		{name: "register no name", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"address": "198.19.1.13:80"}`, code: 400, want: "name: required"},
		{name: "register negative weight", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "weight": -1}`, code: 400, want: "weight -1"},
		{name: "register unknown field", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80", "health": "up"}`, code: 400, want: "unknown field"},
		{name: "register config backend", method: "POST", path: "/api/v1/services/web/backends",
			body: `{"name": "be1", "address": "198.19.1.11:80"}`, code: 409, want: "config file"},
		{name: "register unknown service", method: "POST", path: "/api/v1/services/nope/backends",
			body: `{"name": "be3", "address": "198.19.1.13:80"}`, code: 404},

		{name: "deregister", method: "DELETE", path: "/api/v1/services/web/backends/be2", code: 200, call: "deregister web be2"},
		{name: "deregister config backend", method: "DELETE", path: "/api/v1/services/web/backends/be1", code: 409},
		{name: "deregister unknown", method: "DELETE", path: "/api/v1/services/web/backends/be9", code: 404},

		{name: "drain", method: "POST", path: "/api/v1/services/web/backends/be1/drain", code: 200, want: `"moved": 0`, call: "drain web be1 op=0"},
		{name: "drain migrate", method: "POST", path: "/api/v1/services/web/backends/be1/drain?migrate=1", moved: 42,
			code: 200, want: `"moved": 42`, call: "drain web be1 op=1"},
		{name: "drain migrate bare", method: "POST", path: "/api/v1/services/web/backends/be1/drain?migrate", moved: 1,
			code: 200, want: `"moved": 1`, call: "drain web be1 op=1"},
		{name: "drain undo", method: "POST", path: "/api/v1/services/web/backends/be1/drain?undo=1", code: 200, call: "drain web be1 op=2"},
		{name: "drain migrate=0", method: "POST", path: "/api/v1/services/web/backends/be1/drain?migrate=0", code: 200, call: "drain web be1 op=0"},
		{name: "drain both", method: "POST", path: "/api/v1/services/web/backends/be1/drain?migrate=1&undo=1", code: 400, want: "exclude each other"},
		{name: "drain bad flag", method: "POST", path: "/api/v1/services/web/backends/be1/drain?migrate=yes", code: 400, want: `migrate=\"yes\"`},
		{name: "drain unknown backend", method: "POST", path: "/api/v1/services/web/backends/be9/drain", code: 404},

		{name: "open", method: "POST", path: "/api/v1/services/web/open", code: 200, call: "open web true"},
		{name: "close", method: "POST", path: "/api/v1/services/web/close", code: 200, call: "open web false"},
		{name: "close unknown", method: "POST", path: "/api/v1/services/nope/close", code: 404},

		{name: "reload", method: "POST", path: "/api/v1/reload", code: 200, call: "reload"},
		{name: "reload invalid", method: "POST", path: "/api/v1/reload",
			ctlErr: fmt.Errorf("%w: handoff.yaml:3:5: bad\nhandoff.yaml:9:1: worse", balancer.ErrInvalid), code: 400, want: `bad\nhandoff.yaml:9:1: worse`},
		{name: "reload conflict", method: "POST", path: "/api/v1/reload", ctlErr: fmt.Errorf("busy: %w", balancer.ErrConflict), code: 409},
		{name: "reload not found", method: "POST", path: "/api/v1/reload", ctlErr: fmt.Errorf("x: %w", balancer.ErrNotFound), code: 404},
		{name: "reload failed", method: "POST", path: "/api/v1/reload", ctlErr: errors.New("iptables-restore: exit 1"), code: 500, want: "iptables-restore"},

		{name: "wrong method reload", method: "GET", path: "/api/v1/reload", code: 405, want: "allowed: POST"},
		{name: "wrong method status", method: "DELETE", path: "/api/v1/status", code: 405, want: "allowed: GET, HEAD"},
		{name: "wrong method pins", method: "GET", path: "/api/v1/services/web/pins", code: 405},
		{name: "wrong method pin", method: "POST", path: "/api/v1/services/web/pins/198.18.0.5", code: 405, want: "allowed: DELETE"},
		{name: "wrong method clients", method: "POST", path: "/api/v1/services/web/clients", code: 405},
		{name: "wrong method healthz", method: "POST", path: "/healthz", code: 405},
		{name: "unknown path", method: "GET", path: "/api/v1/nothing", code: 404, want: "no endpoint GET /api/v1/nothing"},
		{name: "no page", method: "GET", path: "/", code: 404},
		{name: "pprof off", method: "GET", path: "/debug/pprof/", code: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, f := newTestServer(t, false, Options{Version: "v9.9.9"})
			f.err, f.moved = tc.ctlErr, tc.moved
			w := do(s, tc.method, tc.path, tc.body)
			if tc.code >= 400 {
				checkError(t, w, tc.code)
			} else if w.Code != tc.code {
				t.Fatalf("status %d, want %d; body %s", w.Code, tc.code, w.Body)
			}
			if !strings.Contains(w.Body.String(), tc.want) {
				t.Errorf("body %s, want it to contain %s", w.Body, tc.want)
			}
			var want []string
			if tc.call != "" {
				want = []string{tc.call}
			}
			if got := f.Calls(); !slices.Equal(got, want) {
				t.Errorf("Controller calls %q, want %q", got, want)
			}
			if tc.code == 405 && w.Header().Get("Allow") == "" {
				t.Error("405 without Allow")
			}
		})
	}
}

func TestDrainErrorReportsMoved(t *testing.T) {
	s, _ := newTestServer(t, false, Options{})
	s.ctl = drainFails{newFake()}
	s.handler = s.routes(Options{})
	w := do(s, "POST", "/api/v1/services/web/backends/be1/drain?migrate=1", "")
	checkError(t, w, 500)
	var body struct {
		Moved int `json:"moved"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.Moved != 7 {
		t.Fatalf("body %s: want moved 7", w.Body)
	}
}

type drainFails struct{ *fakeController }

func (drainFails) Drain(context.Context, string, string, balancer.DrainOp) (int, error) {
	return 7, errors.New("netlink: interrupted")
}

func TestStatusBody(t *testing.T) {
	s, f := newTestServer(t, false, Options{Version: "v1.2.3"})
	var got balancer.Status
	w := getJSON(t, s, "/api/v1/status", &got)
	want := f.status
	want.Version = "v1.2.3"
	if got.Mode != want.Mode || got.Version != want.Version || len(got.Services) != 2 ||
		got.Services[0].Backends[1].ForwardBytes != 4 || got.Services[0].Classified["pinned"] != 290 {
		t.Errorf("status %+v, want %+v", got, want)
	}
	if w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q", w.Header().Get("Content-Type"))
	}
	// HEAD works where GET does.
	if w := do(s, "HEAD", "/api/v1/status", ""); w.Code != 200 {
		t.Errorf("HEAD: %d", w.Code)
	}
}

func TestClients(t *testing.T) {
	for _, tc := range []struct {
		name, query string
		code        int
		want        []string // clients
		call        string
	}{
		{"all", "", 200, []string{"198.18.0.5", "198.18.0.6", "198.18.0.7"}, "clients web backend= limit=0"},
		{"backend", "?backend=be1", 200, []string{"198.18.0.5", "198.18.0.7"}, "clients web backend=be1 limit=0"},
		{"limit", "?limit=2", 200, []string{"198.18.0.5", "198.18.0.6"}, "clients web backend= limit=2"},
		{"none", "?backend=be2&limit=0", 200, []string{"198.18.0.6"}, "clients web backend=be2 limit=0"},
		{"unknown backend", "?backend=be9", 404, nil, ""},
		{"bad limit", "?limit=many", 400, nil, ""},
		{"negative limit", "?limit=-1", 400, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, f := newTestServer(t, false, Options{})
			target := "/api/v1/services/web/clients" + tc.query
			if tc.code != 200 {
				checkError(t, do(s, "GET", target, ""), tc.code)
				return
			}
			var pins []balancer.ClientPin
			getJSON(t, s, target, &pins)
			var got []string
			for _, p := range pins {
				got = append(got, p.Client)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("clients %q, want %q", got, tc.want)
			}
			if calls := f.Calls(); !slices.Equal(calls, []string{tc.call}) {
				t.Errorf("calls %q, want %q", calls, tc.call)
			}
			if len(pins) > 1 && pins[1] != f.pins["web"][1] && tc.query == "" {
				t.Errorf("pin %+v, want %+v", pins[1], f.pins["web"][1])
			}
		})
	}

	t.Run("empty", func(t *testing.T) {
		s, _ := newTestServer(t, false, Options{})
		w := do(s, "GET", "/api/v1/services/v6/clients", "")
		if w.Code != 200 || strings.TrimSpace(w.Body.String()) != "[]" {
			t.Fatalf("status %d body %q, want 200 []", w.Code, w.Body)
		}
	})
	t.Run("unknown service", func(t *testing.T) {
		s, _ := newTestServer(t, false, Options{})
		checkError(t, do(s, "GET", "/api/v1/services/nope/clients", ""), 404)
	})
}

// failingClients yields n pins, then fails.
type failingClients struct {
	*fakeController
	n int
}

func (f failingClients) Clients(ctx context.Context, service, backend string, limit int, fn func(balancer.ClientPin) error) error {
	for i := range f.n {
		if err := fn(balancer.ClientPin{Client: fmt.Sprintf("198.18.%d.%d", i/256, i%256), Backend: "be1"}); err != nil {
			return err
		}
	}
	return errors.New("netlink: dump interrupted")
}

// An error after the stream started cuts the array: the client sees a
// body that does not parse, never a short list that looks complete.
func TestClientsErrorMidStream(t *testing.T) {
	for _, n := range []int{0, 3, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s, _ := newTestServer(t, false, Options{})
			s.ctl = failingClients{newFake(), n}
			s.handler = s.routes(Options{})
			srv := httptest.NewServer(s)
			defer srv.Close()
			resp, err := http.Get(srv.URL + "/api/v1/services/web/clients")
			if err != nil {
				if n > 0 {
					return // cut before the buffered start of the array went out
				}
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, readErr := io.ReadAll(resp.Body)
			if n == 0 {
				if resp.StatusCode != 500 || !strings.Contains(string(body), "dump interrupted") {
					t.Fatalf("status %d body %q, want 500 with the error", resp.StatusCode, body)
				}
				return
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if readErr == nil {
				t.Errorf("body read to the end (%d bytes); want the connection cut", len(body))
			}
			var pins []balancer.ClientPin
			if err := json.Unmarshal(body, &pins); err == nil {
				t.Errorf("a cut stream parsed as %d pins", len(pins))
			}
		})
	}
}

func TestAuth(t *testing.T) {
	s, f := newTestServer(t, true, Options{Pprof: true, Page: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "<html>status page</html>")
	})})
	bearer := "Bearer " + testToken
	for _, tc := range []struct {
		name, method, path string
		hdr                []string
		code               int
	}{
		{"healthz needs none", "GET", "/healthz", nil, 200},
		{"healthz ignores a bad token", "GET", "/healthz", []string{"Authorization", "Bearer nope"}, 200},
		{"readyz needs none", "GET", "/readyz", nil, 200},
		{"readyz ignores a bad token", "GET", "/readyz", []string{"Authorization", "Bearer nope"}, 200},
		{"status without token", "GET", "/api/v1/status", nil, 401},
		{"status wrong token", "GET", "/api/v1/status", []string{"Authorization", "Bearer nope"}, 401},
		{"status token prefix", "GET", "/api/v1/status", []string{"Authorization", "Bearer " + testToken[:4]}, 401},
		{"status basic auth", "GET", "/api/v1/status", []string{"Authorization", "Basic " + testToken}, 401},
		{"status token", "GET", "/api/v1/status", []string{"Authorization", bearer}, 200},
		{"status lowercase scheme", "GET", "/api/v1/status", []string{"Authorization", "bearer " + testToken}, 200},
		{"metrics without token", "GET", "/metrics", nil, 401},
		{"metrics token", "GET", "/metrics", []string{"Authorization", bearer}, 200},
		{"reload without token", "POST", "/api/v1/reload", nil, 401},
		{"reload wrong token", "POST", "/api/v1/reload", []string{"Authorization", "Bearer x"}, 401},
		{"reload token", "POST", "/api/v1/reload", []string{"Authorization", bearer}, 200},
		{"reload query token", "POST", "/api/v1/reload?token=" + testToken, nil, 401},
		{"page without token", "GET", "/", nil, 401},
		{"page token", "GET", "/", []string{"Authorization", bearer}, 200},
		{"pprof without token", "GET", "/debug/pprof/", nil, 401},
		{"pprof token", "GET", "/debug/pprof/", []string{"Authorization", bearer}, 200},
		{"unknown path without token", "GET", "/nothing", nil, 401},
		{"unknown path token", "GET", "/nothing", []string{"Authorization", bearer}, 404},
		{"any host with token", "GET", "/api/v1/status", []string{"Authorization", bearer, "Host", "lb.example:9900"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := do(s, tc.method, tc.path, "", tc.hdr...)
			if tc.code >= 400 {
				checkError(t, w, tc.code)
			} else if w.Code != tc.code {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.code, w.Body)
			}
			if tc.code == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	if got := f.Calls(); !slices.Equal(got, []string{"reload"}) {
		t.Errorf("Controller calls %q, want only the authorized reload", got)
	}

	t.Run("browser cookie", func(t *testing.T) {
		checkError(t, do(s, "GET", "/?token=wrong", ""), 401)
		w := do(s, "GET", "/?token="+testToken+"&x=1", "")
		if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/?x=1" {
			t.Fatalf("status %d Location %q, want 303 to /?x=1", w.Code, w.Header().Get("Location"))
		}
		res := http.Response{Header: w.Header()}
		cookies := res.Cookies()
		if len(cookies) != 1 || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode {
			t.Fatalf("cookies %+v, want one HttpOnly SameSite=Strict", cookies)
		}
		c := cookies[0]
		if strings.Contains(c.Value, testToken) {
			t.Error("the cookie holds the token itself")
		}
		cookie := c.Name + "=" + c.Value
		for _, path := range []string{"/", "/api/v1/status", "/api/v1/services/web/clients", "/metrics", "/debug/pprof/"} {
			if w := do(s, "GET", path, "", "Cookie", cookie); w.Code != 200 {
				t.Errorf("GET %s with the cookie: %d %s", path, w.Code, w.Body)
			}
		}
		// The cookie is not a credential for changes.
		checkError(t, do(s, "POST", "/api/v1/reload", "", "Cookie", cookie), 401)
		checkError(t, do(s, "DELETE", "/api/v1/services/web/pins/198.18.0.5", "", "Cookie", cookie), 401)
		checkError(t, do(s, "GET", "/api/v1/status", "", "Cookie", c.Name+"=forged"), 401)
		// A bearer token can't be the cookie value either.
		checkError(t, do(s, "GET", "/api/v1/status", "", "Authorization", "Bearer "+c.Value), 401)
	})
}

func TestHostCheckWithoutToken(t *testing.T) {
	s, _ := newTestServer(t, false, Options{})
	for _, tc := range []struct {
		host string
		code int
	}{
		{"127.0.0.1:9900", 200},
		{"localhost:9900", 200},
		{"localhost", 200},
		{"[::1]:9900", 200},
		{"127.0.0.2", 200},
		{"evil.example:9900", 403},
		{"198.18.0.1:9900", 403},
	} {
		t.Run(tc.host, func(t *testing.T) {
			w := do(s, "GET", "/api/v1/status", "", "Host", tc.host)
			if tc.code == 403 {
				checkError(t, w, 403)
			} else if w.Code != tc.code {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
		})
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if w := do(s, "GET", p, "", "Host", "evil.example"); w.Code != 200 {
			t.Errorf("%s from any host: %d", p, w.Code)
		}
	}
	if w := do(s, "GET", "/readyzz", "", "Host", "evil.example"); w.Code != 403 {
		t.Errorf("a path merely starting like a probe, from another host: %d, want 403", w.Code)
	}
}

// TestReadyz: /readyz follows the Controller's state, 503 until it serves
// and again once it stops; /healthz stays 200 throughout.
func TestReadyz(t *testing.T) {
	s, f := newTestServer(t, false, Options{})
	for _, tc := range []struct {
		state balancer.State
		code  int
	}{
		{balancer.StateStarting, 503},
		{balancer.StateServing, 200},
		{balancer.StateStopping, 503},
	} {
		f.mu.Lock()
		f.status.State = tc.state
		f.mu.Unlock()
		w := do(s, "GET", "/readyz", "")
		if w.Code != tc.code || w.Body.String() != string(tc.state)+"\n" {
			t.Errorf("state %s: readyz %d %q, want %d %q", tc.state, w.Code, w.Body, tc.code, tc.state+"\n")
		}
		if w.Header().Get("Cache-Control") != "no-store" {
			t.Errorf("state %s: readyz may be cached: %q", tc.state, w.Header().Get("Cache-Control"))
		}
		if w := do(s, "GET", "/healthz", ""); w.Code != 200 {
			t.Errorf("state %s: healthz %d", tc.state, w.Code)
		}
	}
}

func TestCrossOrigin(t *testing.T) {
	s, f := newTestServer(t, false, Options{})
	w := do(s, "POST", "/api/v1/reload", "", "Sec-Fetch-Site", "cross-site")
	checkError(t, w, 403)
	w = do(s, "POST", "/api/v1/services/web/close", "", "Origin", "http://evil.example")
	checkError(t, w, 403)
	if calls := f.Calls(); len(calls) != 0 {
		t.Errorf("cross-origin requests reached the Controller: %q", calls)
	}
	if w := do(s, "POST", "/api/v1/reload", "", "Sec-Fetch-Site", "same-origin"); w.Code != 200 {
		t.Errorf("same-origin: %d %s", w.Code, w.Body)
	}
}

func TestPprof(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprint(on), func(t *testing.T) {
			s, _ := newTestServer(t, false, Options{Pprof: on})
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap?debug=1", "/debug/pprof/symbol"} {
				w := do(s, "GET", path, "")
				switch {
				case on && w.Code != 200:
					t.Errorf("GET %s: %d, want 200", path, w.Code)
				case !on:
					checkError(t, w, 404)
				}
			}
		})
	}
}

func TestPage(t *testing.T) {
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "<html>status page</html>")
	})
	s, _ := newTestServer(t, false, Options{Page: page})
	if w := do(s, "GET", "/", ""); w.Code != 200 || !strings.Contains(w.Body.String(), "status page") {
		t.Fatalf("GET /: %d %s", w.Code, w.Body)
	}
	checkError(t, do(s, "POST", "/", ""), 405)
	checkError(t, do(s, "GET", "/index.html", ""), 404)
}

func TestRequestLog(t *testing.T) {
	log, hook := testLogger()
	s, _ := newTestServer(t, false, Options{Logger: log})
	for _, tc := range []struct {
		method, path string
		level        logrus.Level
		status       int
	}{
		{"GET", "/healthz", logrus.DebugLevel, 200},
		{"GET", "/metrics", logrus.DebugLevel, 200},
		{"GET", "/api/v1/status", logrus.DebugLevel, 200},
		{"POST", "/api/v1/services/web/open", logrus.InfoLevel, 200},
		{"DELETE", "/api/v1/services/web/backends/be2", logrus.InfoLevel, 200},
		{"POST", "/api/v1/services/nope/open", logrus.InfoLevel, 404},
		{"GET", "/api/v1/status", logrus.WarnLevel, 403}, // from a foreign Host
	} {
		hook.Reset()
		hdr := []string{}
		if tc.status == 403 {
			hdr = []string{"Host", "evil.example"}
		}
		do(s, tc.method, tc.path, "", hdr...)
		entries := hook.AllEntries()
		if len(entries) != 1 {
			t.Errorf("%s %s: %d log lines, want 1", tc.method, tc.path, len(entries))
			continue
		}
		e := entries[0]
		if e.Level != tc.level || e.Data["method"] != tc.method || e.Data["path"] != tc.path || e.Data["status"] != tc.status ||
			e.Data["remote"] == nil || e.Data["duration"] == nil {
			t.Errorf("%s %s: logged %s %v, want level %s status %d", tc.method, tc.path, e.Level, e.Data, tc.level, tc.status)
		}
		if tc.status == 404 && e.Data["err"] == nil {
			t.Errorf("%s %s: the error is not logged: %v", tc.method, tc.path, e.Data)
		}
	}
}

// Serve listens on a real loopback socket, serves, and stops when its
// context ends.
func TestServe(t *testing.T) {
	s, _ := newTestServer(t, false, Options{Listen: "127.0.0.1:0"})
	if s.Addr() != "" {
		t.Fatalf("Addr before Serve: %q", s.Addr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	addr := waitAddr(t, s)
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, body)
	}

	// A second server on the same address fails with the reason.
	s2, _ := newTestServer(t, false, Options{Listen: addr})
	if err := s2.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Serve on a taken address: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(shutdownTimeout + 2*time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("still listening after Serve returned")
	}
}

// A request still running at shutdown gets to finish within the bound.
func TestServeGraceful(t *testing.T) {
	s, _ := newTestServer(t, false, Options{Listen: "127.0.0.1:0"})
	slow := &slowReload{fakeController: newFake(), entered: make(chan struct{}), release: make(chan struct{})}
	s.ctl = slow
	s.handler = s.routes(Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	addr := waitAddr(t, s)
	type result struct {
		code int
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/api/v1/reload", "application/json", nil)
		if err != nil {
			res <- result{err: err}
			return
		}
		resp.Body.Close()
		res <- result{code: resp.StatusCode}
	}()
	<-slow.entered
	cancel()
	time.Sleep(50 * time.Millisecond)
	close(slow.release)
	r := <-res
	if r.err != nil || r.code != 200 {
		t.Fatalf("in-flight request at shutdown: %d %v", r.code, r.err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type slowReload struct {
	*fakeController
	entered, release chan struct{}
}

func (s *slowReload) ReloadConfig(ctx context.Context) error {
	close(s.entered)
	<-s.release
	return nil
}

func waitAddr(t *testing.T, s *Server) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if a := s.Addr(); a != "" {
			return a
		}
	}
	t.Fatal("Serve did not listen")
	return ""
}

func TestObservePinNil(t *testing.T) {
	var s *Server
	s.ObservePin("web", time.Millisecond) // must not panic
}

func TestTokenFileModeWarning(t *testing.T) {
	if runtime.GOOS == "windows" {
		testenv.Skip(t, "no Unix modes")
	}
	for _, mode := range []os.FileMode{0o600, 0o644} {
		log, hook := testLogger()
		p := writeToken(t, testToken)
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Options{Controller: newFake(), Listen: "0.0.0.0:9900", TokenFile: p, Logger: log}); err != nil {
			t.Fatal(err)
		}
		warned := false
		for _, e := range hook.AllEntries() {
			warned = warned || e.Level == logrus.WarnLevel && strings.Contains(e.Message, "readable by other users")
		}
		if warned != (mode == 0o644) {
			t.Errorf("mode %v: warned %v", mode, warned)
		}
	}
}

// Serve with a context that already ended returns at once.
func TestServeCancelled(t *testing.T) {
	s, _ := newTestServer(t, false, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(shutdownTimeout + 2*time.Second):
		t.Fatal("Serve did not return")
	}
}
