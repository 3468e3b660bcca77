// Package testenv decides whether a test may skip. Every skip in the
// repository goes through Skip: outside CI it skips with the reason, and
// under CI=true it fails with it, because a test that CI does not run
// proves nothing.
package testenv

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// CI reports whether the tests run in CI (the environment variable CI is
// "true"), where a skip is a failure.
func CI() bool { return os.Getenv("CI") == "true" }

// Perf reports whether HANDOFF_PERF=1 asks measurement tests for their
// large sizes. Without it they run at a smaller size; they never skip.
func Perf() bool { return os.Getenv("HANDOFF_PERF") == "1" }

// Race reports whether the race detector is built in. Tests that cannot
// measure under it live in files built with !race, which scripts/test.sh
// runs in a step of their own.
const Race = race

// Skip skips t with reason, or under CI=true fails it with the reason.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if CI() {
		t.Fatal(reason + " (CI=true: a skip is a failure)")
	}
	t.Skip(reason)
}

// Skipf is Skip with a formatted reason.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	Skip(t, fmt.Sprintf(format, args...))
}

var builds struct {
	sync.Mutex
	dir  string
	bins map[bool]string // race → binary
}

// HandoffBinary returns the handoff command built for the tests that run
// the real binary, with the race detector when race is set. It builds each
// kind once per test process, into a directory RemoveBinaries deletes.
func HandoffBinary(race bool) (string, error) {
	builds.Lock()
	defer builds.Unlock()
	if bin, ok := builds.bins[race]; ok {
		return bin, nil
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "handoff-bin-")
		if err != nil {
			return "", err
		}
		builds.dir, builds.bins = dir, map[bool]string{}
	}
	name, args := "handoff", []string{"build"}
	if race {
		name, args = "handoff-race", append(args, "-race")
	}
	bin := filepath.Join(builds.dir, name)
	args = append(args, "-o", bin, "github.com/handoff-lb/handoff/cmd/handoff")
	if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	builds.bins[race] = bin
	return bin, nil
}

// RemoveBinaries deletes what HandoffBinary built; TestMain calls it once
// the tests ran.
func RemoveBinaries() {
	builds.Lock()
	defer builds.Unlock()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
		builds.dir, builds.bins = "", nil
	}
}

// Child is this test binary run again as a child process, which talks to
// the test over its standard input and output.
type Child struct {
	In  io.WriteCloser // closing it tells the child to exit
	Out io.Reader
}

// StartChild runs this test binary again with args and env added to this
// process's environment, its standard error on this process's. When the
// test ends, the child's standard input is closed and the child waited for,
// killed after 10 seconds; a child that fails or has to be killed fails the
// test.
func StartChild(t testing.TB, env []string, args ...string) *Child {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			err = fmt.Errorf("killed after 10s: %v", <-done)
		}
		if err != nil {
			t.Errorf("child process %s: %v", cmd, err)
		}
	})
	return &Child{In: in, Out: out}
}

// Buffer is a bytes.Buffer that concurrent writers (a child process's
// standard output and error, a logger) may share with a reader.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
