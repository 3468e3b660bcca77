package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// peer is a running peer process.
type peer struct {
	in      io.WriteCloser
	out     *bufio.Scanner
	backend netip.AddrPort
}

func startPeer(tb testing.TB) *peer {
	tb.Helper()
	child := testenv.StartChild(tb, []string{peerEnv + "=1"}, "-test.run=^$")
	p := &peer{in: child.In, out: bufio.NewScanner(child.Out)}
	line := p.line(tb)
	addr, ok := strings.CutPrefix(line, "backend ")
	if !ok {
		tb.Fatalf("peer said %q", line)
	}
	p.backend = netip.MustParseAddrPort(addr)
	return p
}

func (p *peer) line(tb testing.TB) string {
	tb.Helper()
	if !p.out.Scan() {
		tb.Fatalf("peer exited: %v", p.out.Err())
	}
	return p.out.Text()
}

// send writes a command; expect reads its reply.
func (p *peer) send(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if _, err := fmt.Fprintf(p.in, format+"\n", args...); err != nil {
		tb.Fatal(err)
	}
}

func (p *peer) expect(tb testing.TB, want string) {
	tb.Helper()
	if got := p.line(tb); got != want {
		tb.Fatalf("peer said %q, want %q", got, want)
	}
}
