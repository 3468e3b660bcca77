package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// demoController is a demoReader that also records every change in calls.
type demoController struct {
	demoReader
	calls []string
	moved int // what Drain returns
}

func (d *demoController) record(err error, format string, args ...any) error {
	if err == nil {
		d.calls = append(d.calls, fmt.Sprintf(format, args...))
	}
	return err
}

func (d *demoController) PinClient(ctx context.Context, service string, client netip.Addr, backend string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.record(d.check(service), "pin %s %s %s", service, client, backend)
}

func (d *demoController) UnpinClient(ctx context.Context, service string, client netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.record(d.check(service), "unpin %s %s", service, client)
}

func (d *demoController) Register(ctx context.Context, service string, r balancer.Registration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.record(d.check(service), "register %s %s %s weight=%d pool=%s ttl=%v", service, r.Name, r.Address, r.Weight, r.Pool, r.TTL)
}

func (d *demoController) Deregister(ctx context.Context, service, backend string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.record(d.check(service), "deregister %s %s", service, backend)
}

func (d *demoController) Drain(ctx context.Context, service, backend string, op balancer.DrainOp) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.record(d.check(service), "drain %s %s op=%d", service, backend, op)
	return d.moved, err
}

func (d *demoController) SetOpen(ctx context.Context, service string, open bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.record(d.check(service), "open %s %v", service, open)
}

func (d *demoController) ReloadConfig(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.record(d.err, "reload")
}

func (d *demoController) changes() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

func demoPins() []balancer.ClientPin {
	return []balancer.ClientPin{
		{Client: "198.51.100.7", Backend: "web-eu-1", Key: "shop.example", ExpiresIn: 1799},
		{Client: "198.51.100.8", Backend: "web-eu-2", Key: "api.example", ExpiresIn: 12},
		{Client: "2001:db8::7", Backend: "web-eu-1", Key: "manual"},
	}
}

// TestAPIClient drives every method through the real admin server, with
// authentication, into a fake engine.
func TestAPIClient(t *testing.T) {
	ctl := &demoController{demoReader: demoReader{statuses: []balancer.Status{demoStatus()}, pins: demoPins()}, moved: 42}
	srv := serveAdmin(t, ctl, "s3cret")
	c := NewClient(srv.URL, "s3cret")
	ctx := t.Context()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(st); !slices.Equal(got, names(demoStatus())) || st.Mode != "kernel" || st.Services[0].Backends[2].Health != "down" {
		t.Errorf("status: %v %+v", got, st)
	}

	for _, tc := range []struct {
		backend string
		limit   int
		want    []string
	}{
		{"", 0, []string{"198.51.100.7", "198.51.100.8", "2001:db8::7"}},
		{"web-eu-1", 0, []string{"198.51.100.7", "2001:db8::7"}},
		{"", 2, []string{"198.51.100.7", "198.51.100.8"}},
	} {
		var got []string
		err := c.Clients(ctx, "web-frontend", tc.backend, tc.limit, func(p balancer.ClientPin) error {
			got = append(got, p.Client)
			return nil
		})
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("clients backend=%q limit=%d: %v, %v; want %v", tc.backend, tc.limit, got, err, tc.want)
		}
	}
	stop := errors.New("enough")
	n := 0
	if err := c.Clients(ctx, "web-frontend", "", 0, func(balancer.ClientPin) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("a callback error: %v after %d pins, want it back after 1", err, n)
	}

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	must("pin", c.Pin(ctx, "web-frontend", "198.51.100.9", "web-us-2"))
	must("unpin", c.Unpin(ctx, "web-frontend", "2001:db8::7"))
	for _, op := range []balancer.DrainOp{balancer.DrainStart, balancer.DrainMigrate, balancer.DrainUndo} {
		moved, err := c.Drain(ctx, "web-frontend", "web-eu-2", op)
		must("drain", err)
		if moved != 42 {
			t.Errorf("drain op %d: moved %d, want 42", op, moved)
		}
	}
	must("register", c.Register(ctx, "game-relay", balancer.Registration{
		Name: "relay-sgp", Address: netip.MustParseAddrPort("10.60.0.5:7777"), Weight: 3, Pool: "apac", TTL: 30 * time.Second}))
	must("deregister", c.Deregister(ctx, "game-relay", "relay-sgp"))
	must("close", c.Close(ctx, "game-relay"))
	must("open", c.Open(ctx, "game-relay"))
	must("reload", c.Reload(ctx))
	want := []string{
		"pin web-frontend 198.51.100.9 web-us-2",
		"unpin web-frontend 2001:db8::7",
		"drain web-frontend web-eu-2 op=0",
		"drain web-frontend web-eu-2 op=1",
		"drain web-frontend web-eu-2 op=2",
		"register game-relay relay-sgp 10.60.0.5:7777 weight=3 pool=apac ttl=30s",
		"deregister game-relay relay-sgp",
		"open game-relay false",
		"open game-relay true",
		"reload",
	}
	if got := ctl.changes(); !slices.Equal(got, want) {
		t.Errorf("the engine saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestAPIClientErrors: the API's refusals come back as *APIError with its
// status and message.
func TestAPIClientErrors(t *testing.T) {
	ctl := &demoController{demoReader: demoReader{statuses: []balancer.Status{demoStatus()}}}
	srv := serveAdmin(t, ctl, "s3cret")
	ctx := t.Context()
	for _, tc := range []struct {
		desc   string
		token  string
		call   func(*Client) error
		status int
		msg    string
	}{
		{"no token", "", func(c *Client) error { _, err := c.Status(ctx); return err }, 401, "missing bearer token"},
		{"wrong token", "guess", func(c *Client) error { _, err := c.Status(ctx); return err }, 401, "invalid bearer token"},
		{"unknown service", "s3cret", func(c *Client) error { return c.Pin(ctx, "nope", "198.51.100.9", "web-eu-1") }, 404, `service "nope": not found`},
		{"unknown service's clients", "s3cret", func(c *Client) error {
			return c.Clients(ctx, "nope", "", 0, func(balancer.ClientPin) error { return nil })
		}, 404, `service "nope": not found`},
		{"not an address", "s3cret", func(c *Client) error { return c.Unpin(ctx, "web-frontend", "pc-17") }, 400, `client "pc-17": not an IP address`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := tc.call(NewClient(srv.URL, tc.token))
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.msg) {
				t.Fatalf("got %#v (%v), want an APIError %d %q", err, err, tc.status, tc.msg)
			}
			if err.Error() != ae.Message {
				t.Errorf("Error() = %q, want the API's message %q", err.Error(), ae.Message)
			}
		})
	}
}

// TestAPIClientDrainPartial: a migration that failed half-way reports the
// clients it moved along with the error.
func TestAPIClientDrainPartial(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, `{"error": "ipset web-eu-3: add: out of memory", "moved": 17}`)
	}))
	defer srv.Close()
	moved, err := NewClient(srv.URL, "").Drain(t.Context(), "web", "web-eu-2", balancer.DrainMigrate)
	var ae *APIError
	if moved != 17 || !errors.As(err, &ae) || ae.Status != 500 || ae.Message != "ipset web-eu-3: add: out of memory" {
		t.Errorf("moved %d, err %v", moved, err)
	}
}

// TestAPIClientNotTheAPI: an answer that is not the API's JSON (a proxy in
// between) still gives one readable line.
func TestAPIClientNotTheAPI(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream connect error", http.StatusBadGateway)
	}))
	defer srv.Close()
	_, err := NewClient(srv.URL, "").Status(t.Context())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 502 || err.Error() != "502 Bad Gateway: upstream connect error" {
		t.Errorf("got %v", err)
	}
}

// TestAPIClientUnreachable: no daemon is one line naming the address and
// the cause.
func TestAPIClientUnreachable(t *testing.T) {
	addr := nstest.RefusedAddr(t).String()
	for _, base := range []string{addr, "http://" + addr, "http://" + addr + "/"} {
		_, err := NewClient(base, "").Status(t.Context())
		want := "cannot reach the admin API at http://" + addr + ": connection refused"
		if err == nil || err.Error() != want || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: got %v, want %q", base, err, want)
		}
	}
}

// TestAPIClientStream: pins reach the callback as they arrive, not once
// the list is complete; a list cut short and a stalled one are errors.
func TestAPIClientStream(t *testing.T) {
	got := make(chan string, 10)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `[{"client": "198.51.100.7", "backend": "a", "key": "k", "expires_in": 5},`)
		w.(http.Flusher).Flush()
		switch r.URL.Path {
		case "/api/v1/services/incremental/clients":
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
			fmt.Fprint(w, `{"client": "198.51.100.8", "backend": "a", "key": "k", "expires_in": 0}]`)
		case "/api/v1/services/whole/clients":
			fmt.Fprint(w, `{"client": "198.51.100.8", "backend": "a", "key": "k", "expires_in": 0}]`)
		case "/api/v1/services/cut/clients":
			panic(http.ErrAbortHandler)
		case "/api/v1/services/stall/clients":
			<-r.Context().Done()
		}
	}))
	defer srv.Close()

	c := NewClient(srv.URL, "")
	done := make(chan error, 1)
	go func() {
		done <- c.Clients(t.Context(), "incremental", "", 0, func(p balancer.ClientPin) error {
			got <- p.Client
			return nil
		})
	}()
	select {
	case first := <-got:
		if first != "198.51.100.7" {
			t.Errorf("first pin %s", first)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the first pin was not delivered before the list ended")
	}
	close(release)
	if err := <-done; err != nil || <-got != "198.51.100.8" {
		t.Errorf("incremental: %v", err)
	}

	c.idle = 200 * time.Millisecond
	n := 0
	err := c.Clients(t.Context(), "whole", "", 0, func(balancer.ClientPin) error {
		n++
		time.Sleep(3 * c.idle) // a paused pager
		return nil
	})
	if err != nil || n != 2 {
		t.Errorf("a slow consumer: %v after %d pins, want all 2", err, n)
	}
	for _, tc := range []struct{ svc, want string }{
		{"cut", "the client list from " + srv.URL + " ended early: unexpected EOF"},
		{"stall", "the client list from " + srv.URL + " ended early: no data for 200ms"},
	} {
		n := 0
		err := c.Clients(t.Context(), tc.svc, "", 0, func(balancer.ClientPin) error { n++; return nil })
		if err == nil || err.Error() != tc.want || n != 1 {
			t.Errorf("%s: %v after %d pins, want %q after 1", tc.svc, err, n, tc.want)
		}
	}
}

// TestAPIClientTimeout: a daemon that does not answer is given up on.
func TestAPIClientTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer srv.Close()
	c := NewClient(srv.URL, "")
	c.timeout = 200 * time.Millisecond
	err := c.Reload(t.Context())
	if want := "cannot reach the admin API at " + srv.URL + ": no answer within 200ms"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Reload(ctx); !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("a cancelled call: %v", err)
	}
}

func TestNormalizeBase(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "127.0.0.1:9900", want: "http://127.0.0.1:9900"},
		{in: "http://127.0.0.1:9900/", want: "http://127.0.0.1:9900"},
		{in: "https://lb1.example:9900", want: "https://lb1.example:9900"},
		{in: "https://lb1.example/handoff/", want: "https://lb1.example/handoff"},
		{in: "localhost:9900", want: "http://localhost:9900"},
		{in: ":9900", want: "http://127.0.0.1:9900"},
		{in: "0.0.0.0:9900", want: "http://127.0.0.1:9900"},
		{in: "[::]:9900", want: "http://[::1]:9900"},
		{in: "[2001:db8::1]:9900", want: "http://[2001:db8::1]:9900"},
		{in: "", err: "no admin API address"},
		{in: "ftp://x:1", err: `admin API address "ftp://x:1": want host:port or an http(s) URL`},
		{in: "http://", err: "want host:port or an http(s) URL"},
	} {
		got, err := normalizeBase(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
