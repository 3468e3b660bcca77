//go:build !linux

package nstest

import (
	"net/netip"
	"testing"
)

// RefusedAddr returns a loopback IPv4 address where nothing listens: on
// Linux the port stays bound, unlistened, until the test ends; here it is
// only a port that was free a moment ago.
func RefusedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	return FreeAddr(t)
}
