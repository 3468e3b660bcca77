//go:build !linux

package cluster_test

import (
	"net/netip"
	"testing"
)

// holdPort leaves addr's port free: another listener on the machine may
// take it (see the Linux version).
func holdPort(t *testing.T, addr netip.AddrPort) {}
