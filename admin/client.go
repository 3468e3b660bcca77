package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
)

// Client bounds. A request that is not a clients stream must be answered in
// full within requestTimeout (a migrating drain of a large set included); a
// clients stream must start within requestTimeout and then never stall for
// longer than streamIdle, however long it runs.
const (
	dialTimeout    = 5 * time.Second
	requestTimeout = 2 * time.Minute
	streamIdle     = 30 * time.Second
	maxErrorBody   = 64 << 10
)

// Client calls a handoff daemon's admin API (DESIGN.md §6). It is safe for
// concurrent use. Every method takes a context; on top of it, each call is
// bounded (see requestTimeout and streamIdle).
type Client struct {
	base    string // scheme://host:port, no trailing slash
	baseErr error  // a base URL that could not be parsed
	token   string
	shown   string // the address for messages, when not base (a unix socket)
	http    *http.Client
	timeout time.Duration // requestTimeout; tests shorten it
	idle    time.Duration // streamIdle; tests shorten it
}

// NewClient returns a client of the API at baseURL: a URL
// ("http://127.0.0.1:9900", "https://lb1:9900/") or a bare host:port, as in
// admin.listen. An unspecified host (":9900", "0.0.0.0:9900", "[::]:9900")
// means this machine's loopback. token, when not "", is sent as
// "Authorization: Bearer <token>". A baseURL that cannot be used makes every
// call fail with the reason.
//
// "unix:PATH" (as admin.listen writes a socket) reaches the API over that
// unix socket.
func NewClient(baseURL, token string) *Client {
	d := &net.Dialer{Timeout: dialTimeout}
	if path, ok := strings.CutPrefix(strings.TrimSpace(baseURL), unixPrefix); ok {
		c := &Client{base: "http://localhost", token: token, shown: strings.TrimSpace(baseURL)}
		if path == "" {
			c.baseErr = errors.New(`admin API address "unix:": no socket path`)
		}
		return c.init(func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "unix", path) })
	}
	base, err := normalizeBase(baseURL)
	c := &Client{base: base, baseErr: err, token: token}
	return c.init(d.DialContext)
}

// unixPrefix starts an address that names a unix socket (config.AdminUnixPrefix).
const unixPrefix = "unix:"

// init sets the client's bounds and HTTP client, which dials with dial.
func (c *Client) init(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	c.timeout, c.idle = requestTimeout, streamIdle
	c.http = &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           dial,
			TLSHandshakeTimeout:   dialTimeout,
			ResponseHeaderTimeout: requestTimeout,
			MaxIdleConns:          4,
			IdleConnTimeout:       time.Minute,
		},
		// The API never redirects a client that sends the bearer token;
		// following a redirect would send it elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if c.shown != "" {
		c.http.Transport.(*http.Transport).Proxy = nil // a socket goes through no proxy
	}
	return c
}

// BaseURL returns the API's address as the client uses it, for messages.
func (c *Client) BaseURL() string {
	if c.shown != "" {
		return c.shown
	}
	return c.base
}

// normalizeBase turns an admin address into scheme://host:port.
func normalizeBase(s string) (string, error) {
	raw := strings.TrimSpace(s)
	if raw == "" {
		return "", errors.New("no admin API address")
	}
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return s, fmt.Errorf("admin API address %q: want host:port or an http(s) URL", s)
	}
	host, port := u.Hostname(), u.Port()
	if a, err := netip.ParseAddr(host); host == "" || err == nil && a.IsUnspecified() {
		host = "127.0.0.1"
		if err == nil && a.Is6() && !a.Is4In6() {
			host = "::1"
		}
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return u.Scheme + "://" + host + strings.TrimSuffix(u.EscapedPath(), "/"), nil
}

// APIError is an answer of the API with a 4xx or 5xx status. Message is the
// API's own ({"error": "..."}), or the status text when the body had none.
type APIError struct {
	Status  int
	Message string
	moved   int // a failed migrating drain's clients moved before it failed
}

func (e *APIError) Error() string { return e.Message }

// Status returns the daemon's state: GET /api/v1/status.
func (c *Client) Status(ctx context.Context) (balancer.Status, error) {
	var st balancer.Status
	err := c.do(ctx, http.MethodGet, "/api/v1/status", nil, nil, &st)
	return st, err
}

// Cluster returns GET /api/v1/cluster: the cluster as the daemon sees it.
// A daemon with no cluster answers 404 (an *APIError).
func (c *Client) Cluster(ctx context.Context) (cluster.Status, error) {
	var st cluster.Status
	err := c.do(ctx, http.MethodGet, "/api/v1/cluster", nil, nil, &st)
	return st, err
}

// Clients calls fn for each pin of service (of backend, when not ""), at
// most limit of them when limit > 0, as the API streams them: the list is
// decoded one pin at a time and never held whole. An error from fn stops
// the stream and is returned as is. A stream that ends before the closing
// "]" (the daemon failed half-way) is an error.
func (c *Client) Clients(ctx context.Context, service, backend string, limit int, fn func(balancer.ClientPin) error) error {
	q := url.Values{}
	if backend != "" {
		q.Set("backend", backend)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := c.send(ctx, http.MethodGet, servicePath(service, "clients"), q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()

	// The stream may run for long; a read that waits c.idle ends it.
	stall := fmt.Errorf("no data for %v", c.idle)
	idle := time.AfterFunc(c.idle, func() { cancel(stall) })
	idle.Stop()
	dec := json.NewDecoder(&idleReader{r: resp.Body, t: idle, d: c.idle})
	fail := func(err error) error {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return fmt.Errorf("the client list from %s ended early: %w", c.BaseURL(), err)
	}
	if tok, err := dec.Token(); err != nil {
		return fail(err)
	} else if d, ok := tok.(json.Delim); !ok || d != '[' {
		return fmt.Errorf("the client list from %s: want a JSON array, found %v", c.BaseURL(), tok)
	}
	for dec.More() {
		var p balancer.ClientPin
		if err := dec.Decode(&p); err != nil {
			return fail(err)
		}
		if err := fn(p); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return fail(err)
	}
	return nil
}

// idleReader runs t, set to d, only while a read waits: a slow consumer
// (a pager the operator has paused) is not a stalled daemon.
type idleReader struct {
	r io.Reader
	t *time.Timer
	d time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	r.t.Reset(r.d)
	defer r.t.Stop()
	return r.r.Read(p)
}

// Pin pins client (an IP address) to backend in service, replacing any pin
// it has there.
func (c *Client) Pin(ctx context.Context, service, client, backend string) error {
	body := struct {
		Client  string `json:"client"`
		Backend string `json:"backend"`
	}{client, backend}
	return c.do(ctx, http.MethodPost, servicePath(service, "pins"), nil, body, nil)
}

// Unpin removes client's pin in service. A client without a pin is not an
// error.
func (c *Client) Unpin(ctx context.Context, service, client string) error {
	return c.do(ctx, http.MethodDelete, servicePath(service, "pins", client), nil, nil, nil)
}

// Drain starts, migrates or ends the drain of backend (see
// balancer.DrainOp) and returns how many clients moved. A migration that
// failed half-way returns the clients it did move with the error.
func (c *Client) Drain(ctx context.Context, service, backend string, op balancer.DrainOp) (moved int, err error) {
	q := url.Values{}
	switch op {
	case balancer.DrainStart:
	case balancer.DrainMigrate:
		q.Set("migrate", "1")
	case balancer.DrainUndo:
		q.Set("undo", "1")
	default:
		return 0, fmt.Errorf("drain: unknown operation %d", op)
	}
	var out struct {
		Moved int `json:"moved"`
	}
	err = c.do(ctx, http.MethodPost, servicePath(service, "backends", backend, "drain"), q, nil, &out)
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.moved, err
	}
	return out.Moved, err
}

// Register registers backend r in service, or renews it (a heartbeat when
// r.TTL > 0).
func (c *Client) Register(ctx context.Context, service string, r balancer.Registration) error {
	body := struct {
		Name    string `json:"name"`
		Address string `json:"address"`
		Weight  int    `json:"weight,omitempty"`
		Pool    string `json:"pool,omitempty"`
		TTL     string `json:"ttl,omitempty"`
	}{Name: r.Name, Address: r.Address.String(), Weight: r.Weight, Pool: r.Pool}
	if r.TTL > 0 {
		body.TTL = r.TTL.String()
	}
	return c.do(ctx, http.MethodPost, servicePath(service, "backends"), nil, body, nil)
}

// Deregister removes a backend registered through the API.
func (c *Client) Deregister(ctx context.Context, service, backend string) error {
	return c.do(ctx, http.MethodDelete, servicePath(service, "backends", backend), nil, nil, nil)
}

// Open starts service's listener.
func (c *Client) Open(ctx context.Context, service string) error {
	return c.do(ctx, http.MethodPost, servicePath(service, "open"), nil, nil, nil)
}

// Close stops service's listener; accepted connections and pins stay.
func (c *Client) Close(ctx context.Context, service string) error {
	return c.do(ctx, http.MethodPost, servicePath(service, "close"), nil, nil, nil)
}

// Reload makes the daemon re-read its config file. An invalid file is an
// *APIError listing every problem.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/api/v1/reload", nil, nil, nil)
}

// servicePath is /api/v1/services/{service}/{parts...}, each escaped.
func servicePath(service string, parts ...string) string {
	p := "/api/v1/services/" + url.PathEscape(service)
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// do sends one request, bounded by requestTimeout, and decodes a 2xx answer
// into out when out is not nil.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, fmt.Errorf("no answer within %v", c.timeout))
	defer cancel()
	resp, err := c.send(ctx, method, path, q, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return fmt.Errorf("reading the answer of %s %s: %w", method, c.base+path, err)
	}
	return nil
}

// send sends a request and returns a 2xx response, whose body the caller
// closes. Anything else becomes an error: *APIError for a 4xx or 5xx, one
// "cannot reach" line when no answer came.
func (c *Client) send(ctx context.Context, method, path string, q url.Values, in any) (*http.Response, error) {
	if c.baseErr != nil {
		return nil, c.baseErr
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.unreachable(ctx, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, apiError(resp)
}

// unreachable turns a transport error into "cannot reach the admin API at
// URL: <innermost cause>" ("connection refused", "no such host", "no
// answer within 2m0s"), keeping the cause for errors.Is. A context the
// caller cancelled is returned as is.
func (c *Client) unreachable(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil {
		if errors.Is(cause, context.Canceled) {
			return cause
		}
		err = cause
	}
	for {
		inner := errors.Unwrap(err)
		if inner == nil {
			break
		}
		err = inner
	}
	return fmt.Errorf("cannot reach the admin API at %s: %w", c.BaseURL(), err)
}

// apiError reads a 4xx or 5xx answer.
func apiError(resp *http.Response) *APIError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &APIError{Status: resp.StatusCode}
	var body struct {
		Error string `json:"error"`
		Moved int    `json:"moved"`
	}
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Message, e.moved = body.Error, body.Moved
		return e
	}
	// Not the API's JSON: a proxy in between, or not handoff at all.
	e.Message = fmt.Sprintf("%d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	if line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n"); line != "" && len(line) < 200 {
		e.Message += ": " + line
	}
	return e
}
