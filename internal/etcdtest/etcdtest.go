// Package etcdtest runs a real etcd server (Debian's etcd-server, the
// etcd binary) for tests: on 127.0.0.1 with ephemeral ports, or on a given
// address inside a network namespace. It can be stopped and started again
// with its data, as an outage. Every server is killed by t.Cleanup.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// Require skips t when no etcd binary is installed; under CI=true the skip
// fails (testenv.Skip; scripts/test.sh installs etcd-server).
func Require(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("etcd")
	if err == nil {
		return path
	}
	testenv.Skip(t, "needs the etcd binary (apt-get install etcd-server)")
	return ""
}

// Options place a server. The zero value listens on 127.0.0.1 with
// ephemeral ports.
type Options struct {
	// Host is the address to listen on; "" is 127.0.0.1 (ports are then
	// picked free).
	Host string
	// ClientPort and PeerPort default to 2379 and 2380 when Host is set.
	ClientPort, PeerPort int
	// Wrap, when set, returns the command line to run instead of argv
	// (e.g. prefixed with `ip netns exec NS`).
	Wrap func(argv []string) []string
	// Dial, when set, connects to the server for its health check (from
	// inside its namespace).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Server is one etcd member of a one-member cluster.
type Server struct {
	t        testing.TB
	bin      string
	dir      string
	opts     Options
	Endpoint string // http://host:port

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start runs etcd and waits until it answers; Cleanup kills it.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Require(t)
	if o.Host == "" {
		o.Host = "127.0.0.1"
		o.ClientPort, o.PeerPort = int(nstest.FreeAddr(t).Port()), int(nstest.FreeAddr(t).Port())
	}
	if o.ClientPort == 0 {
		o.ClientPort = 2379
	}
	if o.PeerPort == 0 {
		o.PeerPort = 2380
	}
	dir, err := os.MkdirTemp("/dev/shm", "hoetcd-") // memory: fsync costs nothing, as on a fast disk
	if err != nil {
		dir = t.TempDir()
	}
	s := &Server{t: t, bin: bin, dir: dir, opts: o, Endpoint: "http://" + net.JoinHostPort(o.Host, strconv.Itoa(o.ClientPort))}
	t.Cleanup(func() {
		s.Stop()
		os.RemoveAll(dir)
	})
	s.Restart()
	return s
}

// Restart starts the server again on its data (after Stop) and waits until
// it answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	peer := "http://" + net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.PeerPort))
	argv := []string{s.bin,
		"--name", "t", "--data-dir", s.dir + "/data",
		"--listen-client-urls", s.Endpoint, "--advertise-client-urls", s.Endpoint,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "t=" + peer, "--initial-cluster-state", "new",
		"--log-level", "error", "--logger", "zap",
		"--heartbeat-interval", "50", "--election-timeout", "500",
	}
	if s.opts.Wrap != nil {
		argv = s.opts.Wrap(argv)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("etcd: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s.healthy() {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("etcd at %s did not become healthy within 20s", s.Endpoint)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// healthy asks /health.
func (s *Server) healthy() bool {
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: s.opts.Dial, DisableKeepAlives: true}}
	resp, err := c.Get(s.Endpoint + "/health")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Stop kills the server (SIGKILL: an outage, not a shutdown) and waits for
// it; its data stays for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Pid returns the server's process id (0 while stopped).
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// String is the endpoint.
func (s *Server) String() string { return fmt.Sprintf("etcd %s", s.Endpoint) }
