package healthcheck

import (
	"bufio"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/handoff-lb/handoff/config"
)

// proxyBackend is a backend that requires a PROXY protocol header first on
// every connection (HAProxy's accept-proxy), counts the connections that
// lack one as errors, and then answers HTTP and send-expect checks.
type proxyBackend struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []string
	ok   int
}

func startProxyBackend(t *testing.T) *proxyBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &proxyBackend{ln: ln}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.wg.Go(func() { b.serve(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); b.wg.Wait() })
	return b
}

func (b *proxyBackend) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	h, err := proxyproto.Read(r)
	b.mu.Lock()
	if err != nil {
		b.errs = append(b.errs, err.Error())
	} else if h.Command != proxyproto.LOCAL && h.TransportProtocol != proxyproto.UNSPEC {
		b.errs = append(b.errs, "a check announced a client")
	} else {
		b.ok++
	}
	b.mu.Unlock()
	if err != nil {
		return
	}
	line, err := r.ReadString('\n')
	switch {
	case err != nil:
	case strings.HasPrefix(line, "GET "):
		c.Write([]byte("HTTP/1.0 200 OK\r\n\r\n"))
	case line == "PING\n":
		c.Write([]byte("PONG\n"))
	}
}

func (b *proxyBackend) counts() (ok int, errs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ok, append([]string(nil), b.errs...)
}

// TestChecksSendProxyHeader: health checks of a service whose backends
// expect a PROXY header send one (v1 UNKNOWN, v2 LOCAL) before anything
// else, for every check kind, so the backend sees no malformed
// connection and the checks pass. Without the header the same backend
// counts errors (the control).
func TestChecksSendProxyHeader(t *testing.T) {
	checks := []config.Health{
		{Check: config.CheckTCP},
		{Check: config.CheckHTTP, HTTPPath: "/healthz", ExpectStatus: 200},
		{Check: config.CheckSendExpect, Send: "PING\n", Expect: "PONG"},
	}
	for _, v := range []config.ProxyProtocol{config.ProxyProtocolV1, config.ProxyProtocolV2, config.ProxyProtocolOff} {
		for _, h := range checks {
			t.Run(string(v)+"/"+string(h.Check), func(t *testing.T) {
				be := startProxyBackend(t)
				h.Interval, h.Timeout, h.Rise, h.Fall = 20*time.Millisecond, 500*time.Millisecond, 1, 1
				m := New(Options{})
				defer m.Close()
				addr := be.ln.Addr().(*net.TCPAddr).AddrPort()
				if err := m.Set([]Target{{Service: "web", Backend: "be1", Addr: netip.AddrPortFrom(addr.Addr(), addr.Port()), Health: h, ProxyProtocol: v}}); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(3 * time.Second)
				for {
					ok, errs := be.counts()
					if v == config.ProxyProtocolOff {
						if len(errs) > 0 {
							return // the control: a check without the header is an error to the backend
						}
					} else {
						if len(errs) > 0 {
							t.Fatalf("the backend logged %d errors: %v", len(errs), errs)
						}
						if ok >= 5 {
							up, _, lastErr := m.State("web", "be1")
							if !up || lastErr != nil {
								t.Fatalf("checks with the PROXY header: up %v, last error %v", up, lastErr)
							}
							return
						}
					}
					if time.Now().After(deadline) {
						t.Fatalf("after 3s: %d checks with a header, errors %v", ok, errs)
					}
					time.Sleep(10 * time.Millisecond)
				}
			})
		}
	}
}
