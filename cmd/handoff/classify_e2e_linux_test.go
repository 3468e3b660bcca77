package main

// End-to-end tests of classification and routing (issue 4): the real binary
// in kernel and in userspace mode, one lab and one daemon per mode, real
// clients and backends in their own namespaces. Every client of a case has
// an address of its own, so cases share the daemon without sharing pins.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// clsService is one service of clsConfig.
type clsService struct {
	name  string
	port  uint16
	reset bool // first_connection: reset (else proxy)
}

// The services of clsConfig. Their backends are the lab's backend hosts
// be0, be1 and be2, each serving every port (TLS on 443).
var (
	clsPay  = clsService{name: "pay", port: 7000}               // payload, station-7 → be0, default be1; unclassified → default
	clsTLS  = clsService{name: "tls", port: 443, reset: true}   // sni: a.example → be0, *.b.example → be1, default be2
	clsWeb  = clsService{name: "web", port: 80}                 // http-host: a.example → be0, default be1
	clsHash = clsService{name: "hash", port: 8000, reset: true} // source, hash_range [0, 499] → be0, default be1
	clsRej  = clsService{name: "rej", port: 7001}               // payload, on_unclassified: reject, timeout clsRejTimeout
	clsAll  = []clsService{clsPay, clsTLS, clsWeb, clsHash, clsRej}
)

const (
	clsPayTimeout = time.Second     // payload.timeout of pay
	clsRejTimeout = 4 * time.Second // payload.timeout of rej
	clsSlack      = 3 * time.Second // how late past a timeout a release may be seen
)

// clsConfig is the daemon's config; %[1]s is the VIP, %[2]s to %[4]s the
// addresses of be0 to be2.
const clsConfig = `
mode: kernel
log: {level: debug}
admin: {listen: 127.0.0.1:9900}
state_dir: STATE_DIR
services:
  - name: pay
    listen: "%[1]s:7000"
    first_connection: proxy
    client_ttl: 10m
    classify: payload
    payload: {pattern: '^HELLO station=([\w-]+)\n', timeout: 1s}
    on_unclassified: default
    health: {check: none}
    routes:
      - match: {key: station-7}
        pool: vip
    pools:
      - name: vip
        backends: [{name: be0, address: "%[2]s:7000"}]
      - name: default
        backends: [{name: be1, address: "%[3]s:7000"}]

  - name: tls
    listen: "%[1]s:443"
    first_connection: reset
    client_ttl: 10m
    classify: sni
    health: {check: none}
    routes:
      - match: {key: a.example}
        pool: a
      - match: {key_regex: '\.b\.example$'}
        pool: b
    pools:
      - name: a
        backends: [{name: be0, address: "%[2]s:443"}]
      - name: b
        backends: [{name: be1, address: "%[3]s:443"}]
      - name: default
        backends: [{name: be2, address: "%[4]s:443"}]

  - name: web
    listen: "%[1]s:80"
    first_connection: proxy
    client_ttl: 10m
    classify: http-host
    health: {check: none}
    routes:
      - match: {key: a.example}
        pool: a
    pools:
      - name: a
        backends: [{name: be0, address: "%[2]s:80"}]
      - name: default
        backends: [{name: be1, address: "%[3]s:80"}]

  - name: hash
    listen: "%[1]s:8000"
    first_connection: reset
    client_ttl: 10m
    classify: source
    health: {check: none}
    routes:
      - match: {hash_range: [0, 499]}
        pool: a
    pools:
      - name: a
        backends: [{name: be0, address: "%[2]s:8000"}]
      - name: default
        backends: [{name: be1, address: "%[3]s:8000"}]

  - name: rej
    listen: "%[1]s:7001"
    first_connection: proxy
    client_ttl: 10m
    classify: payload
    payload: {pattern: '^HELLO station=([\w-]+)\n', timeout: 4s}
    on_unclassified: reject
    health: {check: none}
    pools:
      - name: default
        backends: [{name: be0, address: "%[2]s:7001"}]
`

// clsLab is one mode's lab: three backend hosts, a daemon serving clsAll.
type clsLab struct {
	tp     *nstest.Topology
	d      *daemon
	kernel bool
	roots  *x509.CertPool // trusts the TLS backends' certificate
}

// clsCase is one case run against a mode's lab, with its own clients.
type clsCase struct {
	name    string
	clients int
	run     func(t *testing.T, l *clsLab, cs []netip.Addr)
}

var clsCases = []clsCase{
	{"payload", 2, clsPayload},
	{"sni", 3, clsSNI},
	{"http-host", 2, clsHTTPHost},
	{"hash-range", 60, clsHashRange},
	{"unclassified-default", 2, clsUnclassifiedDefault},
	{"unclassified-reject", 2, clsUnclassifiedReject},
	{"silent-clients", 3, clsSilentClients},
}

// TestClassifyE2E runs every clsCase in kernel and in userspace mode.
func TestClassifyE2E(t *testing.T) {
	nstest.RequireRoot(t)
	for _, mode := range []string{"kernel", "userspace"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			n := 0
			for _, c := range clsCases {
				n += c.clients
			}
			l := clsNewLab(t, mode, n)
			next := 0
			for _, c := range clsCases {
				cs := make([]netip.Addr, c.clients)
				for i := range cs {
					cs[i] = nstest.ClientAddr4(next)
					next++
				}
				t.Run(c.name, func(t *testing.T) { c.run(t, l, cs) })
			}
		})
	}
}

func clsNewLab(t *testing.T, mode string, clients int) *clsLab {
	t.Helper()
	tp := nstest.NewTopology(t, 3)
	tp.AddClients(t, clients-1)
	cert := clsCert(t)
	for i, ns := range tp.Backends {
		name := fmt.Sprintf("be%d", i)
		for _, s := range clsAll {
			addr := netip.AddrPortFrom(nstest.Backend4(i), s.port)
			if s == clsTLS {
				clsTLSBackend(t, ns, name, addr, cert)
			} else {
				greeter(t, ns, name, addr)
			}
		}
	}
	cfg := fmt.Sprintf(clsConfig, nstest.LBClient4, nstest.Backend4(0), nstest.Backend4(1), nstest.Backend4(2))
	l := &clsLab{tp: tp, kernel: mode == "kernel", roots: x509.NewCertPool()}
	l.roots.AddCert(cert.Leaf)
	l.d = startDaemon(t, tp.LB, writeConfig(t, cfg), l.addr(clsAll[0]), "--mode", mode)
	for _, s := range clsAll[1:] {
		clsWaitListen(t, l, s)
	}
	return l
}

func clsWaitListen(t *testing.T, l *clsLab, s clsService) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := l.tp.LB.RunErr("ss", "-Hltn", "src", l.addr(s).String())
		if strings.Contains(out, "LISTEN") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("handoff never listened on %s:\n%s", l.addr(s), l.d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *clsLab) addr(s clsService) netip.AddrPort {
	return netip.AddrPortFrom(nstest.LBClient4, s.port)
}

// clsTalk is one connection of a client: it returns the name of the backend
// that answered and the client address that backend saw, or an error (a
// reset connection, or a backend that did not get what the client sent).
type clsTalk func(ctx context.Context, l *clsLab, src netip.Addr, vip netip.AddrPort) (backend, seen string, err error)

// clsSend sends data, half-closes and reads the greeter's answer: its
// greeting, then the bytes it received, which must be data exactly.
func clsSend(data string) clsTalk {
	return func(ctx context.Context, l *clsLab, src netip.Addr, vip netip.AddrPort) (string, string, error) {
		got, err := clsExchange(ctx, l.tp.Client, src, vip, data)
		if err != nil {
			return "", "", err
		}
		greeting, echo, ok := strings.Cut(got, "\n")
		if !ok {
			return "", "", fmt.Errorf("answer %q has no greeting line", got)
		}
		name, seen, _ := strings.Cut(greeting, " ")
		if echo != data {
			return name, seen, fmt.Errorf("backend %s received %q, the client sent %q", name, echo, data)
		}
		return name, seen, nil
	}
}

// clsExchange connects from src, sends data, half-closes and returns all
// the other side sent until it closed.
func clsExchange(ctx context.Context, ns *nstest.NS, src netip.Addr, vip netip.AddrPort, data string) (string, error) {
	c, err := ns.DialFrom(ctx, src, "tcp", vip.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := io.WriteString(c, data); err != nil {
		return "", err
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	return string(got), err
}

// clsHello makes a TLS handshake with server name sni, verifying the
// backend's certificate, and reads the TLS backend's line, whose server name
// must be sni.
func clsHello(sni string) clsTalk {
	return func(ctx context.Context, l *clsLab, src netip.Addr, vip netip.AddrPort) (string, string, error) {
		c, err := l.tp.Client.DialFrom(ctx, src, "tcp", vip.String())
		if err != nil {
			return "", "", err
		}
		defer c.Close()
		if d, ok := ctx.Deadline(); ok {
			c.SetDeadline(d)
		}
		tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: l.roots})
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return "", "", err
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return "", "", fmt.Errorf("TLS backend answered %q", line)
		}
		if f[2] != sni {
			return f[0], f[1], fmt.Errorf("TLS backend %s saw server name %q, want %q", f[0], f[2], sni)
		}
		return f[0], f[1], nil
	}
}

func clsCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// first is a new client's first contact with s; it returns the backend that
// served it. In kernel mode a reset service resets the first connection and
// the retry must reach the backend in-kernel (it sees the client's own
// address); otherwise the first connection is proxied (the backend sees the
// balancer).
func (l *clsLab) first(t *testing.T, s clsService, src netip.Addr, talk clsTalk) string {
	t.Helper()
	if l.kernel && s.reset {
		ctx, cancel := clsCtx()
		b, _, err := talk(ctx, l, src, l.addr(s))
		cancel()
		if err == nil {
			t.Fatalf("%s: client %s: first connection answered by %s, want a reset", s.name, src, b)
		}
		return l.again(t, s, src, talk)
	}
	ctx, cancel := clsCtx()
	defer cancel()
	b, seen, err := talk(ctx, l, src, l.addr(s))
	if err != nil {
		t.Fatalf("%s: client %s: first connection: %v", s.name, src, err)
	}
	if seen != nstest.LBBack4.String() {
		t.Errorf("%s: client %s: proxied first connection reached %s from %s, want the balancer's %s", s.name, src, b, seen, nstest.LBBack4)
	}
	return b
}

// again is a later connection of a pinned client: in kernel mode it must be
// forwarded in-kernel (the backend sees the client's address), in
// userspace mode proxied.
func (l *clsLab) again(t *testing.T, s clsService, src netip.Addr, talk clsTalk) string {
	t.Helper()
	ctx, cancel := clsCtx()
	defer cancel()
	b, seen, err := talk(ctx, l, src, l.addr(s))
	if err != nil {
		t.Fatalf("%s: client %s: %v", s.name, src, err)
	}
	want := nstest.LBBack4.String()
	if l.kernel {
		want = src.String()
	}
	if seen != want {
		t.Errorf("%s: client %s: %s saw the connection from %s, want %s", s.name, src, b, seen, want)
	}
	return b
}

// wantPin checks that the daemon classified client once, pinning it to
// backend with the given label (the pin's comment), and in kernel mode that
// the client is in that backend's set alone, with the label as its comment.
func (l *clsLab) wantPin(t *testing.T, s clsService, client netip.Addr, backend, label string) {
	t.Helper()
	want := []string{backend + " " + label}
	if got := l.waitPins(s, client); !slices.Equal(got, want) {
		t.Errorf("%s: client %s: the daemon pinned %q, want %q", s.name, client, got, want)
	}
	if !l.kernel {
		return
	}
	want = []string{fmt.Sprintf("ho-%s-%s %s", s.name, backend, label)}
	if got := clsEntries(t, l.tp.LB)[client.String()]; !slices.Equal(got, want) {
		t.Errorf("%s: client %s: ipset entries %q, want %q", s.name, client, got, want)
	}
}

// wantNoPin checks that the daemon never pinned client, and in kernel mode
// that no set holds it.
func (l *clsLab) wantNoPin(t *testing.T, s clsService, client netip.Addr) {
	t.Helper()
	if got := l.pins(s, client); len(got) != 0 {
		t.Errorf("%s: client %s: the daemon pinned %q, want no pin", s.name, client, got)
	}
	if l.kernel {
		if got := clsEntries(t, l.tp.LB)[client.String()]; len(got) != 0 {
			t.Errorf("%s: client %s: ipset entries %q, want none", s.name, client, got)
		}
	}
}

var clsField = regexp.MustCompile(`\b(backend|client|key|service)=("(?:[^"\\]|\\.)*"|\S+)`)

// waitPins is pins, waiting up to 3s for the first one: the daemon logs a
// pin before it answers the client, but the log reaches the test through a
// pipe.
func (l *clsLab) waitPins(s clsService, client netip.Addr) []string {
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := l.pins(s, client)
		if len(got) > 0 || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pins returns the daemon's "pinned" log lines for client in s, as
// "BACKEND LABEL".
func (l *clsLab) pins(s clsService, client netip.Addr) []string {
	var out []string
	for _, line := range strings.Split(l.d.log(), "\n") {
		if !strings.Contains(line, " msg=pinned ") {
			continue
		}
		f := map[string]string{}
		for _, m := range clsField.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			f[m[1]] = v
		}
		if f["service"] == s.name && f["client"] == client.String() {
			out = append(out, f["backend"]+" "+f["key"])
		}
	}
	return out
}

var clsEntry = regexp.MustCompile(`^(\S+) .*\bcomment "([^"]*)"`)

// clsEntries parses `ipset list` in ns into member -> ["SET COMMENT", ...].
func clsEntries(t *testing.T, ns *nstest.NS) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	var set string
	for _, line := range strings.Split(ns.Run(t, "ipset", "list"), "\n") {
		if name, ok := strings.CutPrefix(line, "Name: "); ok {
			set = name
			continue
		}
		if m := clsEntry.FindStringSubmatch(line); m != nil {
			out[m[1]] = append(out[m[1]], set+" "+m[2])
		}
	}
	return out
}

// clsPayload: a payload station ID routes to its pool, an unknown one to
// default; the backend receives the exact bytes the client sent (the first
// connection replays them); the client's later connections follow its first
// classification whatever they send.
func clsPayload(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsPay
	vip := clsSend("HELLO station=station-7\nand then\x00binary\xff bytes\r\n")
	other := clsSend("HELLO station=station-9\n")
	if b := l.first(t, s, cs[0], vip); b != "be0" {
		t.Errorf("station-7 went to %s, want be0 (pool vip)", b)
	}
	if b := l.first(t, s, cs[1], other); b != "be1" {
		t.Errorf("station-9 (no route) went to %s, want be1 (pool default)", b)
	}
	for range 2 {
		if b := l.again(t, s, cs[0], other); b != "be0" {
			t.Errorf("station-7's client sending station-9 went to %s, want be0 (its first classification)", b)
		}
	}
	l.wantPin(t, s, cs[0], "be0", "payload=station-7")
	l.wantPin(t, s, cs[1], "be1", "payload=station-9")
}

// clsSNI: TLS server names route by exact key and by regexp, an unknown name
// to default; in kernel mode the first connection is reset and the retry is
// in-kernel. A later handshake with another name follows the first one.
func clsSNI(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsTLS
	for i, c := range []struct{ sni, backend string }{
		{"a.example", "be0"},
		{"x.b.example", "be1"},
		{"c.example", "be2"},
	} {
		if b := l.first(t, s, cs[i], clsHello(c.sni)); b != c.backend {
			t.Errorf("SNI %s went to %s, want %s", c.sni, b, c.backend)
		}
		l.wantPin(t, s, cs[i], c.backend, "sni="+c.sni)
	}
	for _, sni := range []string{"x.b.example", "c.example"} {
		if b := l.again(t, s, cs[0], clsHello(sni)); b != "be0" {
			t.Errorf("a.example's client sending SNI %s went to %s, want be0 (its first classification)", sni, b)
		}
	}
	l.wantPin(t, s, cs[0], "be0", "sni=a.example")
}

// clsHTTPHost: the Host header routes (port stripped, case folded), an
// unknown host goes to default, and later requests follow the first.
func clsHTTPHost(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsWeb
	a := clsSend("GET /x HTTP/1.1\r\nHost: A.Example:8080\r\nUser-Agent: cls\r\n\r\n")
	other := clsSend("GET / HTTP/1.1\r\nHost: other.example\r\n\r\n")
	if b := l.first(t, s, cs[0], a); b != "be0" {
		t.Errorf("Host A.Example:8080 went to %s, want be0 (pool a)", b)
	}
	if b := l.first(t, s, cs[1], other); b != "be1" {
		t.Errorf("Host other.example went to %s, want be1 (pool default)", b)
	}
	if b := l.again(t, s, cs[0], other); b != "be0" {
		t.Errorf("a.example's client asking for other.example went to %s, want be0", b)
	}
	l.wantPin(t, s, cs[0], "be0", "host=a.example")
	l.wantPin(t, s, cs[1], "be1", "host=other.example")
}

// clsHashRange: hash_range [0, 499] splits the clients of a source service
// between pool a and default exactly as classifier.Bucket says, and both
// groups are used.
func clsHashRange(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsHash
	want := map[netip.Addr]string{}
	groups := map[string]int{}
	for _, c := range cs {
		want[c] = "be1"
		if classifier.Bucket(classifier.SourceKey(c)) <= 499 {
			want[c] = "be0"
		}
		groups[want[c]]++
	}
	if groups["be0"] == 0 || groups["be1"] == 0 {
		t.Fatalf("the test's clients all hash into one group: %v", groups)
	}
	got := map[string]int{}
	talk := clsSend("")
	for _, c := range cs {
		b := l.first(t, s, c, talk)
		got[b]++
		if b != want[c] {
			t.Errorf("client %s (bucket %d) went to %s, want %s", c, classifier.Bucket(classifier.SourceKey(c)), b, want[c])
		}
		if b2 := l.again(t, s, c, talk); b2 != b {
			t.Errorf("client %s: second connection went to %s, first to %s", c, b2, b)
		}
	}
	t.Logf("%d clients: %v", len(cs), got)
	entries := map[string][]string{}
	if l.kernel {
		entries = clsEntries(t, l.tp.LB)
	}
	for _, c := range cs {
		label := "src=" + c.String()
		if got := l.waitPins(s, c); !slices.Equal(got, []string{want[c] + " " + label}) {
			t.Errorf("client %s: pinned %q, want [%s %s]", c, got, want[c], label)
		}
		if w := []string{fmt.Sprintf("ho-hash-%s %s", want[c], label)}; l.kernel && !slices.Equal(entries[c.String()], w) {
			t.Errorf("client %s: ipset entries %q, want %q", c, entries[c.String()], w)
		}
	}
}

// clsUnclassifiedDefault: under on_unclassified: default, a client whose
// bytes do not match goes to the default pool with its bytes replayed, and
// a client that sends nothing goes there after payload.timeout.
func clsUnclassifiedDefault(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsPay
	garbage := clsSend("GARBAGE that is no hello\n")
	if b := l.first(t, s, cs[0], garbage); b != "be1" {
		t.Errorf("an unclassifiable client went to %s, want be1 (pool default)", b)
	}
	l.wantPin(t, s, cs[0], "be1", "src="+cs[0].String())

	ctx, cancel := clsCtx()
	defer cancel()
	start := time.Now()
	c, err := l.tp.Client.DialFrom(ctx, cs[1], "tcp", l.addr(s).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(start.Add(clsPayTimeout + clsSlack))
	line, err := bufio.NewReader(c).ReadString('\n')
	took := time.Since(start)
	if err != nil {
		t.Fatalf("a silent client was not served: %v", err)
	}
	if !strings.HasPrefix(line, "be1 ") || took < clsPayTimeout {
		t.Errorf("a silent client got %q after %v, want be1 after payload.timeout %v", line, took, clsPayTimeout)
	}
	l.wantPin(t, s, cs[1], "be1", "src="+cs[1].String())
}

// clsUnclassifiedReject: under on_unclassified: reject, a client whose bytes
// do not match is reset without data and not pinned, every time; a client
// that matches is served.
func clsUnclassifiedReject(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsRej
	for i := range 2 {
		ctx, cancel := clsCtx()
		got, err := clsExchange(ctx, l.tp.Client, cs[0], l.addr(s), "GARBAGE\n")
		cancel()
		if got != "" || err != nil && !clsClosed(err) {
			t.Errorf("rejected client, connection %d: got %q, %v; want a reset or EOF without data", i+1, got, err)
		}
	}
	l.wantNoPin(t, s, cs[0])
	if b := l.first(t, s, cs[1], clsSend("HELLO station=ok\n")); b != "be0" {
		t.Errorf("a classified client went to %s, want be0", b)
	}
	l.wantPin(t, s, cs[1], "be0", "payload=ok")
}

// clsClosed tells whether err is the peer closing or resetting.
func clsClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// clsSilentClients: a client that sends nothing is released (reset, not
// pinned) after payload.timeout; while 1,000 silent connections are open a
// normal client is classified and served at once, and afterwards the daemon
// closes every silent one within the timeout plus some slack.
func clsSilentClients(t *testing.T, l *clsLab, cs []netip.Addr) {
	s := clsRej
	const n = 1000
	type silent struct {
		c      net.Conn
		opened time.Time
	}
	conns := make([]silent, n+1)
	defer func() {
		for _, sc := range conns {
			if sc.c != nil {
				sc.c.Close()
			}
		}
	}()
	// One from its own address, n from another; dialled by a few workers,
	// each on its own thread in the client namespace.
	const workers = 4
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = l.tp.Client.Do(func() error {
				for i := w; i <= n; i += workers {
					src := cs[1]
					if i == 0 {
						src = cs[0]
					}
					d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}, Timeout: 5 * time.Second}
					// Taken before the SYN: the daemon's timeout cannot
					// start earlier.
					opened := time.Now()
					c, err := d.Dial("tcp", l.addr(s).String())
					if err != nil {
						return fmt.Errorf("silent connection %d: %w", i, err)
					}
					conns[i] = silent{c, opened}
				}
				return nil
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	earliest := conns[0].opened
	for _, sc := range conns {
		if sc.opened.Before(earliest) {
			earliest = sc.opened
		}
	}
	opening := time.Since(earliest)
	t.Logf("opened %d silent connections in %v", len(conns), opening.Round(time.Millisecond))

	start := time.Now()
	b := l.first(t, s, cs[2], clsSend("HELLO station=normal\n"))
	served := time.Now()
	t.Logf("a normal client was served in %v with %d silent connections open", served.Sub(start).Round(time.Millisecond), len(conns))
	if b != "be0" {
		t.Errorf("the normal client went to %s, want be0", b)
	}
	if first := earliest.Add(clsRejTimeout); !served.Before(first) {
		t.Fatalf("the normal client was served %v after the first silent connection's timeout (opening them took %v): it waited for them",
			served.Sub(first), opening)
	}
	l.wantPin(t, s, cs[2], "be0", "payload=normal")

	// Wait for every silent connection to be closed by the daemon.
	type result struct {
		took time.Duration
		data int
		err  error
	}
	results := make([]result, len(conns))
	for i, sc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc.c.SetReadDeadline(sc.opened.Add(clsRejTimeout + clsSlack))
			k, err := sc.c.Read(make([]byte, 16))
			results[i] = result{time.Since(sc.opened), k, err}
		}()
	}
	wg.Wait()
	var early, late, data, latest int
	var maxTook time.Duration
	for i, r := range results {
		switch {
		case r.data > 0:
			data++
		case errors.Is(r.err, os.ErrDeadlineExceeded) || !clsClosed(r.err):
			late++
			if late == 1 {
				t.Errorf("silent connection %d: not closed %v after it opened: %v", i, r.took, r.err)
			}
		case r.took < clsRejTimeout:
			early++
			if early == 1 {
				t.Errorf("silent connection %d: closed %v after it opened", i, r.took)
			}
		}
		if r.took > maxTook {
			maxTook, latest = r.took, i
		}
	}
	t.Logf("the last silent connection (%d) was closed %v after it opened", latest, maxTook.Round(time.Millisecond))
	if early+late+data > 0 {
		t.Errorf("of %d silent connections %d were closed before payload.timeout %v, %d not within %v more, %d got data",
			len(results), early, clsRejTimeout, late, clsSlack, data)
	}
	l.wantNoPin(t, s, cs[0])
	l.wantNoPin(t, s, cs[1])
}

// clsTLSBackend serves TLS in a backend namespace with clsCert: after the
// handshake it writes "NAME CLIENT-IP SERVER-NAME\n" and closes.
func clsTLSBackend(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort, cert tls.Certificate) {
	t.Helper()
	ln := tls.NewListener(ns.Listen(t, "tcp", addr.String()), &tls.Config{Certificates: []tls.Certificate{cert}})
	nstest.Serve(t, ln, func(c net.Conn) {
		tc := c.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		ra := tc.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		fmt.Fprintf(tc, "%s %s %s\n", name, ra, tc.ConnectionState().ServerName)
	})
}

var (
	clsCertOnce    sync.Once
	clsCertificate tls.Certificate
	clsCertErr     error
)

// clsCert returns a self-signed certificate for every name the SNI case
// uses; clients trust it as their only root.
func clsCert(t *testing.T) tls.Certificate {
	t.Helper()
	clsCertOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			clsCertErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "handoff test"},
			DNSNames:              []string{"a.example", "*.b.example", "c.example"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			clsCertErr = err
			return
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			clsCertErr = err
			return
		}
		clsCertificate = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	})
	if clsCertErr != nil {
		t.Fatal(clsCertErr)
	}
	return clsCertificate
}
