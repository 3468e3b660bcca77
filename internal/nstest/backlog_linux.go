package nstest

import (
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// FullBacklog returns the loopback address of a listener whose accept
// queue is full (backlog 0, one connection pending and never accepted):
// the kernel drops further SYNs, so a connect to it stays mid-handshake.
// accept takes the pending connection off the queue, so the next SYN
// retransmission (after ~1 s) completes. All is closed when the test ends.
func FullBacklog(t testing.TB) (addr netip.AddrPort, accept func()) {
	t.Helper()
	fd, addr := boundSocket(t)
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for range 2 { // fill the queue: backlog 0 holds one
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
