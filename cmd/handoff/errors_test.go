package main

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOneLineErrors: an unreadable config and a port in use each end the
// daemon with exit 1 and one line that names the cause. The port in use is
// one the test holds itself, and the admin API is off, so no other port
// can be the one in use.
func TestOneLineErrors(t *testing.T) {
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	inUse := writeWebConfig(t, dir, "mode: userspace", busy.Addr().String(), "127.0.0.1:9")

	for _, tc := range []struct {
		desc, config, want string
	}{
		{"unreadable config", filepath.Join(dir, "missing.yaml"), "missing.yaml"},
		{"port in use", inUse, "listen " + busy.Addr().String() + ": bind: address already in use"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			cmd := exec.Command(binary(t), "run", "-c", tc.config)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("run: %v, want exit 1\n%s", err, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, tc.want) || !strings.HasPrefix(last, "handoff") && !strings.Contains(last, tc.config) {
				t.Errorf("last line %q should name %q\nfull stderr:\n%s", last, tc.want, stderr.String())
			}
		})
	}
}
