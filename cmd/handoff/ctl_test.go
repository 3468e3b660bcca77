package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// ctlStatusJSON is what the fake API answers to GET /api/v1/status.
const ctlStatusJSON = `{
  "mode": "kernel", "state": "serving", "version": "v0.9.0", "started": "2025-01-01T00:00:00Z", "uptime_seconds": 274320,
  "reloads": {"ok": 4},
  "services": [
    {"name": "web-frontend", "listen": "203.0.113.10:443", "open": true, "classify": "sni", "max_clients": 65536,
     "pinned": 11425, "active": 859, "refused": 12, "classified": {},
     "first_connections": {"in-kernel": 0, "transparent": 9030, "proxied": 12, "reset": 1}, "migrations": 0, "migrated_clients": 0, "migration_seconds": 0,
     "backends": [
       {"name": "web-eu-1", "address": "10.20.0.11:8443", "pool": "default", "weight": 1, "health": "up", "draining": false,
        "registered": false, "pinned": 7320, "active": 541, "connections": 210433, "bytes_in": 1073741824, "bytes_out": 2147483648,
        "forwarded_packets": 10, "forwarded_bytes": 1073741824},
       {"name": "web-eu-2", "address": "10.20.0.12:8443", "pool": "default", "weight": 1, "health": "up", "draining": true,
        "registered": false, "pinned": 4105, "active": 318, "connections": 198224, "bytes_in": 1000, "bytes_out": 536,
        "forwarded_packets": 0, "forwarded_bytes": 0},
       {"name": "web-us-1", "address": "10.30.0.21:8443", "pool": "overflow", "weight": 1, "health": "down", "reason": "connection refused",
        "draining": false, "registered": true, "pinned": 0, "active": 0, "connections": 0, "bytes_in": 0, "bytes_out": 0,
        "forwarded_packets": 0, "forwarded_bytes": 0}
     ]},
    {"name": "game", "listen": "198.51.100.20:7777", "open": false, "classify": "payload", "max_clients": 0,
     "pinned": 3, "active": 0, "classified": {}, "migrations": 0, "migrated_clients": 0, "migration_seconds": 0,
     "backends": [
       {"name": "relay-ams", "address": "10.40.0.5:7777", "pool": "eu", "weight": 1, "health": "up", "draining": false,
        "registered": false, "pinned": 3, "active": 0, "connections": 12, "bytes_in": 0, "bytes_out": 0,
        "forwarded_packets": 0, "forwarded_bytes": 0}
     ]}
  ]
}`

// ctlStatusText is `handoff status` for ctlStatusJSON.
const ctlStatusText = `mode     kernel
state    serving
version  v0.9.0
uptime   3d 4h

SERVICE       LISTEN              OPEN  PINNED  ACTIVE  REFUSED
web-frontend  203.0.113.10:443    yes   11425   859     12
game          198.51.100.20:7777  no    3       0       0

FIRST CONNECTIONS  IN-KERNEL  TRANSPARENT  PROXIED  RESET
web-frontend       0          9030         12       1
game               0          0            0        0

SERVICE       BACKEND    ADDRESS          POOL      HEALTH  DRAINING  PINNED  ACTIVE  BYTES
web-frontend  web-eu-1   10.20.0.11:8443  default   up      no        7320    541     4.0 GiB
web-frontend  web-eu-2   10.20.0.12:8443  default   up      yes       4105    318     1.5 KiB
web-frontend  web-us-1   10.30.0.21:8443  overflow  down    no        0       0       0 B
game          relay-ams  10.40.0.5:7777   eu        up      no        3       0       0 B
`

// ctlAPI is a fake admin API: canned answers, and a log of the requests
// ("METHOD PATH?QUERY BODY") and of their Authorization headers.
type ctlAPI struct {
	mu       sync.Mutex
	requests []string
	auth     []string
}

func (a *ctlAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	line := r.Method + " " + r.URL.RequestURI()
	if len(body) > 0 {
		line += " " + string(body)
	}
	a.requests = append(a.requests, line)
	a.auth = append(a.auth, r.Header.Get("Authorization"))
	a.mu.Unlock()

	w.Header().Set("Content-Type", "application/json")
	reply := func(code int, s string) {
		w.WriteHeader(code)
		io.WriteString(w, s+"\n")
	}
	switch {
	case strings.HasPrefix(r.URL.Path, "/unauthorized/"):
		reply(401, `{"error": "missing bearer token (send Authorization: Bearer <token>)"}`)
	case strings.Contains(r.URL.Path, "/services/nope/"):
		reply(404, `{"error": "service \"nope\": not found"}`)
	case r.URL.Path == "/api/v1/status":
		reply(200, ctlStatusJSON)
	case strings.HasSuffix(r.URL.Path, "/clients"):
		if r.URL.Query().Get("backend") == "idle-1" {
			reply(200, `[]`)
			return
		}
		reply(200, `[
{"client": "198.51.100.7", "backend": "web-eu-1", "key": "shop.example", "expires_in": 1799.6},
{"client": "2001:db8:ffff:ffff::1234", "backend": "web-eu-2", "key": "", "expires_in": 12},
{"client": "198.51.100.9", "backend": "web-eu-1", "key": "manual", "expires_in": 0}
]`)
	case strings.HasSuffix(r.URL.Path, "/drain") && r.URL.Query().Has("migrate"):
		if strings.Contains(r.URL.Path, "/broken/") {
			reply(500, `{"error": "ipset ho-web-x: add: out of memory", "moved": 17}`)
			return
		}
		reply(200, `{"moved": 4105}`)
	case strings.HasSuffix(r.URL.Path, "/drain"):
		reply(200, `{"moved": 0}`)
	default:
		reply(200, `{"ok": true}`)
	}
}

func (a *ctlAPI) log() (requests, auth []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.requests...), append([]string(nil), a.auth...)
}

// runCtl runs the CLI in-process as main does and returns its stdout,
// stderr and exit code.
func runCtl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRoot()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		var ex exitError
		if asExit(err, &ex) {
			code = ex.code
			if ex.msg != "" {
				fmt.Fprintln(&errOut, ex.msg)
			}
		} else {
			code = 1
			fmt.Fprintln(&errOut, "handoff:", err)
		}
	}
	return out.String(), errOut.String(), code
}

// ctlSetup starts the fake API and writes a token file.
func ctlSetup(t *testing.T) (api *ctlAPI, url, tokenFile string) {
	t.Helper()
	t.Setenv("HANDOFF_CONFIG", "")
	api = &ctlAPI{}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	tokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return api, srv.URL, tokenFile
}

func TestCtlCommands(t *testing.T) {
	api, url, tokenFile := ctlSetup(t)
	host := strings.TrimPrefix(url, "http://")
	for _, tc := range []struct {
		desc    string
		args    []string
		out     string // exact stdout
		request string // the one request it makes
	}{
		{"status", []string{"status"}, ctlStatusText, "GET /api/v1/status"},
		{"clients", []string{"clients", "--service", "web-frontend"},
			"CLIENT                    BACKEND   KEY           EXPIRES\n" +
				"198.51.100.7              web-eu-1  shop.example  30m\n" +
				"2001:db8:ffff:ffff::1234  web-eu-2  -             12s\n" +
				"198.51.100.9              web-eu-1  manual        never\n",
			"GET /api/v1/services/web-frontend/clients"},
		{"clients of a backend, limited", []string{"clients", "--service", "web-frontend", "--backend", "idle-1", "--limit", "5"},
			"no clients are pinned to idle-1 of web-frontend\n",
			"GET /api/v1/services/web-frontend/clients?backend=idle-1&limit=5"},
		{"pin", []string{"pin", "--service", "web-frontend", "198.51.100.7", "web-us-1"},
			"pinned 198.51.100.7 to web-us-1 in web-frontend\n",
			`POST /api/v1/services/web-frontend/pins {"client":"198.51.100.7","backend":"web-us-1"}`},
		{"pin an IPv4-mapped address", []string{"pin", "--service", "web-frontend", "::ffff:198.51.100.7", "web-us-1"},
			"pinned 198.51.100.7 to web-us-1 in web-frontend\n",
			`POST /api/v1/services/web-frontend/pins {"client":"198.51.100.7","backend":"web-us-1"}`},
		{"unpin IPv6", []string{"unpin", "--service", "web-frontend", "2001:db8::7"},
			"unpinned 2001:db8::7 in web-frontend\n",
			"DELETE /api/v1/services/web-frontend/pins/2001:db8::7"},
		{"drain", []string{"drain", "--service", "web-frontend", "web-eu-2"},
			"draining web-eu-2 in web-frontend: no new clients; its pins stay until they expire\n",
			"POST /api/v1/services/web-frontend/backends/web-eu-2/drain"},
		{"drain --migrate", []string{"drain", "--service", "web-frontend", "web-eu-2", "--migrate"},
			"draining web-eu-2 in web-frontend: moved 4105 clients; no new clients\n",
			"POST /api/v1/services/web-frontend/backends/web-eu-2/drain?migrate=1"},
		{"drain --undo", []string{"drain", "--service", "web-frontend", "web-eu-2", "--undo"},
			"web-eu-2 in web-frontend takes new clients again\n",
			"POST /api/v1/services/web-frontend/backends/web-eu-2/drain?undo=1"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			before, _ := api.log()
			// --admin as a URL and as host:port.
			for _, admin := range []string{url, host} {
				out, errOut, code := runCtl(t, append(tc.args, "--admin", admin, "--token-file", tokenFile)...)
				if code != 0 || errOut != "" {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				if out != tc.out {
					t.Errorf("--admin %s: stdout\n%s\nwant\n%s", admin, out, tc.out)
				}
			}
			reqs, auth := api.log()
			if n := len(reqs) - len(before); n != 2 {
				t.Errorf("%d requests, want 1 a run", n)
			}
			for i, r := range reqs[len(before):] {
				if r != tc.request {
					t.Errorf("request %q, want %q", r, tc.request)
				}
				if a := auth[len(before)+i]; a != "Bearer s3cret" {
					t.Errorf("Authorization %q, want the token of --token-file", a)
				}
			}
		})
	}
}

// TestCtlJSON: --json prints what scripts can parse.
func TestCtlJSON(t *testing.T) {
	_, url, tokenFile := ctlSetup(t)
	flags := []string{"--json", "--admin", url, "--token-file", tokenFile}
	run := func(args ...string) string {
		t.Helper()
		out, errOut, code := runCtl(t, append(args, flags...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		return out
	}

	var st balancer.Status
	if err := json.Unmarshal([]byte(run("status")), &st); err != nil {
		t.Fatal(err)
	}
	var want balancer.Status
	json.Unmarshal([]byte(ctlStatusJSON), &want)
	if got, _ := json.Marshal(st); string(got) != func() string { b, _ := json.Marshal(want); return string(b) }() {
		t.Errorf("status --json:\n%s\nwant\n%s", got, ctlStatusJSON)
	}

	var pins []balancer.ClientPin
	if err := json.Unmarshal([]byte(run("clients", "--service", "web-frontend")), &pins); err != nil {
		t.Fatal(err)
	}
	if len(pins) != 3 || pins[1].Client != "2001:db8:ffff:ffff::1234" || pins[0].ExpiresIn != 1799.6 {
		t.Errorf("clients --json: %+v", pins)
	}
	if out := run("clients", "--service", "web-frontend", "--backend", "idle-1"); strings.TrimSpace(out) != "[]" {
		t.Errorf("no clients --json: %q, want []", out)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pin", "--service", "web", "198.51.100.7", "b1"}, `{"backend":"b1","client":"198.51.100.7","service":"web"}`},
		{[]string{"unpin", "--service", "web", "198.51.100.7"}, `{"client":"198.51.100.7","service":"web"}`},
		{[]string{"drain", "--service", "web", "b1", "--migrate"}, `{"service":"web","backend":"b1","op":"migrate","moved":4105}`},
		{[]string{"drain", "--service", "web", "b1"}, `{"service":"web","backend":"b1","op":"start","moved":0}`},
	} {
		var v any
		out := run(tc.args...)
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Errorf("%v: %v\n%s", tc.args, err, out)
			continue
		}
		if got, _ := json.Marshal(v); string(got) != canonicalJSON(tc.want) {
			t.Errorf("%v: %s, want %s", tc.args, got, tc.want)
		}
	}
}

func canonicalJSON(s string) string {
	var v any
	json.Unmarshal([]byte(s), &v)
	b, _ := json.Marshal(v)
	return string(b)
}

// TestCtlErrors: every failure is exit 1 and one line on stderr, nothing on
// stdout.
func TestCtlErrors(t *testing.T) {
	api, url, tokenFile := ctlSetup(t)
	dead := nstest.RefusedAddr(t).String()
	api1 := []string{"--admin", url, "--token-file", tokenFile}
	noToken := filepath.Join(t.TempDir(), "none")

	for _, tc := range []struct {
		desc string
		args []string
		want string
	}{
		{"the API refuses", append([]string{"pin", "--service", "nope", "198.51.100.7", "b1"}, api1...),
			`handoff: service "nope": not found`},
		{"the API refuses a clients list", append([]string{"clients", "--service", "nope"}, api1...),
			`handoff: service "nope": not found`},
		{"the API wants a token", []string{"status", "--admin", url + "/unauthorized", "--token-file", ""},
			"handoff: missing bearer token (send Authorization: Bearer <token>) (the token is read from --token-file, by default the config's admin.token_file)"},
		{"a migration fails half-way", append([]string{"drain", "--service", "broken", "b1", "--migrate"}, api1...),
			"handoff: ipset ho-web-x: add: out of memory (17 clients had moved)"},
		{"no daemon", []string{"status", "--admin", dead, "--token-file", ""},
			"handoff: cannot reach the admin API at http://" + dead + ": connection refused"},
		{"no daemon, --json", []string{"clients", "--service", "web", "--json", "--admin", "http://" + dead + "/", "--token-file", ""},
			"handoff: cannot reach the admin API at http://" + dead + ": connection refused"},
		{"not an IP", append([]string{"pin", "--service", "web", "10.0.0.300", "b1"}, api1...),
			`handoff: CLIENT_IP "10.0.0.300": not an IPv4 or IPv6 address`},
		{"an IP with a zone", append([]string{"unpin", "--service", "web", "fe80::1%eth0"}, api1...),
			`handoff: CLIENT_IP "fe80::1%eth0": not an IPv4 or IPv6 address`},
		{"--migrate and --undo", append([]string{"drain", "--service", "web", "b1", "--migrate", "--undo"}, api1...),
			"handoff: --migrate and --undo exclude each other"},
		{"no --service", append([]string{"unpin", "198.51.100.7"}, api1...),
			`handoff: required flag(s) "service" not set`},
		{"missing BACKEND", append([]string{"pin", "--service", "web", "198.51.100.7"}, api1...),
			"handoff: pin: want CLIENT_IP BACKEND, got 1 argument (see handoff pin --help)"},
		{"negative limit", append([]string{"clients", "--service", "web", "--limit", "-1"}, api1...),
			"handoff: --limit -1: want 0 (all) or more"},
		{"bad --admin", []string{"status", "--admin", "ftp://x:1", "--token-file", ""},
			`handoff: admin API address "ftp://x:1": want host:port or an http(s) URL`},
		{"unreadable token file", []string{"status", "--admin", url, "--token-file", noToken},
			"handoff: reading the admin token (--token-file): open " + noToken + ": no such file or directory"},
		{"-c names a missing file", []string{"status", "-c", "/nonexistent/handoff.yaml"},
			"handoff: finding the admin API in /nonexistent/handoff.yaml (or give --admin and --token-file): config: open /nonexistent/handoff.yaml: no such file or directory"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			before, _ := api.log()
			out, errOut, code := runCtl(t, tc.args...)
			if code != 1 {
				t.Errorf("exit %d, want 1", code)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if errOut != tc.want+"\n" {
				t.Errorf("stderr %q, want the one line %q", errOut, tc.want)
			}
			if after, _ := api.log(); strings.HasPrefix(tc.desc, "not an IP") && len(after) != len(before) {
				t.Error("an invalid CLIENT_IP reached the API")
			}
		})
	}
}

// TestCtlConfigDefaults: without --admin and --token-file, the config's
// admin.listen and admin.token_file are used, from -c or $HANDOFF_CONFIG.
func TestCtlConfigDefaults(t *testing.T) {
	api, url, tokenFile := ctlSetup(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "handoff.yaml")
	os.WriteFile(cfg, []byte(`mode: userspace
state_dir: `+filepath.Join(dir, "state")+`
admin: {listen: "`+strings.TrimPrefix(url, "http://")+`", token_file: `+tokenFile+`}
services:
  - name: web
    listen: 127.0.0.1:9
    health: {check: none}
    backends: [{name: be1, address: 127.0.0.1:10}]
`), 0o644)
	other := filepath.Join(dir, "other-token")
	os.WriteFile(other, []byte("  0ther \n"), 0o600)

	for _, tc := range []struct {
		desc string
		env  string
		args []string
		auth string
	}{
		{"-c", "", []string{"-c", cfg}, "Bearer s3cret"},
		{"$HANDOFF_CONFIG", cfg, nil, "Bearer s3cret"},
		{"--token-file wins", cfg, []string{"--token-file", other}, "Bearer 0ther"},
		{"--token-file empty: no token", cfg, []string{"--token-file="}, ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Setenv("HANDOFF_CONFIG", tc.env)
			before, _ := api.log()
			_, errOut, code := runCtl(t, append([]string{"status"}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			reqs, auth := api.log()
			if len(reqs) != len(before)+1 || auth[len(auth)-1] != tc.auth {
				t.Errorf("requests %v, Authorization %q; want one with %q", reqs[len(before):], auth[len(before):], tc.auth)
			}
		})
	}
}

// TestCtlBinary: the built binary exits 1 with one line when the daemon is
// not there.
func TestCtlBinary(t *testing.T) {
	dead := nstest.RefusedAddr(t).String()
	cmd := exec.Command(binary(t), "status", "--admin", dead, "--token-file", "")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("status: %v, want exit 1", err)
	}
	if want := "handoff: cannot reach the admin API at http://" + dead + ": connection refused\n"; stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("stdout %q, stderr %q; want stderr %q", stdout.String(), stderr.String(), want)
	}
}

// TestStreamTable: the first rows set the widths; a longer cell later
// widens its column from there on.
func TestStreamTable(t *testing.T) {
	var b strings.Builder
	tb := &streamTable{w: &b}
	tb.row("CLIENT", "BACKEND", "EXPIRES")
	for i := range streamTableHead {
		tb.row(fmt.Sprintf("10.0.%d.%d", i/256, i%256), "b1", "1m")
	}
	tb.row("2001:db8::1", "backend-with-a-long-name", "never")
	tb.row("10.9.9.9", "b2", "5s")
	if err := tb.flush(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := map[int]string{
		0:                   "CLIENT      BACKEND  EXPIRES",
		1:                   "10.0.0.0    b1       1m",
		streamTableHead:     "10.0.3.231  b1       1m",
		streamTableHead + 1: "2001:db8::1  backend-with-a-long-name  never",
		streamTableHead + 2: "10.9.9.9     b2                        5s",
	}
	if len(lines) != streamTableHead+3 {
		t.Fatalf("%d lines, want %d", len(lines), streamTableHead+3)
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d: %q, want %q", i, lines[i], w)
		}
	}
}

// TestCtlDefaultSocket: without --admin and a config naming the API, the
// CLI talks to the default unix socket when it exists, and to the default
// TCP address otherwise.
func TestCtlDefaultSocket(t *testing.T) {
	t.Setenv("HANDOFF_CONFIG", "")
	if _, err := os.Stat("/etc/handoff/handoff.yaml"); err == nil {
		t.Fatal("/etc/handoff/handoff.yaml exists: this test needs the CLI to find no config")
	}
	sock := filepath.Join(t.TempDir(), "admin.sock")
	old := defaultSocket
	defaultSocket = sock
	defer func() { defaultSocket = old }()
	if got := defaultAdmin(); got != config.DefaultAdminListen {
		t.Errorf("without the socket: %q", got)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	api := &ctlAPI{}
	srv := &http.Server{Handler: api}
	go srv.Serve(ln)
	defer srv.Close()
	out, errOut, code := runCtl(t, "status")
	if code != 0 || !strings.Contains(out, "web") {
		t.Fatalf("status over the default socket: exit %d\n%s%s", code, out, errOut)
	}
	if reqs, _ := api.log(); len(reqs) != 1 {
		t.Errorf("requests %v", reqs)
	}
}
