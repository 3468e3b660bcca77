package statelock

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestLock checks that a second lock of a directory is refused with the
// holder's PID while the first is held, and granted once it is released.
func TestLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	release, err := Lock(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Lock(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "PID "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Lock: %v, want ErrLocked naming PID %d", err, os.Getpid())
	}
	release()
	release2, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}
	release2()
}

// TestLockOtherProcess checks the lock against another process: a child
// holding the lock makes this one's fail, and its exit frees it.
func TestLockOtherProcess(t *testing.T) {
	if os.Getenv("STATELOCK_CHILD") != "" {
		if _, err := Lock(os.Getenv("STATELOCK_CHILD")); err != nil {
			os.Exit(2)
		}
		os.Stdout.WriteString("locked\n")
		os.Stdin.Read(make([]byte, 1)) // hold until the parent closes stdin
		os.Exit(0)
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockOtherProcess$")
	cmd.Env = append(os.Environ(), "STATELOCK_CHILD="+dir)
	stdin, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := out.Read(buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("child: %q, %v", buf, err)
	}
	_, err := Lock(dir)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "PID "+strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("Lock while the child holds it: %v, want ErrLocked naming PID %d", err, cmd.Process.Pid)
	}
	stdin.Close()
	cmd.Wait()
	release, err := Lock(dir)
	if err != nil {
		t.Fatalf("Lock after the child exited: %v", err)
	}
	release()
}
