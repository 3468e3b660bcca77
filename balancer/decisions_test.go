package balancer_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// countingPins is a data plane that counts the pins of each client.
type countingPins struct {
	balancer.Dataplane
	mu   sync.Mutex
	pins map[netip.Addr][]string // backends, in order
}

func (c *countingPins) Pin(ctx context.Context, p dataplane.Pin) error {
	c.mu.Lock()
	c.pins[p.Client] = append(c.pins[p.Client], p.Backend)
	c.mu.Unlock()
	return c.Dataplane.Pin(ctx, p)
}

// TestRacingFirstConnections sends four connections at once from each of
// 20 new clients to a round-robin service in kernel mode (as if their
// SYNs all passed the kernel's rules before the first pin existed), with
// each first_connection setting, and checks that each client is
// classified and pinned once, that all its served connections reach the
// backend of that pin, and that with reset only the connection that made
// the decision is reset.
func TestRacingFirstConnections(t *testing.T) {
	for _, first := range []config.FirstConnection{config.FirstReset, config.FirstProxy} {
		t.Run(string(first), func(t *testing.T) {
			bes := []*namedEcho{startEcho(t, "a"), startEcho(t, "b"), startEcho(t, "c")}
			sc := testService("web", config.CheckNone, bes...)
			sc.FirstConnection = first
			sc.Pools[0].Balance = config.BalanceRoundRobin
			dp := &countingPins{Dataplane: newFDP(t), pins: map[netip.Addr][]string{}}
			eng := startWith(t, &config.Config{Services: []config.Service{sc}}, dp, true)
			addr := eng.Addr("web")

			const clients, conns = 20, 4
			type answer struct {
				client  int
				backend string // "" when reset
			}
			answers := make(chan answer, clients*conns)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range clients {
				src := fmt.Sprintf("127.0.1.%d", i+1)
				for range conns {
					wg.Go(func() {
						<-start
						d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
						c, err := d.Dial("tcp", addr.String())
						if errors.Is(err, syscall.ECONNRESET) {
							// The reset reached the client before its dial
							// returned (Go reads SO_ERROR after the handshake).
							answers <- answer{i, ""}
							return
						}
						if err != nil {
							t.Errorf("dial from %s: %v", src, err)
							return
						}
						defer c.Close()
						c.SetDeadline(time.Now().Add(3 * time.Second))
						line, err := bufio.NewReader(c).ReadString('\n')
						name, _, _ := strings.Cut(line, " ")
						if err != nil {
							name = ""
						}
						answers <- answer{i, name}
					})
				}
			}
			close(start)
			wg.Wait()
			close(answers)
			seen := map[int][]string{}
			for a := range answers {
				seen[a.client] = append(seen[a.client], a.backend)
			}
			for i := range clients {
				client := netip.MustParseAddr(fmt.Sprintf("127.0.1.%d", i+1))
				dp.mu.Lock()
				pins := dp.pins[client]
				dp.mu.Unlock()
				if len(pins) != 1 {
					t.Errorf("client %s pinned %d times (%v), want once", client, len(pins), pins)
					continue
				}
				resets := 0
				for _, b := range seen[i] {
					switch b {
					case "":
						resets++
					case pins[0]:
					default:
						t.Errorf("client %s pinned to %s reached %s", client, pins[0], b)
					}
				}
				if want := map[config.FirstConnection]int{config.FirstReset: 1, config.FirstProxy: 0}[first]; resets != want {
					t.Errorf("client %s: %d of its %d racing connections reset, want %d", client, resets, conns, want)
				}
			}
			st, err := eng.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			fc := st.Services[0].FirstConnections
			if first == config.FirstReset && fc["reset"] != clients {
				t.Errorf("first connections %v, want %d reset", fc, clients)
			}
			if got := fc["reset"] + fc["proxied"]; got != clients*conns {
				t.Errorf("first connections %v, want %d in all", fc, clients*conns)
			}
		})
	}
}

// TestNoRouteCounted checks that a client no route takes, in a service
// without a default pool, is counted as no-route.
func TestNoRouteCounted(t *testing.T) {
	be := startEcho(t, "a")
	sc := testService("web", config.CheckNone, be)
	sc.Pools[0].Name = "only"
	sc.Routes = []config.Route{{Match: config.Match{CIDR: netip.MustParsePrefix("198.18.0.0/24")}, Pool: "only"}}
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, newFDP(t), false)
	c, err := net.Dial("tcp", eng.Addr("web").String())
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatal(err)
	}
	if err == nil {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if n, _ := c.Read(make([]byte, 1)); n != 0 {
			t.Error("a client no route takes was served")
		}
		c.Close()
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, err := eng.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if st.Services[0].Classified["no-route"] == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("classified %v, want no-route 1", st.Services[0].Classified)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
