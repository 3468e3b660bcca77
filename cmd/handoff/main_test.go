package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// binary returns the handoff binary, built once per test run, with the race
// detector when the tests run with it.
func binary(t *testing.T) string {
	t.Helper()
	bin, err := testenv.HandoffBinary(testenv.Race)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// writeWebConfig writes dir/handoff.yaml: head (a mode: line, or none),
// state in dir/state, the admin API off, and service web on listen with
// health checks off, backend be1 at backend and the extra service fields.
func writeWebConfig(t *testing.T, dir, head, listen, backend string, fields ...string) string {
	t.Helper()
	var b strings.Builder
	if head != "" {
		b.WriteString(head + "\n")
	}
	b.WriteString("state_dir: " + filepath.Join(dir, "state") + "\nadmin: {listen: \"off\"}\nservices:\n  - name: web\n    listen: " + listen + "\n")
	for _, f := range fields {
		b.WriteString("    " + f + "\n")
	}
	b.WriteString("    health: {check: none}\n    backends: [{name: be1, address: " + backend + "}]\n")
	path := filepath.Join(dir, "handoff.yaml")
	write(t, path, b.String())
	return path
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBinaries()
	os.Exit(code)
}
