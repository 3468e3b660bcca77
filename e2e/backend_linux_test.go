package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// How a greeter answers the balancer's health checks.
const (
	healthy  int32 = iota // greet them like everyone
	sick                  // answer "sick\n" to every check
	flapping              // answer "sick\n" to every second check
)

// greeter is a backend server: it writes "NAME CLIENT-IP\n" to each
// connection, then echoes until the client half-closes, and half-closes in
// turn. Connections from the balancer's backend side (in kernel mode with
// first_connection: reset, only health checks) get "sick\n" instead when
// mode says so, which fails a send-expect check expecting that address.
type greeter struct {
	name   string
	ln     net.Listener
	mode   atomic.Int32
	fromLB atomic.Int64 // connections from the balancer
	sick   atomic.Int64 // "sick" answers given
}

// serveGreeter runs a greeter named name on addr in ns until the test ends.
func serveGreeter(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort) *greeter {
	t.Helper()
	g := &greeter{name: name, ln: ns.Listen(t, "tcp", addr.String())}
	nstest.Serve(t, g.ln, g.handle)
	return g
}

func (g *greeter) handle(c net.Conn) {
	ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	if ra == nstest.LBBack4 || ra == nstest.LBBack6 {
		n := g.fromLB.Add(1)
		if m := g.mode.Load(); m == sick || m == flapping && n%2 == 0 {
			g.sick.Add(1)
			io.WriteString(c, "sick\n")
			return
		}
	}
	fmt.Fprintf(c, "%s %s\n", g.name, ra)
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// stop closes the greeter's listener: new connections are refused, as to a
// backend that went down. Connections already open go on.
func (g *greeter) stop() { g.ln.Close() }

// Environment of a backend process (runBackendProcess).
const (
	backendEnvAddr = "HANDOFF_E2E_BACKEND_ADDR"
	backendEnvName = "HANDOFF_E2E_BACKEND_NAME"
)

// runBackendProcess is the test binary run by startBackendProc: a greeter
// named name on addr until it is killed or its stdin closes. It returns the
// process's exit code.
func runBackendProcess(addr, name string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	g := &greeter{name: name, ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				g.handle(c)
			}()
		}
	}()
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // the test closed it, or died
	return 0
}

// backendProc is a greeter running as a process of its own in a backend
// namespace, so that it can be killed like a crashed server.
type backendProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startBackendProc starts a greeter process named name on addr in ns and
// waits until it listens. It is killed when the test ends.
func startBackendProc(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort) *backendProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the command itself: the PID is the server's.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe)
	cmd.Env = append(os.Environ(), backendEnvAddr+"="+addr.String(), backendEnvName+"="+name)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &backendProc{cmd: cmd, done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("not ready after 10s")
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		stdin.Close()
		p.kill()
	})
	if err != nil {
		p.kill()
		t.Fatalf("backend process %s on %s: %v\n%s", name, addr, err, stderr.String())
	}
	if exe2, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); exe2 != exe {
		t.Fatalf("backend process %s: PID %d runs %q, want the test binary", name, cmd.Process.Pid, exe2)
	}
	return p
}

// kill sends SIGKILL and waits until the process is gone (its sockets
// closed). It returns when the signal was sent.
func (p *backendProc) kill() time.Time {
	at := time.Now()
	select {
	case <-p.done:
		return at
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return at
}

// serveTLS runs a TLS backend with cert on addr in ns: after the handshake
// it writes "NAME CLIENT-IP SERVER-NAME\n" and closes.
func serveTLS(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort, cert tls.Certificate) {
	t.Helper()
	ln := tls.NewListener(ns.Listen(t, "tcp", addr.String()), &tls.Config{Certificates: []tls.Certificate{cert}})
	nstest.Serve(t, ln, func(c net.Conn) {
		tc := c.(*tls.Conn)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if tc.Handshake() != nil {
			return
		}
		ra := tc.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		fmt.Fprintf(tc, "%s %s %s\n", name, ra, tc.ConnectionState().ServerName)
	})
}

var (
	certOnce sync.Once
	certTLS  tls.Certificate
	certErr  error
)

// testCert returns a self-signed certificate for the names the SNI
// scenario uses; its clients trust it as their only root.
func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			certErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "handoff test"},
			DNSNames:              []string{"a.example", "*.b.example", "c.example"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			certErr = err
			return
		}
		leaf, err := x509.ParseCertificate(der)
		if err != nil {
			certErr = err
			return
		}
		certTLS = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	})
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certTLS
}

// serveProxyReader runs a backend on addr in ns that requires a PROXY
// protocol header on each connection and answers "VERSION SOURCE
// DESTINATION\n" from it, then echoes the client's bytes until the client
// half-closes.
func serveProxyReader(t *testing.T, ns *nstest.NS, addr netip.AddrPort) {
	t.Helper()
	nstest.Serve(t, ns.Listen(t, "tcp", addr.String()), func(raw net.Conn) {
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		c := proxyproto.NewConn(raw)
		h := c.ProxyHeader()
		if h == nil {
			fmt.Fprintf(raw, "no PROXY header\n")
			return
		}
		fmt.Fprintf(c, "v%d %s %s\n", h.Version, h.SourceAddr, h.DestinationAddr)
		io.Copy(c, c)
		raw.(*net.TCPConn).CloseWrite()
	})
}
