package e2e

// Scenarios of classification and routing (issue 4), in kernel and in
// userspace mode: one lab and one daemon per mode. Every client of a
// scenario has an address of its own, so scenarios share the daemon
// without sharing pins.

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// classifyService is one service of classifyConfig.
type classifyService struct {
	name   string
	port   uint16
	reset  bool // first_connection: reset (else proxy)
	source bool // classify: source: in kernel mode the first SYN is held, never met by the listener
}

// The services of classifyConfig. Their backends are the lab's backend
// hosts be0, be1 and be2, each serving every port (TLS on 443).
var (
	payService    = classifyService{name: "pay", port: 7000}                             // payload, station-7 → be0, default be1; unclassified → default
	sniService    = classifyService{name: "tls", port: 443, reset: true}                 // sni: a.example → be0, *.b.example → be1, default be2
	hostService   = classifyService{name: "web", port: 80}                               // http-host: a.example → be0, default be1
	hashService   = classifyService{name: "hash", port: 8000, reset: true, source: true} // source, hash_range [0, 499] → be0, default be1
	rejectService = classifyService{name: "rej", port: 7001}                             // payload, on_unclassified: reject, timeout rejectTimeout

	classifyServices = []classifyService{payService, sniService, hostService, hashService, rejectService}
)

const (
	payTimeout    = time.Second     // payload.timeout of pay
	rejectTimeout = 4 * time.Second // payload.timeout of rej
	closeSlack    = 3 * time.Second // how late past a timeout a release may be seen
)

// classifyConfig is the daemon's config: classifyServices, each routing to
// pools of one backend host each, be0 to be2.
func classifyConfig(mode string) daemonConfig {
	svc := func(s classifyService, fields ...string) service {
		first := "first_connection: proxy"
		if s.reset {
			first = "first_connection: reset"
		}
		return service{name: s.name, listen: ipv4.at(s.port), fields: append([]string{first, "client_ttl: 10m", "health: {check: none}"}, fields...)}
	}
	// pools renders pools of one backend each: the i-th is be<i>, on
	// backend host i.
	pools := func(port uint16, names ...string) string {
		ps := make([]string, len(names))
		for i, name := range names {
			ps[i] = fmt.Sprintf("{name: %s, backends: [{name: be%d, address: %q}]}", name, i, netip.AddrPortFrom(ipv4.backend(i), port))
		}
		return "pools: [" + strings.Join(ps, ", ") + "]"
	}
	station := `'^HELLO station=([\w-]+)\n'`
	return daemonConfig{mode: mode, services: []service{
		svc(payService, "classify: payload", fmt.Sprintf("payload: {pattern: %s, timeout: %s}", station, payTimeout), "on_unclassified: default",
			"routes: [{match: {key: station-7}, pool: vip}]", pools(payService.port, "vip", "default")),
		svc(sniService, "classify: sni",
			`routes: [{match: {key: a.example}, pool: a}, {match: {key_regex: '\.b\.example$'}, pool: b}]`, pools(sniService.port, "a", "b", "default")),
		svc(hostService, "classify: http-host",
			"routes: [{match: {key: a.example}, pool: a}]", pools(hostService.port, "a", "default")),
		svc(hashService, "classify: source",
			"routes: [{match: {hash_range: [0, 499]}, pool: a}]", pools(hashService.port, "a", "default")),
		svc(rejectService, "classify: payload", fmt.Sprintf("payload: {pattern: %s, timeout: %s}", station, rejectTimeout), "on_unclassified: reject",
			pools(rejectService.port, "default")),
	}}
}

// classifyLab is one mode's lab: three backend hosts and a daemon serving
// classifyServices.
type classifyLab struct {
	*lab
	d      *daemon
	kernel bool
	roots  *x509.CertPool // trusts the TLS backends' certificate
}

// classifyScenario is one scenario run against a mode's lab, with clients
// addresses of its own.
type classifyScenario struct {
	name    string
	clients int
	run     func(t *testing.T, l *classifyLab, cs []netip.Addr)
}

var classifyScenarios = []classifyScenario{
	// A payload station ID routes to its pool, an unknown one to default;
	// the backend receives the exact bytes the client sent (the first
	// connection replays them).
	{"payload", 2, routes(payService, []contact{
		{"station-7 (pool vip)", send("HELLO station=station-7\nand then\x00binary\xff bytes\r\n"), "be0", "payload=station-7"},
		{"station-9 (no route: pool default)", send("HELLO station=station-9\n"), "be1", "payload=station-9"},
	}, send("HELLO station=station-9\n"), send("HELLO station=station-9\n"))},
	// TLS server names route by exact key and by regexp, an unknown name to
	// default; in kernel mode the first connection is reset and the retry
	// is in-kernel.
	{"sni", 3, routes(sniService, []contact{
		{"SNI a.example (key: pool a)", hello("a.example"), "be0", "sni=a.example"},
		{"SNI x.b.example (key_regex: pool b)", hello("x.b.example"), "be1", "sni=x.b.example"},
		{"SNI c.example (no route: pool default)", hello("c.example"), "be2", "sni=c.example"},
	}, hello("x.b.example"), hello("c.example"))},
	// The Host header routes, port stripped and case folded; an unknown
	// host goes to default.
	{"http-host", 2, routes(hostService, []contact{
		{"Host A.Example:8080 (pool a)", send("GET /x HTTP/1.1\r\nHost: A.Example:8080\r\nUser-Agent: cls\r\n\r\n"), "be0", "host=a.example"},
		{"Host other.example (no route: pool default)", send("GET / HTTP/1.1\r\nHost: other.example\r\n\r\n"), "be1", "host=other.example"},
	}, send("GET / HTTP/1.1\r\nHost: other.example\r\n\r\n"))},
	{"hash-range", 60, hashRanges},
	{"unclassified-default", 2, unclassifiedDefault},
	{"unclassified-reject", 2, unclassifiedReject},
	{"silent-clients", 3, silentClients},
}

// TestClassify runs every classifyScenario in kernel and in userspace mode.
func TestClassify(t *testing.T) {
	nstest.RequireRoot(t)
	for _, mode := range []string{"kernel", "userspace"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			n := 0
			for _, sc := range classifyScenarios {
				n += sc.clients
			}
			l := newClassifyLab(t, mode, n)
			next := 0
			for _, sc := range classifyScenarios {
				cs := l.clients(ipv4)[next : next+sc.clients]
				next += sc.clients
				t.Run(sc.name, func(t *testing.T) { sc.run(t, l, cs) })
			}
		})
	}
}

func newClassifyLab(t *testing.T, mode string, clients int) *classifyLab {
	t.Helper()
	l := &classifyLab{lab: newLab(t, 3, clients), kernel: mode == "kernel", roots: x509.NewCertPool()}
	cert := testCert(t)
	l.roots.AddCert(cert.Leaf)
	for i, ns := range l.Backends {
		name := fmt.Sprintf("be%d", i)
		for _, s := range classifyServices {
			addr := netip.AddrPortFrom(ipv4.backend(i), s.port)
			if s == sniService {
				serveTLS(t, ns, name, addr, cert)
			} else {
				serveGreeter(t, ns, name, addr)
			}
		}
	}
	l.d = startDaemon(t, l.LB, writeConfig(t, classifyConfig(mode)), l.addr(classifyServices[0]), "--mode", mode)
	for _, s := range classifyServices[1:] {
		waitListen(t, l.LB, l.addr(s))
	}
	return l
}

func (l *classifyLab) addr(s classifyService) netip.AddrPort { return ipv4.at(s.port) }

// talk is one connection of a client: it returns the answer of the backend,
// or an error (a reset connection, or a backend that did not get what the
// client sent).
type talk func(ctx context.Context, l *classifyLab, src netip.Addr, vip netip.AddrPort) (answer, error)

// send sends data, half-closes and reads the greeter's answer: its
// greeting, then the bytes it received, which must be data exactly.
func send(data string) talk {
	return func(ctx context.Context, l *classifyLab, src netip.Addr, vip netip.AddrPort) (answer, error) {
		got, err := l.exchange(ctx, src, vip, data)
		if err != nil {
			return answer{}, err
		}
		greeting, echo, ok := strings.Cut(got, "\n")
		if !ok {
			return answer{}, fmt.Errorf("answer %q has no greeting line", got)
		}
		a := parseAnswer(greeting)
		if echo != data {
			return a, fmt.Errorf("backend %s received %q, the client sent %q", a.backend, echo, data)
		}
		return a, nil
	}
}

// hello makes a TLS handshake with server name sni, verifying the backend's
// certificate, and reads the TLS backend's line, whose server name must be
// sni.
func hello(sni string) talk {
	return func(ctx context.Context, l *classifyLab, src netip.Addr, vip netip.AddrPort) (answer, error) {
		c, err := l.Client.DialFrom(ctx, src, "tcp", vip.String())
		if err != nil {
			return answer{}, err
		}
		defer c.Close()
		if d, ok := ctx.Deadline(); ok {
			c.SetDeadline(d)
		}
		tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: l.roots})
		line, err := bufio.NewReader(tc).ReadString('\n')
		if err != nil {
			return answer{}, err
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return answer{}, fmt.Errorf("TLS backend answered %q", line)
		}
		if f[2] != sni {
			return answer{f[0], f[1]}, fmt.Errorf("TLS backend %s saw server name %q, want %q", f[0], f[2], sni)
		}
		return answer{f[0], f[1]}, nil
	}
}

func talkCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

// first is a new client's first contact with s; it returns the backend that
// served it. In kernel mode the first SYN of a source-classified service's
// client is held until it is pinned and goes in-kernel, a reset service
// resets the first connection and the retry must reach the backend
// in-kernel, and a proxied first connection comes from the client's own
// address (a transparent dial): every connection the backend sees comes
// from the client. In userspace mode the first connection is proxied from
// the balancer's address.
func (l *classifyLab) first(t *testing.T, s classifyService, src netip.Addr, talk talk) string {
	t.Helper()
	if l.kernel && s.source {
		return l.again(t, s, src, talk)
	}
	if l.kernel && s.reset {
		ctx, cancel := talkCtx()
		a, err := talk(ctx, l, src, l.addr(s))
		cancel()
		if err == nil {
			t.Fatalf("%s: client %s: first connection answered by %s, want a reset", s.name, src, a.backend)
		}
		return l.again(t, s, src, talk)
	}
	return l.connect(t, s, src, talk, "proxied first connection")
}

// again is a later connection of a pinned client: in kernel mode it must be
// forwarded in-kernel (the backend sees the client's address), in
// userspace mode proxied.
func (l *classifyLab) again(t *testing.T, s classifyService, src netip.Addr, talk talk) string {
	t.Helper()
	return l.connect(t, s, src, talk, "connection")
}

// connect makes one connection (what, for messages) from src to s that
// must be answered, from the client's address in kernel mode and from the
// balancer's in userspace mode; it returns the backend that answered.
func (l *classifyLab) connect(t *testing.T, s classifyService, src netip.Addr, talk talk, what string) string {
	t.Helper()
	ctx, cancel := talkCtx()
	defer cancel()
	a, err := talk(ctx, l, src, l.addr(s))
	if err != nil {
		t.Fatalf("%s: client %s: %s: %v", s.name, src, what, err)
	}
	want := ipv4.lbBack.String()
	if l.kernel {
		want = src.String()
	}
	if a.seen != want {
		t.Errorf("%s: client %s: %s reached %s, want it from %s", s.name, src, what, a, want)
	}
	return a.backend
}

// wantPin checks that the daemon classified client once, pinning it to
// backend with the given label (the pin's comment), and in kernel mode that
// the client is in that backend's set alone, with the label as its comment.
func (l *classifyLab) wantPin(t *testing.T, s classifyService, client netip.Addr, backend, label string) {
	t.Helper()
	want := []string{backend + " " + label}
	if got := l.waitPins(s, client); !slices.Equal(got, want) {
		t.Errorf("%s: client %s: the daemon pinned %q, want %q", s.name, client, got, want)
	}
	if !l.kernel {
		return
	}
	want = []string{ipv4.set(s.name, backend) + " " + label}
	if got := readSets(t, l.LB).pins(client); !slices.Equal(got, want) {
		t.Errorf("%s: client %s: ipset entries %q, want %q", s.name, client, got, want)
	}
}

// wantNoPin checks that the daemon never pinned client, and in kernel mode
// that no set holds it.
func (l *classifyLab) wantNoPin(t *testing.T, s classifyService, client netip.Addr) {
	t.Helper()
	if got := l.pins(s, client); len(got) != 0 {
		t.Errorf("%s: client %s: the daemon pinned %q, want no pin", s.name, client, got)
	}
	if l.kernel {
		if got := readSets(t, l.LB).pins(client); len(got) != 0 {
			t.Errorf("%s: client %s: ipset entries %q, want none", s.name, client, got)
		}
	}
}

// waitPins is pins, waiting up to 3s for the first one: the daemon logs a
// pin before it answers the client, but the log reaches the test through a
// pipe.
func (l *classifyLab) waitPins(s classifyService, client netip.Addr) []string {
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
func (l *classifyLab) pins(s classifyService, client netip.Addr) []string {
	var out []string
	for _, f := range l.d.lines("pinned", "service", s.name, "client", client.String()) {
		out = append(out, f["backend"]+" "+f["key"])
	}
	return out
}

// contact is a new client's first connection in a routes scenario.
type contact struct {
	route   string // which route it takes, for the messages
	talk    talk
	backend string // where it must land
	label   string // the key its pin must carry
}

// routes is a scenario of s: each client's first contact lands on its
// backend, and the first client's later connections, which send other
// bytes, follow its first classification. Each client is pinned once,
// with its key.
func routes(s classifyService, first []contact, later ...talk) func(*testing.T, *classifyLab, []netip.Addr) {
	return func(t *testing.T, l *classifyLab, cs []netip.Addr) {
		for i, c := range first {
			if b := l.first(t, s, cs[i], c.talk); b != c.backend {
				t.Errorf("%s went to %s, want %s", c.route, b, c.backend)
			}
		}
		for _, talk := range later {
			if b := l.again(t, s, cs[0], talk); b != first[0].backend {
				t.Errorf("the client of %s, sending something else, went to %s, want %s (its first classification)", first[0].route, b, first[0].backend)
			}
		}
		for i, c := range first {
			l.wantPin(t, s, cs[i], c.backend, c.label)
		}
	}
}

// hashRanges: hash_range [0, 499] splits the clients of a source service
// between pool a and default exactly as classifier.Bucket says, and both
// groups are used.
func hashRanges(t *testing.T, l *classifyLab, cs []netip.Addr) {
	s := hashService
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
	empty := send("")
	for _, c := range cs {
		b := l.first(t, s, c, empty)
		got[b]++
		if b != want[c] {
			t.Errorf("client %s (bucket %d) went to %s, want %s", c, classifier.Bucket(classifier.SourceKey(c)), b, want[c])
		}
		if b2 := l.again(t, s, c, empty); b2 != b {
			t.Errorf("client %s: second connection went to %s, first to %s", c, b2, b)
		}
	}
	t.Logf("%d clients: %v", len(cs), got)
	var sets ipsets
	if l.kernel {
		sets = readSets(t, l.LB)
	}
	for _, c := range cs {
		label := "src=" + c.String()
		if got := l.waitPins(s, c); !slices.Equal(got, []string{want[c] + " " + label}) {
			t.Errorf("client %s: pinned %q, want [%s %s]", c, got, want[c], label)
		}
		if w := []string{ipv4.set(s.name, want[c]) + " " + label}; l.kernel && !slices.Equal(sets.pins(c), w) {
			t.Errorf("client %s: ipset entries %q, want %q", c, sets.pins(c), w)
		}
	}
}

// unclassifiedDefault: under on_unclassified: default, a client whose bytes
// do not match goes to the default pool with its bytes replayed, and a
// client that sends nothing goes there after payload.timeout.
func unclassifiedDefault(t *testing.T, l *classifyLab, cs []netip.Addr) {
	s := payService
	if b := l.first(t, s, cs[0], send("GARBAGE that is no hello\n")); b != "be1" {
		t.Errorf("an unclassifiable client went to %s, want be1 (pool default)", b)
	}
	l.wantPin(t, s, cs[0], "be1", "src="+cs[0].String())

	start := time.Now()
	c := l.dial(t, cs[1], l.addr(s))
	defer c.Close()
	c.SetDeadline(start.Add(payTimeout + closeSlack))
	line, err := bufio.NewReader(c).ReadString('\n')
	took := time.Since(start)
	if err != nil {
		t.Fatalf("a silent client was not served: %v", err)
	}
	if !strings.HasPrefix(line, "be1 ") || took < payTimeout {
		t.Errorf("a silent client got %q after %v, want be1 after payload.timeout %v", line, took, payTimeout)
	}
	l.wantPin(t, s, cs[1], "be1", "src="+cs[1].String())
}

// unclassifiedReject: under on_unclassified: reject, a client whose bytes
// do not match is reset without data and not pinned, every time; a client
// that matches is served.
func unclassifiedReject(t *testing.T, l *classifyLab, cs []netip.Addr) {
	s := rejectService
	for i := range 2 {
		ctx, cancel := talkCtx()
		got, err := l.exchange(ctx, cs[0], l.addr(s), "GARBAGE\n")
		cancel()
		if got != "" || err != nil && !closedByPeer(err) {
			t.Errorf("rejected client, connection %d: got %q, %v; want a reset or EOF without data", i+1, got, err)
		}
	}
	l.wantNoPin(t, s, cs[0])
	if b := l.first(t, s, cs[1], send("HELLO station=ok\n")); b != "be0" {
		t.Errorf("a classified client went to %s, want be0", b)
	}
	l.wantPin(t, s, cs[1], "be0", "payload=ok")
}

// closedByPeer tells whether err is the peer closing or resetting.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// silentClients: a client that sends nothing is released (reset, not
// pinned) after payload.timeout; while 1,000 silent connections are open a
// normal client is classified and served at once, and afterwards the daemon
// closes every silent one within the timeout plus some slack.
func silentClients(t *testing.T, l *classifyLab, cs []netip.Addr) {
	s := rejectService
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
		wg.Go(func() {
			errs[w] = l.Client.Do(func() error {
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
		})
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
	b := l.first(t, s, cs[2], send("HELLO station=normal\n"))
	served := time.Now()
	t.Logf("a normal client was served in %v with %d silent connections open", served.Sub(start).Round(time.Millisecond), len(conns))
	if b != "be0" {
		t.Errorf("the normal client went to %s, want be0", b)
	}
	if first := earliest.Add(rejectTimeout); !served.Before(first) {
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
		wg.Go(func() {
			sc.c.SetReadDeadline(sc.opened.Add(rejectTimeout + closeSlack))
			k, err := sc.c.Read(make([]byte, 16))
			results[i] = result{time.Since(sc.opened), k, err}
		})
	}
	wg.Wait()
	var early, late, data, latest int
	var maxTook time.Duration
	for i, r := range results {
		switch {
		case r.data > 0:
			data++
		case errors.Is(r.err, os.ErrDeadlineExceeded) || !closedByPeer(r.err):
			late++
			if late == 1 {
				t.Errorf("silent connection %d: not closed %v after it opened: %v", i, r.took, r.err)
			}
		case r.took < rejectTimeout:
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
			len(results), early, rejectTimeout, late, closeSlack, data)
	}
	l.wantNoPin(t, s, cs[0])
	l.wantNoPin(t, s, cs[1])
}
