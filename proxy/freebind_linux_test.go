package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestListenFreebind: ListenFreebind binds an address no interface of the
// host holds, for IPv4 and IPv6, where a plain bind fails (when the host
// does not allow non-local binds to every socket anyway).
func TestListenFreebind(t *testing.T) {
	for _, tc := range []struct{ network, addr, sysctl string }{
		{"tcp4", "198.18.254.77:0", "/proc/sys/net/ipv4/ip_nonlocal_bind"},
		{"tcp6", "[2001:2:fe::77]:0", "/proc/sys/net/ipv6/ip_nonlocal_bind"},
	} {
		t.Run(tc.network, func(t *testing.T) {
			if b, err := os.ReadFile(tc.sysctl); err == nil && strings.TrimSpace(string(b)) == "0" {
				ln, err := net.Listen(tc.network, tc.addr)
				if err == nil {
					ln.Close()
					t.Fatalf("a plain listen on %s worked: the address is held here", tc.addr)
				}
				if !errors.Is(err, syscall.EADDRNOTAVAIL) {
					t.Fatalf("a plain listen on %s: %v, want EADDRNOTAVAIL", tc.addr, err)
				}
			}
			ln, err := ListenFreebind(context.Background(), tc.network, tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := ln.Addr().(*net.TCPAddr).AddrPort()
			if want := netip.MustParseAddrPort(tc.addr).Addr(); got.Addr() != want || got.Port() == 0 {
				t.Errorf("listening on %v, want %v with a port", got, want)
			}
		})
	}
}
