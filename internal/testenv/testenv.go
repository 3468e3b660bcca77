// Package testenv decides whether a test may skip. Every skip in the
// repository goes through Skip: outside CI it skips with the reason, and
// under CI=true it fails with it, because a test that CI does not run
// proves nothing.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
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
