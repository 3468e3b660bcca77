package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// peer is a running peer process.
type peer struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *bufio.Scanner
	backend netip.AddrPort
}

func startPeer(tb testing.TB) *peer {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), peerEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	p := &peer{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	tb.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
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
