package healthcheck

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
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
