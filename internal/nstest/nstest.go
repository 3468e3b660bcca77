// Package nstest gives root tests their own network namespaces: a fresh
// named namespace per call, veth links between namespaces, and the standard
// handoff lab (client, balancer, backends) addressed from 198.18.0.0/15 and
// 2001:2::/48. Serve and AcceptClose run test servers on any listener.
//
// Every namespace is deleted by t.Cleanup, so a test never leaves one behind
// and never touches the host's own namespace. Namespaces need root on Linux;
// call RequireRoot first.
package nstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/handoff-lb/handoff/internal/netnsutil"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "hok-"

// maxNameLen is the longest name `ip netns` and interface names allow.
const maxNameLen = 15

// RequireRoot skips t unless the test runs as root on Linux with the ip
// command; under CI=true it fails instead (testenv.Skip).
func RequireRoot(t testing.TB) {
	t.Helper()
	switch {
	case runtime.GOOS != "linux":
		testenv.Skip(t, "network namespaces need Linux")
	case os.Geteuid() != 0:
		testenv.Skip(t, "needs root for network namespaces; run as root")
	default:
		if _, err := exec.LookPath("ip"); err != nil {
			testenv.Skip(t, "needs the ip command (iproute2)")
		}
	}
}

// NS is a named network namespace owned by one test. It is deleted when the
// test ends; sockets opened in it stay in it.
type NS struct {
	// Name is the namespace's name for `ip netns` (hok-…, at most 15 bytes).
	Name string
	// Path is the namespace's bind mount, /run/netns/Name, suitable for
	// anything that takes a netns path.
	Path string

	h netns.NsHandle

	mu     sync.Mutex
	ifaces int // veth interfaces created in this namespace so far
}

// New creates a namespace named hok-<prefix><random hex>, brings its
// loopback up and registers its deletion with t.Cleanup. prefix may be empty
// and is at most 7 bytes.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	prefix = strings.TrimPrefix(prefix, Prefix)
	if len(Prefix)+len(prefix) > maxNameLen-4 {
		t.Fatalf("nstest: prefix %q too long (at most %d bytes)", prefix, maxNameLen-4-len(Prefix))
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("nstest: random name: %v", err)
	}
	name := Prefix + prefix
	name += hex.EncodeToString(b[:])[:maxNameLen-len(name)]

	if out, err := runCmd("ip", "netns", "add", name); err != nil {
		t.Fatalf("nstest: ip netns add %s: %v\n%s", name, err, out)
	}
	n := &NS{Name: name, Path: "/run/netns/" + name, h: -1}
	t.Cleanup(func() {
		if n.h.IsOpen() {
			n.h.Close()
		}
		if out, err := runCmd("ip", "netns", "delete", name); err != nil {
			t.Errorf("nstest: ip netns delete %s: %v\n%s", name, err, out)
		}
	})
	h, err := netns.GetFromPath(n.Path)
	if err != nil {
		t.Fatalf("nstest: open %s: %v", n.Path, err)
	}
	n.h = h
	n.Run(t, "ip", "link", "set", "lo", "up")
	// No duplicate address detection on the interfaces to come: a
	// tentative link-local address delays the first IPv6 packets by a
	// second. (Without IPv6 this fails, harmlessly.)
	_, _ = n.RunErr("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return n
}

// Handle returns the namespace's handle. It stays owned by n and is closed
// when the test ends; do not close it.
func (n *NS) Handle() netns.NsHandle { return n.h }

// String returns the namespace's name.
func (n *NS) String() string { return n.Name }

// Do runs fn on a locked OS thread switched into the namespace and returns
// fn's error. The thread returns to its original namespace afterwards; if
// that fails, the thread is retired rather than reused. fn runs on its own
// goroutine, so it must not call t.FailNow (t.Fatal); return an error.
func (n *NS) Do(fn func() error) error {
	return netnsutil.Do(n.h, fn)
}

// Listen opens a listener inside the namespace, closed when the test ends.
func (n *NS) Listen(t testing.TB, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := n.Do(func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("nstest: listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Dial connects from inside the namespace.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.DialFrom(ctx, netip.Addr{}, network, addr)
}

// DialFrom connects from inside the namespace with local source address src
// (any address when src is the zero Addr). Use it with the addresses of
// Topology.AddClients to act as many clients.
func (n *NS) DialFrom(ctx context.Context, src netip.Addr, network, addr string) (net.Conn, error) {
	return n.DialFromPort(ctx, netip.AddrPortFrom(src, 0), network, addr)
}

// DialFromPort is DialFrom from a given source port too (any when 0).
func (n *NS) DialFromPort(ctx context.Context, src netip.AddrPort, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if src.Addr().IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(src)
	}
	var c net.Conn
	err := n.Do(func() (err error) {
		// The socket is created here, inside the namespace; connecting can
		// finish on any thread.
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Run executes a command inside the namespace (ip netns exec) and returns
// its combined output. It fails the test, quoting the output, when the
// command fails.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.RunErr(args...)
	if err != nil {
		t.Fatalf("nstest: in %s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return out
}

// RunErr is Run that returns the error instead of failing the test.
func (n *NS) RunErr(args ...string) (string, error) {
	return runCmd("ip", append([]string{"netns", "exec", n.Name}, args...)...)
}

// EnableForwarding turns on IPv4 and IPv6 forwarding inside the namespace.
func (n *NS) EnableForwarding(t testing.TB) {
	t.Helper()
	n.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	n.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
}

// AddRoute adds a route to dst ("default" or a CIDR) via gateway inside the
// namespace; the family follows the gateway's.
func (n *NS) AddRoute(t testing.TB, dst, via string) {
	t.Helper()
	fam := "-4"
	if strings.Contains(via, ":") {
		fam = "-6"
	}
	n.Run(t, "ip", fam, "route", "replace", dst, "via", via)
}

// AddAddr adds cidr (IPv4 or IPv6, e.g. "198.18.0.3/24") to the interface
// dev inside the namespace; IPv6 addresses skip duplicate address detection
// so they are usable at once.
func (n *NS) AddAddr(t testing.TB, dev, cidr string) {
	t.Helper()
	args := []string{"ip", "addr", "add", cidr, "dev", dev}
	if strings.Contains(cidr, ":") {
		args = append(args, "nodad")
	}
	n.Run(t, args...)
}

// nextIface returns an interface name unique within n.
func (n *NS) nextIface() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ifaces++
	return fmt.Sprintf("veth%d", n.ifaces-1)
}

// Connect joins a and b with a veth pair, gives each end its CIDR addresses
// (IPv4 and IPv6 mixed; IPv6 without DAD), brings both ends up and returns
// the interface names in a and in b. Deleting either namespace removes the
// pair.
func Connect(t testing.TB, a, b *NS, aAddrs, bAddrs []string) (aIf, bIf string) {
	t.Helper()
	aIf, bIf = a.nextIface(), b.nextIface()
	if out, err := runCmd("ip", "-n", a.Name, "link", "add", aIf, "type", "veth",
		"peer", "name", bIf, "netns", b.Name); err != nil {
		t.Fatalf("nstest: veth %s/%s - %s/%s: %v\n%s", a.Name, aIf, b.Name, bIf, err, out)
	}
	for _, c := range aAddrs {
		a.AddAddr(t, aIf, c)
	}
	for _, c := range bAddrs {
		b.AddAddr(t, bIf, c)
	}
	a.Run(t, "ip", "link", "set", aIf, "up")
	b.Run(t, "ip", "link", "set", bIf, "up")
	a.WaitUp(t, aIf)
	b.WaitUp(t, bIf)
	return aIf, bIf
}

// WaitUp waits (up to 5s) until interface dev of n is operationally up,
// so that the first packets sent over it are not lost while the carrier
// comes up.
func (n *NS) WaitUp(t testing.TB, dev string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := runCmd("ip", "-n", n.Name, "-o", "link", "show", "dev", dev)
		if err == nil && strings.Contains(out, " state UP ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nstest: %s in %s not up after 5s: %v\n%s", dev, n.Name, err, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runCmd runs a command with a time limit and returns its combined output.
func runCmd(name string, args ...string) (string, error) {
	return runCmdInput("", name, args...)
}

// runCmdInput is runCmd with stdin.
func runCmdInput(stdin, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Serve accepts on ln until ln closes and runs handle on a goroutine of its
// own for each connection, closing the connection when handle returns. When
// the test ends, ln and every connection still open are closed and the
// handlers waited for.
func Serve(t testing.TB, ln net.Listener, handle func(c net.Conn)) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					c.Close()
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
				}()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// ServeLoopback listens on a free port of 127.0.0.1 and serves it with
// handle as Serve does: a loopback backend for tests without namespaces.
func ServeLoopback(t testing.TB, handle func(c net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	Serve(t, ln, handle)
	return ln
}

// AcceptClose accepts on ln until ln closes and closes every connection at
// once: a backend that is up (a TCP health check passes) and says nothing.
// ln is closed and the accept loop waited for when the test ends.
func AcceptClose(t testing.TB, ln net.Listener) {
	Serve(t, ln, func(net.Conn) {})
}

// FreeAddr returns a loopback IPv4 address for a daemon under test to bind:
// a port the kernel handed out and that was closed again at once. Another
// listener can take it first; the daemon then fails to start, so a race
// fails a test, never passes it. For an address that must refuse
// connections, use RefusedAddr.
func FreeAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return a
}
