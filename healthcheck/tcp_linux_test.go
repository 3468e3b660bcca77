package healthcheck

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
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

// TestConnectProbeWaits covers the poller path: a handshake that does not
// complete within connect times out at the context's deadline, and one
// that completes later (the SYN retransmitted once the queue has room)
// passes.
func TestConnectProbeWaits(t *testing.T) {
	addr, accept := nstest.FullBacklog(t)
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
