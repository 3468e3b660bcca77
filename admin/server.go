package admin

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
)

const (
	// maxBody bounds a request body; the largest, a registration, is under
	// 1 KiB.
	maxBody = 64 << 10
	// bodyTimeout bounds reading a request body.
	bodyTimeout = 10 * time.Second
	// shutdownTimeout bounds the graceful shutdown once Serve's context
	// ends; requests still running after it (a long clients stream, a CPU
	// profile) are cut.
	shutdownTimeout = 5 * time.Second
	// flushEvery is how many pins a clients stream writes between flushes.
	flushEvery = 1024
	// tokenCookie carries a browser's credential once it opened a page with
	// ?token=. Its value is a hash of the token, not the token.
	tokenCookie = "handoff_token"
)

// Options configure a Server. Controller and Listen are required.
type Options struct {
	Controller Controller
	// Listen is the host:port to serve on. A host that is not loopback
	// (127.0.0.0/8, ::1, "localhost"; "" means every interface) requires
	// TokenFile. "unix:" and an absolute path serves on a unix socket of
	// mode 0600 instead (its directory is created, mode 0750), which needs
	// no token. "" serves no API, only MetricsListen.
	Listen string
	// MetricsListen, when set, is a second host:port that serves only
	// GET /metrics, /healthz and /readyz, without authentication: for a
	// Prometheus that must not hold a token that can change state.
	MetricsListen string
	// TokenFile holds the bearer token, read once by New; surrounding
	// whitespace is ignored. "" turns authentication off, which only a
	// loopback Listen allows.
	TokenFile string
	// Pprof mounts net/http/pprof under /debug/pprof/, behind the same
	// authentication as the API.
	Pprof  bool
	Logger *logrus.Entry // nil: logrus.StandardLogger()
	// Version goes into handoff_build_info, and into the status when the
	// Controller reports none.
	Version string
	// Page, when set, serves GET / (the status page).
	Page http.Handler
	// Cluster, when set, serves GET /api/v1/cluster and the cluster's
	// metrics; without it that endpoint answers 404.
	Cluster ClusterReader
}

// Check validates Listen and TokenFile, reading the token file, without
// needing a Controller: run calls it before it touches the kernel. Its
// errors are one line and name the config field.
func (o Options) Check() error {
	_, err := o.check()
	return err
}

// check validates Listen and TokenFile and returns the SHA-256 of the token
// (zero when authentication is off).
func (o Options) check() (token [sha256.Size]byte, err error) {
	if o.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(o.MetricsListen); err != nil {
			return token, fmt.Errorf("metrics.listen %q: want host:port", o.MetricsListen)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return token, fmt.Errorf("metrics.listen %q: port %q: want a number from 0 to 65535", o.MetricsListen, port)
		}
	}
	if o.Listen == "" && o.MetricsListen != "" {
		return token, nil
	}
	if path, ok := strings.CutPrefix(o.Listen, config.AdminUnixPrefix); ok {
		if !filepath.IsAbs(path) {
			return token, fmt.Errorf("admin.listen %q: the socket path must be absolute", o.Listen)
		}
		if o.TokenFile == "" {
			return token, nil
		}
		return readToken(o.TokenFile)
	}
	host, port, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return token, fmt.Errorf("admin.listen %q: want host:port", o.Listen)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return token, fmt.Errorf("admin.listen %q: port %q: want a number from 0 to 65535", o.Listen, port)
	}
	if o.TokenFile == "" {
		if !isLoopback(host) {
			return token, fmt.Errorf("admin.listen %s is not loopback: set admin.token_file", o.Listen)
		}
		return token, nil
	}
	return readToken(o.TokenFile)
}

// readToken reads a token file and returns the SHA-256 of the token.
func readToken(path string) (token [sha256.Size]byte, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return token, fmt.Errorf("admin.token_file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	switch {
	case t == "":
		return token, fmt.Errorf("admin.token_file %s is empty", path)
	case strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return token, fmt.Errorf("admin.token_file %s: the token must be one word of printable characters", path)
	}
	return sha256.Sum256([]byte(t)), nil
}

// isLoopback reports whether host (of a host:port) names only loopback
// addresses. Names other than "localhost" are not resolved: they are not.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// Server is the admin HTTP server: the API, /metrics, /healthz, the status
// page and pprof. It is also an http.Handler, so tests can mount it on
// httptest. Create it with New, run it with Serve.
type Server struct {
	ctl     Controller
	listen  string
	mlisten string // MetricsListen
	unix    bool   // listen is a unix socket
	log     *logrus.Entry
	version string
	auth    bool
	token   [sha256.Size]byte // SHA-256 of the bearer token, when auth
	cookie  string            // the tokenCookie value, when auth
	handler http.Handler
	metrics *metrics
	cluster ClusterReader // nil: not in a cluster
	addr    atomic.Pointer[string]
	maddr   atomic.Pointer[string]
}

// New checks opts (see Options.Check) and builds the server; it does not
// listen yet.
func New(opts Options) (*Server, error) {
	if opts.Controller == nil {
		return nil, errors.New("admin: no Controller")
	}
	token, err := opts.check()
	if err != nil {
		return nil, err
	}
	s := &Server{
		ctl:     opts.Controller,
		listen:  opts.Listen,
		mlisten: opts.MetricsListen,
		unix:    strings.HasPrefix(opts.Listen, config.AdminUnixPrefix),
		log:     opts.Logger,
		version: opts.Version,
		auth:    opts.TokenFile != "",
		token:   token,
	}
	if s.log == nil {
		s.log = logrus.NewEntry(logrus.StandardLogger())
	}
	if s.auth {
		c := sha256.Sum256(append([]byte("handoff cookie\x00"), token[:]...))
		s.cookie = hex.EncodeToString(c[:])
		if fi, err := os.Stat(opts.TokenFile); err == nil && fi.Mode().Perm()&0o077 != 0 && runtime.GOOS != "windows" {
			s.log.WithField("token_file", opts.TokenFile).Warnf("admin.token_file is readable by other users (mode %v)", fi.Mode().Perm())
		}
	}
	s.cluster = opts.Cluster
	s.metrics = newMetrics(s.ctl, opts.Version, s.log)
	if opts.Cluster != nil {
		s.metrics.reg.MustRegister(newClusterCollector(opts.Cluster, s.log))
	}
	s.handler = s.routes(opts)
	return s, nil
}

// Addr returns the address Serve listens on (the chosen port for ":0"),
// or "" before Serve has bound it.
func (s *Server) Addr() string {
	if a := s.addr.Load(); a != nil {
		return *a
	}
	return ""
}

// MetricsAddr returns the address the metrics listener serves on, or ""
// before Serve has bound it (or without MetricsListen).
func (s *Server) MetricsAddr() string {
	if a := s.maddr.Load(); a != nil {
		return *a
	}
	return ""
}

// ObservePin records how long a new client of service took from accept to
// the data plane's acknowledgement of its pin, for
// handoff_classification_seconds. It is safe for concurrent use and cheap
// enough for every pin; on a nil Server it does nothing. Series of services
// that a reload removed stay until the process restarts.
func (s *Server) ObservePin(service string, took time.Duration) {
	if s == nil {
		return
	}
	s.metrics.observePin(service, took)
}

// Serve listens on Options.Listen (and MetricsListen) and serves until
// ctx ends, then shuts down gracefully: it stops accepting, lets running
// requests finish for up to shutdownTimeout, then closes what is left. It
// returns nil after a shutdown and the error otherwise (the address is
// taken, …). Call it once.
func (s *Server) Serve(ctx context.Context) error {
	type served struct {
		srv *http.Server
		log *logrus.Entry
	}
	var all []served
	exited := make(chan error, 2) // one per server, when its Serve returns
	waiting := 0                  // servers whose exit was not read yet
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		for _, sv := range all {
			if err := sv.srv.Shutdown(sctx); err != nil {
				sv.log.WithError(err).Warn("admin API: requests still running at shutdown were cut")
				_ = sv.srv.Close()
			}
		}
		for ; waiting > 0; waiting-- {
			<-exited
		}
		s.log.Debug("admin API stopped")
	}
	start := func(listen string, h http.Handler, addr *atomic.Pointer[string], what string) error {
		ln, err := s.bind(ctx, listen)
		if err != nil {
			return err
		}
		a := ln.Addr().String()
		if s.unix && listen == s.listen {
			a = listen
		}
		addr.Store(&a)
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			// No WriteTimeout: client lists and CPU profiles stream for long.
			ErrorLog: log.New(serverLog{s.log}, "", 0),
		}
		sv := served{srv, s.log.WithField("listen", a)}
		all = append(all, sv)
		waiting++
		go func() { exited <- srv.Serve(ln) }()
		if what == "admin API" {
			sv.log.WithField("auth", s.auth).Info("admin API listening")
		} else {
			sv.log.Info(what + " listening")
		}
		return nil
	}
	if s.listen != "" {
		if err := start(s.listen, s, &s.addr, "admin API"); err != nil {
			return s.startFailed(ctx, err, stop)
		}
	}
	if s.mlisten != "" {
		if err := start(s.mlisten, s.metricsOnly(), &s.maddr, "metrics"); err != nil {
			return s.startFailed(ctx, err, stop)
		}
	}
	select {
	case err := <-exited:
		waiting--
		stop()
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	stop()
	return nil
}

// startFailed stops what started and returns err, or nil when ctx ended
// first (stopped before it started).
func (s *Server) startFailed(ctx context.Context, err error, stop func()) error {
	stop()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("admin: %w", err)
}

// bind listens on a host:port, or on a unix socket for "unix:PATH": its
// directory is created (0750), a stale socket left by a process that died
// is replaced (a live one is an error), and the socket is mode 0600.
func (s *Server) bind(ctx context.Context, listen string) (net.Listener, error) {
	path, ok := strings.CutPrefix(listen, config.AdminUnixPrefix)
	if !ok {
		return new(net.ListenConfig).Listen(ctx, "tcp", listen)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process serves on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := new(net.ListenConfig).Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// metricsOnly is the handler of the metrics listener: GET and HEAD of
// /metrics, /healthz and /readyz, nothing else, without authentication or
// a Host check (it changes nothing and tells what /metrics tells).
func (s *Server) metricsOnly() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", s.metrics.ServeHTTP)
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		mux.Handle(p, methodNotAllowed([]string{"GET", "HEAD"}))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s on the metrics listener (it serves /metrics, /healthz and /readyz)", r.Method, r.URL.Path))
	})
	return s.logRequests(mux)
}

// ServeHTTP serves one request: logging, authentication and routing.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.handler.ServeHTTP(w, r)
}

// route is one endpoint: an HTTP method and a ServeMux path pattern.
type route struct {
	method, path string
	h            http.HandlerFunc
}

// endpoints is the admin API: every route the admin listener serves but
// the status page and pprof (docs/admin-api.md documents each one).
func (s *Server) endpoints() []route {
	return []route{
		{"GET", "/healthz", s.healthz},
		{"GET", "/readyz", s.readyz},
		{"GET", "/metrics", s.metrics.ServeHTTP},
		{"GET", "/api/v1/status", s.status},
		{"GET", "/api/v1/cluster", s.clusterStatus},
		{"GET", "/api/v1/services/{svc}/clients", s.clients},
		{"POST", "/api/v1/services/{svc}/pins", s.pin},
		{"DELETE", "/api/v1/services/{svc}/pins/{client}", s.unpin},
		{"POST", "/api/v1/services/{svc}/backends", s.register},
		{"DELETE", "/api/v1/services/{svc}/backends/{name}", s.deregister},
		{"POST", "/api/v1/services/{svc}/backends/{name}/drain", s.drain},
		{"POST", "/api/v1/services/{svc}/open", s.setOpen(true)},
		{"POST", "/api/v1/services/{svc}/close", s.setOpen(false)},
		{"POST", "/api/v1/reload", s.reload},
	}
}

// routes builds the handler chain: request log, cross-origin protection,
// host check, authentication, then the mux.
func (s *Server) routes(opts Options) http.Handler {
	rs := s.endpoints()
	if opts.Page != nil {
		rs = append(rs, route{"GET", "/{$}", opts.Page.ServeHTTP})
	}
	mux := http.NewServeMux()
	allow := map[string][]string{}
	var paths []string
	for _, rt := range rs {
		mux.HandleFunc(rt.method+" "+rt.path, rt.h)
		if allow[rt.path] == nil {
			paths = append(paths, rt.path)
		}
		allow[rt.path] = append(allow[rt.path], rt.method)
		if rt.method == "GET" {
			allow[rt.path] = append(allow[rt.path], "HEAD")
		}
	}
	// The same paths without a method catch the other methods: 405 in JSON
	// rather than ServeMux's text.
	for _, p := range paths {
		mux.Handle(p, methodNotAllowed(allow[p]))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s %s", r.Method, r.URL.Path))
	})
	if opts.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}

	var h http.Handler = mux
	h = s.authenticate(h)
	h = s.checkHost(h)
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, "cross-origin request refused")
	}))
	h = cop.Handler(h)
	return s.logRequests(h)
}

func methodNotAllowed(methods []string) http.Handler {
	allow := strings.Join(methods, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow))
	})
}

// authenticate requires the token on every path but the probes (/healthz,
// /readyz), when a token is set. Programs send "Authorization: Bearer
// <token>"; that is the only credential for changes. A browser opens any
// page once with ?token=<token>: the server answers with a cookie
// (HttpOnly, SameSite=Strict, holding a hash of the token) and a redirect
// to the same URL without the token; the cookie then authorizes GET and
// HEAD requests only, so a page from another site on this host cannot make
// changes with it.
func (s *Server) authenticate(next http.Handler) http.Handler {
	if !s.auth {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if probe(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		safe := r.Method == http.MethodGet || r.Method == http.MethodHead
		if h := r.Header.Get("Authorization"); h != "" {
			scheme, tok, _ := strings.Cut(h, " ")
			if !strings.EqualFold(scheme, "Bearer") || !s.validToken(strings.TrimSpace(tok)) {
				unauthorized(w, "invalid bearer token")
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if q := r.URL.Query(); safe && q.Has("token") {
			if !s.validToken(q.Get("token")) {
				unauthorized(w, "invalid token")
				return
			}
			http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: s.cookie, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			q.Del("token")
			u := *r.URL
			u.RawQuery = q.Encode()
			http.Redirect(w, r, u.RequestURI(), http.StatusSeeOther)
			return
		}
		if c, err := r.Cookie(tokenCookie); err == nil && safe {
			if subtle.ConstantTimeCompare([]byte(c.Value), []byte(s.cookie)) == 1 {
				next.ServeHTTP(w, r)
				return
			}
		}
		unauthorized(w, "missing bearer token (send Authorization: Bearer <token>)")
	})
}

func (s *Server) validToken(tok string) bool {
	sum := sha256.Sum256([]byte(tok))
	return subtle.ConstantTimeCompare(sum[:], s.token[:]) == 1
}

func unauthorized(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="handoff"`)
	writeError(w, http.StatusUnauthorized, msg)
}

// checkHost refuses, when there is no token, requests whose Host header is
// not a loopback name or address: a web page whose name an attacker
// re-pointed at 127.0.0.1 (DNS rebinding) must not reach an
// unauthenticated API. The probes (/healthz, /readyz) are exempt.
func (s *Server) checkHost(next http.Handler) http.Handler {
	if s.auth || s.unix {
		return next // a browser cannot reach a unix socket
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		// A request without Host (HTTP/1.0) does not come from a browser.
		if !probe(r.URL.Path) && host != "" && !isLoopback(host) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("host %q is not loopback: without admin.token_file only loopback names are served", r.Host))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// logRequests logs one line per request: reads (GET, HEAD) at debug level,
// changes at info, refusals (401, 403) at warning, and server errors at
// error level with the error.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		finished := false
		defer func() {
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			e := s.log.WithFields(logrus.Fields{
				"method":   r.Method,
				"path":     r.URL.Path,
				"status":   status,
				"duration": time.Since(start).Round(time.Microsecond),
				"remote":   r.RemoteAddr,
			})
			if rec.err != "" {
				e = e.WithField("err", rec.err)
			}
			level := logrus.InfoLevel
			switch {
			case !finished:
				e, level = e.WithField("aborted", true), logrus.WarnLevel
			case status >= 500:
				level = logrus.ErrorLevel
			case status == http.StatusUnauthorized || status == http.StatusForbidden:
				level = logrus.WarnLevel
			case r.Method == http.MethodGet || r.Method == http.MethodHead:
				level = logrus.DebugLevel
			}
			e.Log(level, "admin request")
		}()
		next.ServeHTTP(rec, r)
		finished = true
	})
}

// recorder remembers the status and error message of a response for the
// request log.
type recorder struct {
	http.ResponseWriter
	status int
	err    string
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// serverLog sends net/http's own messages to the logger: panics at error
// level, the rest (bad clients, TLS noise) at debug.
type serverLog struct{ e *logrus.Entry }

func (l serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if strings.Contains(msg, "panic") {
		l.e.Error(msg)
	} else {
		l.e.Debug(msg)
	}
	return len(p), nil
}

// writeJSON writes v with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encoding the response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// errorBody is every error response.
type errorBody struct {
	Error string `json:"error"`
	Moved int    `json:"moved,omitempty"` // a drain's clients moved before it failed
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeErrorBody(w, code, errorBody{Error: msg})
}

func writeErrorBody(w http.ResponseWriter, code int, body errorBody) {
	if rec, ok := w.(*recorder); ok {
		rec.err = body.Error
	}
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// statusOf maps a Controller error to an HTTP status.
func statusOf(err error) int {
	switch {
	case errors.Is(err, balancer.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, balancer.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, balancer.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

func writeControllerError(w http.ResponseWriter, err error) {
	writeError(w, statusOf(err), err.Error())
}

// okBody is the answer to a change that has nothing else to say.
var okBody = struct {
	OK bool `json:"ok"`
}{true}

// decodeBody reads the JSON object of a request into v: at most maxBody
// bytes, no unknown fields, nothing after it. It writes the 4xx and
// returns false when the body is not acceptable.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyTimeout))
	defer func() { _ = rc.SetReadDeadline(time.Time{}) }()
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		if _, err2 := dec.Token(); err2 != io.EOF {
			err = errors.New("data after the JSON object")
		}
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body: larger than %d bytes", maxBody))
		case errors.Is(err, io.EOF):
			writeError(w, http.StatusBadRequest, "request body: empty; want a JSON object")
		default:
			writeError(w, http.StatusBadRequest, "request body: "+err.Error())
		}
		return false
	}
	return true
}

// parseClient parses a client address as the API takes it: an IPv4 or
// IPv6 address without a zone; IPv4-mapped IPv6 becomes IPv4.
func parseClient(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("client %q: not an IP address", s)
	}
	return a.Unmap(), nil
}

// probe reports whether path is a liveness or readiness probe: they answer
// without a token and to any Host, so that an orchestrator can call them,
// and say nothing but the daemon's state.
func probe(path string) bool { return path == "/healthz" || path == "/readyz" }

// healthz answers 200 while the process serves HTTP at all (liveness).
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = io.WriteString(w, "ok\n")
}

// readyz answers 200 "serving" once every service's listener is open and
// the data plane synced, and 503 with the state ("starting", "stopping")
// before and after that (readiness).
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	st := s.ctl.State()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if st != balancer.StateServing {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = io.WriteString(w, string(st)+"\n")
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.ctl.Status(r.Context())
	if err != nil {
		writeControllerError(w, err)
		return
	}
	if st.Version == "" {
		st.Version = s.version
	}
	writeJSON(w, http.StatusOK, st)
}

// clusterStatus is GET /api/v1/cluster.
func (s *Server) clusterStatus(w http.ResponseWriter, r *http.Request) {
	if s.cluster == nil {
		writeError(w, http.StatusNotFound, "this host is not in a cluster (its config has no cluster: section)")
		return
	}
	st, err := s.cluster.Status(r.Context())
	if err != nil {
		writeControllerError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// clients streams the pins as one JSON array, written as the Controller
// yields them and flushed every flushEvery pins, so memory stays flat
// whatever the count. An error before the first pin is an ordinary error
// response. An error after it cannot change the status any more: the
// connection is then closed without ending the response (no closing "]",
// no final chunk), so a client sees a truncated body and an unexpected EOF
// rather than a shorter list that looks complete.
func (s *Server) clients(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: want a non-negative integer", v))
			return
		}
		limit = n
	}
	var (
		bw      *bufio.Writer
		buf     []byte
		flusher = http.NewResponseController(w)
		n       int
	)
	err := s.ctl.Clients(r.Context(), r.PathValue("svc"), q.Get("backend"), limit, func(p balancer.ClientPin) error {
		if n == 0 {
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			bw = bufio.NewWriterSize(w, 32<<10)
			_, _ = bw.WriteString("[\n")
		} else {
			_, _ = bw.WriteString(",\n")
		}
		n++
		buf = appendPin(buf[:0], p)
		_, _ = bw.Write(buf)
		if n%flushEvery == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
			return flusher.Flush()
		}
		return nil
	})
	switch {
	case err != nil && n == 0:
		writeControllerError(w, err)
	case err != nil:
		if rec, ok := w.(*recorder); ok {
			rec.err = fmt.Sprintf("clients stream cut after %d pins: %v", n, err)
		}
		panic(http.ErrAbortHandler)
	case n == 0:
		writeJSON(w, http.StatusOK, []balancer.ClientPin{})
	default:
		_, _ = bw.WriteString("\n]\n")
		_ = bw.Flush()
	}
}

// appendPin appends p as a JSON object with the fields and values that
// json.Marshal gives it (TestAppendPin and FuzzAppendPin keep the two in
// step), without reflection or allocation: a list of a million pins spends
// its time here.
func appendPin(b []byte, p balancer.ClientPin) []byte {
	b = append(b, `{"client":`...)
	b = appendString(b, p.Client)
	b = append(b, `,"backend":`...)
	b = appendString(b, p.Backend)
	b = append(b, `,"key":`...)
	b = appendString(b, p.Key)
	b = append(b, `,"expires_in":`...)
	e := p.ExpiresIn
	if math.IsNaN(e) || math.IsInf(e, 0) {
		e = 0
	}
	if a := math.Abs(e); a != 0 && (a < 1e-6 || a >= 1e21) {
		b = strconv.AppendFloat(b, e, 'e', -1, 64)
	} else {
		b = strconv.AppendFloat(b, e, 'f', -1, 64)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string: quotes, backslashes and control
// characters escaped, invalid UTF-8 replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	const digits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', digits[c>>4], digits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

type pinRequest struct {
	Client  string `json:"client"`
	Backend string `json:"backend"`
}

func (s *Server) pin(w http.ResponseWriter, r *http.Request) {
	var req pinRequest
	if !decodeBody(w, r, &req) {
		return
	}
	client, err := parseClient(req.Client)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Backend == "" {
		writeError(w, http.StatusBadRequest, "backend: required")
		return
	}
	if err := s.ctl.PinClient(r.Context(), r.PathValue("svc"), client, req.Backend); err != nil {
		writeControllerError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, okBody)
}

func (s *Server) unpin(w http.ResponseWriter, r *http.Request) {
	client, err := parseClient(r.PathValue("client"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.ctl.UnpinClient(r.Context(), r.PathValue("svc"), client); err != nil {
		writeControllerError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, okBody)
}

// registerRequest is the body of POST …/backends.
type registerRequest struct {
	Name    string   `json:"name"`
	Address string   `json:"address"`
	Weight  int      `json:"weight"`
	Pool    string   `json:"pool"`
	TTL     duration `json:"ttl"`
}

// duration is a JSON Go duration string ("30s") or a number of seconds.
type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case float64:
		return d.seconds(v, b)
	case string:
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return d.seconds(f, b)
		}
		t, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("ttl %q: want a duration such as \"30s\" or a number of seconds", v)
		}
		if t > config.MaxDuration {
			return fmt.Errorf("ttl %s: too long, at most %v", v, config.MaxDuration)
		}
		*d = duration(t)
		return nil
	}
	return fmt.Errorf("ttl %s: want a duration such as \"30s\" or a number of seconds", b)
}

// seconds sets d to f seconds. NaN, infinities and values past
// config.MaxDuration either way are refused here (converting them to an
// integer is not defined); other negative ones are left to the caller.
func (d *duration) seconds(f float64, raw []byte) error {
	ns := f * float64(time.Second)
	switch {
	case math.IsNaN(ns) || ns > float64(config.MaxDuration):
		return fmt.Errorf("ttl %s: want at most %v", raw, config.MaxDuration)
	case ns < -float64(config.MaxDuration):
		return fmt.Errorf("ttl %s: must not be negative", raw)
	}
	*d = duration(ns)
	return nil
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	var req registerRequest
	if !decodeBody(w, r, &req) {
		return
	}
	var msg string
	addr, err := netip.ParseAddrPort(req.Address)
	switch {
	case req.Name == "":
		msg = "name: required"
	case req.Address == "":
		msg = "address: required"
	case err != nil || addr.Addr().Zone() != "":
		msg = fmt.Sprintf("address %q: want IP:port", req.Address)
	case addr.Port() == 0:
		msg = fmt.Sprintf("address %q: port 0", req.Address)
	case req.Weight < 0:
		msg = fmt.Sprintf("weight %d: must not be negative", req.Weight)
	case req.TTL < 0:
		msg = fmt.Sprintf("ttl %v: must not be negative", time.Duration(req.TTL))
	}
	if msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	reg := balancer.Registration{
		Name:    req.Name,
		Address: netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()),
		Weight:  req.Weight,
		Pool:    req.Pool,
		TTL:     time.Duration(req.TTL),
	}
	if err := s.ctl.Register(r.Context(), r.PathValue("svc"), reg); err != nil {
		writeControllerError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, okBody)
}

func (s *Server) deregister(w http.ResponseWriter, r *http.Request) {
	if err := s.ctl.Deregister(r.Context(), r.PathValue("svc"), r.PathValue("name")); err != nil {
		writeControllerError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, okBody)
}

// queryFlag reads a boolean query parameter: absent is false, present without a
// value ("?migrate") is true.
func queryFlag(q map[string][]string, name string) (bool, error) {
	v, present := q[name]
	if !present {
		return false, nil
	}
	if len(v) == 0 || v[len(v)-1] == "" {
		return true, nil
	}
	b, err := strconv.ParseBool(v[len(v)-1])
	if err != nil {
		return false, fmt.Errorf("%s=%q: want 1 or 0", name, v[len(v)-1])
	}
	return b, nil
}

func (s *Server) drain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	migrate, err := queryFlag(q, "migrate")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	undo, err := queryFlag(q, "undo")
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	op := balancer.DrainStart
	switch {
	case migrate && undo:
		writeError(w, http.StatusBadRequest, "migrate and undo exclude each other")
		return
	case migrate:
		op = balancer.DrainMigrate
	case undo:
		op = balancer.DrainUndo
	}
	moved, err := s.ctl.Drain(r.Context(), r.PathValue("svc"), r.PathValue("name"), op)
	if err != nil {
		writeErrorBody(w, statusOf(err), errorBody{Error: err.Error(), Moved: moved})
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Moved int `json:"moved"`
	}{moved})
}

func (s *Server) setOpen(open bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.ctl.SetOpen(r.Context(), r.PathValue("svc"), open); err != nil {
			writeControllerError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, okBody)
	}
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if err := s.ctl.ReloadConfig(r.Context()); err != nil {
		writeControllerError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, okBody)
}
