package e2e

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// family is an address family of the lab: the addresses a scenario uses in
// it and the prefix of the set names handoff makes for it.
type family struct {
	name    string                 // "ipv4" or "ipv6": the subtest's name
	vip     netip.Addr             // the balancer, towards the clients
	lbBack  netip.Addr             // the balancer, towards the backends: whom a backend sees on a proxied connection
	client  func(i int) netip.Addr // the i-th client address
	backend func(i int) netip.Addr // backend host i's address
	sets    string                 // "ho-" or "ho6-"
}

var (
	ipv4 = family{"ipv4", nstest.LBClient4, nstest.LBBack4, nstest.ClientAddr4, nstest.Backend4, "ho-"}
	ipv6 = family{"ipv6", nstest.LBClient6, nstest.LBBack6, nstest.ClientAddr6, nstest.Backend6, "ho6-"}

	// families are the address families a scenario that does not depend
	// on one runs in, one subtest each.
	families = []family{ipv4, ipv6}
)

// at returns the VIP with port.
func (f family) at(port uint16) netip.AddrPort { return netip.AddrPortFrom(f.vip, port) }

// set is the name of the set of a service's backend.
func (f family) set(service, backend string) string { return f.sets + service + "-" + backend }

// lab is a scenario's network (nstest.Topology): one client namespace
// holding clients addresses per family, the balancer namespace LB, where
// the daemon runs, and backend namespaces. All of it is deleted when the
// test ends.
type lab struct {
	*nstest.Topology
	n int // client addresses per family
}

// newLab builds a lab with backends backend hosts and clients client
// addresses per family. It skips the test without root (nstest.RequireRoot).
func newLab(t *testing.T, backends, clients int) *lab {
	t.Helper()
	nstest.RequireRoot(t)
	tp := nstest.NewTopology(t, backends)
	tp.AddClients(t, clients-1)
	return &lab{Topology: tp, n: clients}
}

// clients returns the lab's client addresses of family f.
func (l *lab) clients(f family) []netip.Addr {
	cs := make([]netip.Addr, l.n)
	for i := range cs {
		cs[i] = f.client(i)
	}
	return cs
}

// addClients adds n client addresses per family and returns those of f.
func (l *lab) addClients(t *testing.T, f family, n int) []netip.Addr {
	t.Helper()
	l.AddClients(t, n)
	l.n += n
	return l.clients(f)[l.n-n:]
}

// backend is one backend of a service: its name and address.
type backend struct {
	name string
	addr netip.AddrPort
}

// backends names the first len(names) backend hosts of family f, on port.
func backends(f family, port uint16, names ...string) []backend {
	bes := make([]backend, len(names))
	for i, n := range names {
		bes[i] = backend{n, netip.AddrPortFrom(f.backend(i), port)}
	}
	return bes
}

// greeters serves a greeter for each backend, the i-th on backend host i.
func (l *lab) greeters(t *testing.T, bes []backend) []*greeter {
	t.Helper()
	gs := make([]*greeter, len(bes))
	for i, be := range bes {
		gs[i] = serveGreeter(t, l.Backends[i], be.name, be.addr)
	}
	return gs
}

// daemonConfig is a daemon's config file.
type daemonConfig struct {
	mode     string // kernel, userspace or auto
	logLevel string // debug when empty
	admin    string // the admin block, such as {listen: "off"}; empty: the default, 127.0.0.1:9900 in the balancer namespace
	services []service
}

// service is one service of a daemonConfig.
type service struct {
	name     string
	listen   netip.AddrPort
	fields   []string  // more of the service's YAML, one "key: value" line each
	backends []backend // none when the fields hold pools
}

// String renders the config as YAML, with state_dir STATE_DIR, which
// writeConfig fills in.
func (c daemonConfig) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode: %s\nlog: {level: %s}\nstate_dir: STATE_DIR\n", c.mode, cmp.Or(c.logLevel, "debug"))
	if c.admin != "" {
		fmt.Fprintf(&b, "admin: %s\n", c.admin)
	}
	b.WriteString("services:\n")
	for _, s := range c.services {
		fmt.Fprintf(&b, "  - name: %s\n    listen: %q\n", s.name, s.listen)
		for _, f := range s.fields {
			fmt.Fprintf(&b, "    %s\n", f)
		}
		if len(s.backends) > 0 {
			b.WriteString("    backends:\n")
		}
		for _, be := range s.backends {
			fmt.Fprintf(&b, "      - {name: %s, address: %q}\n", be.name, be.addr)
		}
	}
	return b.String()
}

// webConfig is the config of a daemon with one service, web, listening on
// vip in mode, whose client_ttl is 10m: fields are further YAML lines of
// the service ("first_connection: reset"), and bes its backends.
func webConfig(mode string, vip netip.AddrPort, bes []backend, fields ...string) daemonConfig {
	return daemonConfig{mode: mode, services: []service{{"web", vip, append([]string{"client_ttl: 10m"}, fields...), bes}}}
}

// writeConfig writes cfg to handoff.yaml in a directory of its own and
// returns its path.
func writeConfig(t *testing.T, cfg fmt.Stringer) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "handoff.yaml")
	rewriteConfig(t, p, cfg)
	return p
}

// rewriteConfig writes cfg over the config file at path in place, as an
// editor that truncates would, with STATE_DIR replaced by a state
// directory beside it.
func rewriteConfig(t *testing.T, path string, cfg fmt.Stringer) {
	t.Helper()
	body := strings.ReplaceAll(cfg.String(), "STATE_DIR", filepath.Join(filepath.Dir(path), "state"))
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// yaml is a config file's text as it stands.
type yaml string

func (y yaml) String() string { return string(y) }

// answer is a greeter's first line: the backend that answered and the
// client address it saw.
type answer struct{ backend, seen string }

func (a answer) String() string { return a.backend + " seeing " + a.seen }

// parseAnswer reads "NAME CLIENT-IP".
func parseAnswer(line string) answer {
	name, seen, _ := strings.Cut(strings.TrimSpace(line), " ")
	return answer{name, seen}
}

// greet connects from src to vip and returns the greeter's answer; an error
// is a connection reset, refused or cut before the answer (a new client's
// first connection under first_connection: reset).
func (l *lab) greet(src netip.Addr, vip netip.AddrPort) (answer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := l.Client.DialFrom(ctx, src, "tcp", vip.String())
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return answer{}, err
	}
	return parseAnswer(line), nil
}

// greetTwice greets vip twice from each client and returns the answers in
// that order; a failed greeting fails the test at once. With transparent
// (kernel mode, where pinned and proxied connections alike keep the
// client's address) each answer must show the client's own address.
func (l *lab) greetTwice(t *testing.T, clients []netip.Addr, vip netip.AddrPort, transparent bool) []answer {
	t.Helper()
	var out []answer
	for _, c := range clients {
		for range 2 {
			a, err := l.greet(c, vip)
			if err != nil {
				t.Fatalf("client %s at %s: %v", c, vip, err)
			}
			if transparent && a.seen != c.String() {
				t.Errorf("client %s at %s seen as %s, want its own address", c, vip, a.seen)
			}
			out = append(out, a)
		}
	}
	return out
}

// dial connects from src to addr or fails the test.
func (l *lab) dial(t *testing.T, src netip.Addr, addr netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.Client.DialFrom(ctx, src, "tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return c
}

// exchange connects from src to vip, sends data, half-closes and returns
// everything the other side sent until it closed.
func (l *lab) exchange(ctx context.Context, src netip.Addr, vip netip.AddrPort, data string) (string, error) {
	c, err := l.Client.DialFrom(ctx, src, "tcp", vip.String())
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

// flow is a connection to a greeter held open across a scenario's events.
type flow struct {
	c     net.Conn
	r     *bufio.Reader
	first answer // its greeting
}

// hold opens a connection from src to vip that stays open until the test
// ends, and checks its greeting against want (an empty field matches any).
func (l *lab) hold(t *testing.T, src netip.Addr, vip netip.AddrPort, want answer) *flow {
	t.Helper()
	c := l.dial(t, src, vip)
	t.Cleanup(func() { c.Close() })
	f := &flow{c: c, r: bufio.NewReader(c)}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := f.r.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	f.first = parseAnswer(line)
	if err != nil || want.backend != "" && f.first.backend != want.backend || want.seen != "" && f.first.seen != want.seen {
		t.Fatalf("client %s: long-lived connection got %q, %v; want %s", src, line, err, want)
	}
	return f
}

// forwardPayload is what a flow's transfer moves each way.
const forwardPayload = 256 << 10

// transfer sends n bytes on the flow and reads them back from the greeter's
// echo.
func (f *flow) transfer(t *testing.T, n int) {
	t.Helper()
	f.c.SetDeadline(time.Now().Add(5 * time.Second))
	defer f.c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() {
		_, err := f.c.Write(bytes.Repeat([]byte("x"), n))
		werr <- err
	}()
	got, err := io.CopyN(io.Discard, f.r, int64(n))
	if err != nil {
		t.Fatalf("transfer: %d of %d bytes back: %v", got, n, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("transfer: write: %v", err)
	}
}

// echo checks that the flow still carries bytes: a line sent comes back.
func (f *flow) echo(t *testing.T, when string) {
	t.Helper()
	f.c.SetDeadline(time.Now().Add(3 * time.Second))
	defer f.c.SetDeadline(time.Time{})
	msg := "still here " + when + "\n"
	if _, err := io.WriteString(f.c, msg); err != nil {
		t.Fatalf("live flow %s: write: %v", when, err)
	}
	if got, err := f.r.ReadString('\n'); err != nil || got != msg {
		t.Fatalf("live flow %s: echoed %q, %v", when, got, err)
	}
}
