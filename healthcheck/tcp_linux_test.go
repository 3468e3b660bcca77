package healthcheck

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestConnectProbeAddresses(t *testing.T) {
	tests := []struct {
		addr    netip.AddrPort
		wantErr string
	}{
		{netip.AddrPort{}, "invalid address"},
		{netip.MustParseAddrPort("[fe80::1%no-such-if0]:80"), "no such network interface"},
	}
	for _, tc := range tests {
		t.Run(tc.addr.String(), func(t *testing.T) {
			err := connectProbe(context.Background(), tc.addr)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("connectProbe(%v) = %v, want %q", tc.addr, err, tc.wantErr)
			}
		})
	}
}

func TestConnectOutcome(t *testing.T) {
	tests := []struct {
		errno    error
		wantDone bool
		wantErr  error
	}{
		{nil, true, nil},
		{syscall.EISCONN, true, nil},
		{syscall.EALREADY, false, nil},
		{syscall.EINPROGRESS, false, nil},
		{syscall.EINTR, false, nil},
		{syscall.ECONNREFUSED, true, syscall.ECONNREFUSED},
		{syscall.ETIMEDOUT, true, syscall.ETIMEDOUT},
		{syscall.EHOSTUNREACH, true, syscall.EHOSTUNREACH},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.errno), func(t *testing.T) {
			done, err := connectOutcome(tc.errno)
			if done != tc.wantDone || err != tc.wantErr {
				t.Fatalf("connectOutcome(%v) = %v, %v; want %v, %v", tc.errno, done, err, tc.wantDone, tc.wantErr)
			}
		})
	}
}

// fullBacklog returns the address of a listener whose accept queue is full
// (backlog 0, one connection pending and never accepted): the kernel drops
// further SYNs, so a connect to it stays mid-handshake and the probe must
// wait in the poller. accept takes the pending connection off the queue,
// so the next SYN retransmission (after ~1 s) completes.
func fullBacklog(t *testing.T) (addr netip.AddrPort, accept func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	for i := 0; i < 2; i++ { // fill the queue: backlog 0 holds one
		c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	return addr, func() {
		if nfd, _, err := syscall.Accept(fd); err == nil {
			syscall.Close(nfd)
		}
	}
}

// TestConnectProbeWaits covers the poller path: a handshake that does not
// complete within connect times out at the context's deadline, and one
// that completes later (the SYN retransmitted once the queue has room)
// passes.
func TestConnectProbeWaits(t *testing.T) {
	addr, accept := fullBacklog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	err := connectProbe(ctx, addr)
	cancel()
	if err == nil || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("probe of a full accept queue = %v after %v, want a timeout at the deadline", err, time.Since(start))
	}
	go func() { time.Sleep(100 * time.Millisecond); accept() }()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := connectProbe(ctx, addr); err != nil {
		t.Fatalf("probe after the queue made room = %v, want success", err)
	}
}
