package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// TestProxyProtocolModes: a config without mode: and with a proxy_protocol
// service runs with --mode userspace (the container image's command), runs
// in userspace with the reason in auto mode, and is refused at once with
// --mode kernel. None of them touches the kernel's tables.
func TestProxyProtocolModes(t *testing.T) {
	addr := nstest.FreeAddr(t).String() // the daemon binds it; a race for it makes the test fail, not pass
	cfg := writeWebConfig(t, t.TempDir(), "", addr, "198.19.1.11:9", "proxy_protocol: v2")

	for _, tc := range []struct {
		mode, want string
		serves     bool
	}{
		{"userspace", `msg=serving mode=userspace`, true},
		{"auto", `reason="service web: proxy_protocol v2 needs userspace mode`, true},
		{"kernel", "handoff: service web: proxy_protocol v2 needs userspace mode", false},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			cmd := exec.Command(binary(t), "run", "-c", cfg, "--mode", tc.mode)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			lines := make(chan string)
			go func() {
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			var seen []string
			deadline := time.After(20 * time.Second)
			for found := false; !found; {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("exited without %q:\n%s", tc.want, strings.Join(seen, "\n"))
					}
					seen = append(seen, l)
					found = strings.Contains(l, tc.want)
				case <-deadline:
					t.Fatalf("no %q in 20s:\n%s", tc.want, strings.Join(seen, "\n"))
				}
			}
			if !tc.serves {
				go io.Copy(io.Discard, stderr)
				if err := cmd.Wait(); err == nil || cmd.ProcessState.ExitCode() != 1 {
					t.Fatalf("exit %v, want 1", err)
				}
				return
			}
			for !strings.Contains(seen[len(seen)-1], "msg=serving") {
				l, ok := <-lines
				if !ok {
					t.Fatalf("exited before serving:\n%s", strings.Join(seen, "\n"))
				}
				seen = append(seen, l)
			}
			// The backend refuses, so the connection is reset once accepted;
			// a refusal would mean nothing listens.
			c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
			if errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("the service does not listen: %v\n%s", err, strings.Join(seen, "\n"))
			}
			if c != nil {
				c.Close()
			}
			cmd.Process.Signal(syscall.SIGTERM)
			go func() {
				for range lines {
				}
			}()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("exit after SIGTERM: %v", err)
			}
		})
	}
}
