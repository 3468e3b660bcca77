package nstest

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

// Addresses of the standard lab. The balancer's client-side addresses
// (LBClient4, LBClient6) are the natural VIPs of a test service.
var (
	Client4   = netip.MustParseAddr("198.18.0.2")    // the client namespace's first address
	Client6   = netip.MustParseAddr("2001:2:0:1::2") // and its IPv6 twin
	LBClient4 = netip.MustParseAddr("198.18.0.1")    // balancer, towards the clients
	LBClient6 = netip.MustParseAddr("2001:2:0:1::1")
	LBBack4   = netip.MustParseAddr("198.19.1.1") // balancer, towards the backends
	LBBack6   = netip.MustParseAddr("2001:2:0:2::1")
)

// MaxClients is how many client addresses the client namespace can hold
// (198.18.0.2 to 198.18.0.254).
const MaxClients = 253

// MaxBackends is how many backends a Topology can have.
const MaxBackends = 200

// Backend4 returns the IPv4 address of backend i (0-based): 198.19.1.11,
// 198.19.1.12, ...
func Backend4(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, 1, byte(11 + i)})
}

// Backend6 returns the IPv6 address of backend i: 2001:2:0:2::11,
// 2001:2:0:2::12, ...
func Backend6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:2:0:2::%d", 11+i))
}

// ClientAddr4 returns the i-th IPv4 client address (0 is Client4) and
// ClientAddr6 its IPv6 twin. Only addresses added by NewTopology or
// AddClients exist in the client namespace.
func ClientAddr4(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}) }

// ClientAddr6 returns the i-th IPv6 client address (0 is Client6).
func ClientAddr6(i int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("2001:2:0:1::%x", 2+i))
}

// Topology is the standard handoff lab:
//
//	Client ──veth── LB ──bridge br0── Backends[0..n-1]
//
// Client holds 198.18.0.2/24 and 2001:2:0:1::2/64 (more with AddClients)
// with default routes via LB. LB holds 198.18.0.1/24, 2001:2:0:1::1/64
// towards the client and 198.19.1.1/24, 2001:2:0:2::1/64 on br0 towards the
// backends, and forwards. Backend i holds Backend4(i)/24 and Backend6(i)/64
// with default routes via LB, so replies to DNATed flows pass through it.
type Topology struct {
	Client   *NS
	LB       *NS
	Backends []*NS

	// ClientIf is the client namespace's interface towards LB.
	ClientIf string

	mu      sync.Mutex
	clients int // client addresses present (ClientAddr4(0..clients-1))
}

// NewTopology builds the lab with n backends (1 ≤ n ≤ MaxBackends). All
// its namespaces are deleted when the test ends.
func NewTopology(t testing.TB, n int) *Topology {
	t.Helper()
	if n < 1 || n > MaxBackends {
		t.Fatalf("nstest: %d backends, want 1 to %d", n, MaxBackends)
	}
	tp := &Topology{Client: New(t, "c-"), LB: New(t, "lb-"), clients: 1}
	tp.ClientIf, _ = Connect(t, tp.Client, tp.LB,
		[]string{Client4.String() + "/24", Client6.String() + "/64"},
		[]string{LBClient4.String() + "/24", LBClient6.String() + "/64"})
	tp.Client.AddRoute(t, "default", LBClient4.String())
	tp.Client.AddRoute(t, "default", LBClient6.String())

	// A plain flooding bridge: no multicast snooping state to warm up.
	tp.LB.Run(t, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	tp.LB.AddAddr(t, "br0", LBBack4.String()+"/24")
	tp.LB.AddAddr(t, "br0", LBBack6.String()+"/64")
	tp.LB.Run(t, "ip", "link", "set", "br0", "up")
	tp.LB.EnableForwarding(t)

	for i := range n {
		be := New(t, fmt.Sprintf("b%d-", i))
		lbIf, _ := Connect(t, tp.LB, be, nil,
			[]string{Backend4(i).String() + "/24", Backend6(i).String() + "/64"})
		tp.LB.Run(t, "ip", "link", "set", lbIf, "master", "br0")
		be.AddRoute(t, "default", LBBack4.String())
		be.AddRoute(t, "default", LBBack6.String())
		tp.Backends = append(tp.Backends, be)
	}
	tp.LB.WaitUp(t, "br0")
	return tp
}

// AddClients adds n more client addresses (IPv4 and IPv6) to the client
// namespace and returns them, so one namespace can act as many clients;
// dial from them with Client.DialFrom.
func (tp *Topology) AddClients(t testing.TB, n int) (v4, v6 []netip.Addr) {
	t.Helper()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if tp.clients+n > MaxClients {
		t.Fatalf("nstest: %d clients, at most %d", tp.clients+n, MaxClients)
	}
	var batch strings.Builder
	for i := tp.clients; i < tp.clients+n; i++ {
		a4, a6 := ClientAddr4(i), ClientAddr6(i)
		fmt.Fprintf(&batch, "addr add %s/24 dev %s\naddr add %s/64 dev %s nodad\n", a4, tp.ClientIf, a6, tp.ClientIf)
		v4, v6 = append(v4, a4), append(v6, a6)
	}
	// One ip process for all addresses: many clients stay cheap.
	if out, err := runCmdInput(batch.String(), "ip", "-n", tp.Client.Name, "-batch", "-"); err != nil {
		t.Fatalf("nstest: adding %d client addresses: %v\n%s", n, err, out)
	}
	tp.clients += n
	return v4, v6
}
