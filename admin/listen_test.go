package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve runs s until the test ends and waits until addr reports an address.
func serve(t *testing.T, s *Server, addr func() string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for addr() == "" {
		if time.Now().After(deadline) {
			t.Fatal("Serve never bound its address")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return addr()
}

// TestUnixSocket: admin.listen unix:PATH serves the API on a socket of
// mode 0600 in a directory it creates, without a token and whatever the
// Host header says; a stale socket is replaced, and the client reaches
// the API through it.
func TestUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "admin.sock")
	os.MkdirAll(filepath.Dir(path), 0o750)
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close() // a socket file nobody serves on, as a killed daemon leaves it

	s, _ := newTestServer(t, false, Options{Listen: "unix:" + path})
	serve(t, s, s.Addr)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v %v, want a socket of mode 0600", path, fi.Mode(), err)
	}
	c := NewClient("unix:"+path, "")
	st, err := c.Status(context.Background())
	if err != nil || len(st.Services) != 2 {
		t.Fatalf("Status over the socket: %v, %+v", err, st)
	}
	if err := c.Pin(context.Background(), "web", "198.18.0.9", "be1"); err != nil {
		t.Errorf("a change over the socket, without a token: %v", err)
	}

	// A second server on the same, live socket is refused.
	s2, _ := newTestServer(t, false, Options{Listen: "unix:" + path})
	if err := s2.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "another process serves on it") {
		t.Errorf("second Serve on a live socket: %v", err)
	}
	if c := NewClient("unix:"+filepath.Join(t.TempDir(), "none.sock"), ""); c.BaseURL() == "" {
		t.Error("no address to show")
	} else if _, err := c.Status(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot reach the admin API at unix:") {
		t.Errorf("a missing socket: %v", err)
	}
}

// TestMetricsListener: metrics.listen serves /metrics, /healthz and
// /readyz without the token the API needs, and nothing else.
func TestMetricsListener(t *testing.T) {
	s, _ := newTestServer(t, true, Options{MetricsListen: "127.0.0.1:0"})
	maddr := serve(t, s, s.MetricsAddr)
	get := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+maddr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("GET", "/metrics"); code != 200 || !strings.Contains(body, "handoff_pins{") {
		t.Errorf("GET /metrics: %d %.200s", code, body)
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/api/v1/status": 404, "/": 404, "/debug/pprof/": 404} {
		if code, _ := get("GET", path); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
	if code, _ := get("POST", "/metrics"); code != 405 {
		t.Errorf("POST /metrics: %d, want 405", code)
	}
	if code, _ := get("POST", "/api/v1/reload"); code != 404 {
		t.Errorf("POST /api/v1/reload on the metrics listener: %d, want 404", code)
	}
	// The API's own listener still wants the token.
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("/metrics on the API listener without a token: %d, want 401", resp.StatusCode)
	}
}
