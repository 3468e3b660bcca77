package nstest

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestNewAndCleanup(t *testing.T) {
	RequireRoot(t)
	var name string
	t.Run("create", func(t *testing.T) {
		n := New(t, "t-")
		name = n.Name
		if !strings.HasPrefix(name, "hok-t-") || len(name) != 15 {
			t.Errorf("name %q: want hok-t- and 15 bytes", name)
		}
		if _, err := os.Stat(n.Path); err != nil {
			t.Errorf("path: %v", err)
		}
		if out := n.Run(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
			t.Errorf("lo not up: %s", out)
		}
	})
	if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
		t.Errorf("namespace %s still present after its test: %v", name, err)
	}
}

func TestRunErr(t *testing.T) {
	RequireRoot(t)
	n := New(t, "")
	if _, err := n.RunErr("false"); err == nil {
		t.Error("RunErr(false) = nil error")
	}
	if out := n.Run(t, "echo", "hi"); out != "hi\n" {
		t.Errorf("Run(echo hi) = %q", out)
	}
}

func TestDoSwitchesNamespace(t *testing.T) {
	RequireRoot(t)
	n := New(t, "")
	self, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Readlink("/proc/self/ns/net") // same as the host's, before and after
	if err != nil {
		t.Fatal(err)
	}
	var inside string
	if err := n.Do(func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside == self || inside == want {
		t.Errorf("Do ran in %s, the caller's namespace", inside)
	}
	after, _ := os.Readlink("/proc/thread-self/ns/net")
	if after != self {
		t.Errorf("caller's thread moved to %s", after)
	}
}

// TestConnect dials over a veth pair, IPv4 and IPv6.
func TestConnect(t *testing.T) {
	RequireRoot(t)
	a, b := New(t, "a-"), New(t, "b-")
	Connect(t, a, b, []string{"198.18.9.1/24", "2001:2:0:9::1/64"}, []string{"198.18.9.2/24", "2001:2:0:9::2/64"})
	for _, c := range []struct{ addr, from string }{
		{"198.18.9.2:7000", "198.18.9.1"},
		{"[2001:2:0:9::2]:7000", "2001:2:0:9::1"},
	} {
		l := b.Listen(t, "tcp", c.addr)
		got := acceptRemote(t, l, func(ctx context.Context) (net.Conn, error) { return a.Dial(ctx, "tcp", c.addr) })
		if got.Addr().String() != c.from {
			t.Errorf("dial %s: server saw %s, want %s", c.addr, got, c.from)
		}
	}
}

// TestTopology checks routing through the lab: clients reach backends via
// the balancer, and backends see the real client address.
func TestTopology(t *testing.T) {
	RequireRoot(t)
	tp := NewTopology(t, 2)
	v4, v6 := tp.AddClients(t, 2)
	if v4[0] != ClientAddr4(1) || v6[1] != ClientAddr6(2) {
		t.Fatalf("AddClients = %v %v", v4, v6)
	}
	for i, be := range tp.Backends {
		for _, c := range []struct{ dst, src netip.Addr }{
			{Backend4(i), Client4},
			{Backend4(i), v4[1]},
			{Backend6(i), Client6},
			{Backend6(i), v6[0]},
		} {
			addr := netip.AddrPortFrom(c.dst, 8080).String()
			l := be.Listen(t, "tcp", addr)
			got := acceptRemote(t, l, func(ctx context.Context) (net.Conn, error) {
				return tp.Client.DialFrom(ctx, c.src, "tcp", addr)
			})
			if got.Addr() != c.src {
				t.Errorf("backend %d: dial from %s: server saw %s", i, c.src, got)
			}
			l.Close()
		}
	}
}

// acceptRemote dials with dial, accepts on l and returns the remote address
// the server saw.
func acceptRemote(t *testing.T, l net.Listener, dial func(context.Context) (net.Conn, error)) netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		c   net.Conn
		err error
	}
	acc := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		acc <- res{c, err}
	}()
	c, err := dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	r := <-acc
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	defer r.c.Close()
	if _, err := io.WriteString(c, "x"); err != nil {
		t.Fatalf("write: %v", err)
	}
	return r.c.RemoteAddr().(*net.TCPAddr).AddrPort()
}
