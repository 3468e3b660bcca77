package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// TestSystemdNotify: started as a Type=notify service with a watchdog, the
// daemon says READY=1 once it serves, pings the watchdog, frames a reload
// with RELOADING=1 and READY=1, and says STOPPING=1 on SIGTERM.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfg := writeWebConfig(t, dir, "mode: userspace", nstest.FreeAddr(t).String(), "127.0.0.1:9")
	cmd := exec.Command(binary(t), "run", "-c", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	var stderr testenv.Buffer // written by the child's copier while a failure reads it
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	next := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		deadline := time.Now().Add(15 * time.Second)
		var got []string
		for {
			conn.SetReadDeadline(deadline)
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no %q from the daemon (got %q): %v\n%s", want, got, err, stderr.String())
			}
			msg := string(buf[:n])
			if strings.HasPrefix(msg, want) {
				return
			}
			got = append(got, msg)
		}
	}
	next("READY=1")
	next("WATCHDOG=1")
	next("WATCHDOG=1")
	cmd.Process.Signal(syscall.SIGHUP)
	next("RELOADING=1\nMONOTONIC_USEC=")
	next("READY=1")
	cmd.Process.Signal(syscall.SIGTERM)
	next("STOPPING=1")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v\n%s", err, stderr.String())
	}
}
