package e2e

import (
	"debug/buildinfo"
	"fmt"
	"os"
	"testing"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// handoffBin is the handoff binary under test, built with -race by TestMain:
// a data race in the daemon ends the scenario that met it with a failure.
var handoffBin string

// TestMain builds the binary once for every scenario; started by
// startBackendProc it is a backend process instead (runBackendProcess).
func TestMain(m *testing.M) {
	if addr := os.Getenv(backendEnvAddr); addr != "" {
		os.Exit(runBackendProcess(addr, os.Getenv(backendEnvName)))
	}
	var err error
	if handoffBin, err = testenv.HandoffBinary(true); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	testenv.RemoveBinaries()
	os.Exit(code)
}

// TestBinaryIsRaceBuilt: the daemon the scenarios run carries the race
// detector, so a data race it meets fails the scenario (see launch).
func TestBinaryIsRaceBuilt(t *testing.T) {
	info, err := buildinfo.ReadFile(handoffBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range info.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return
		}
	}
	t.Fatalf("%s was built without -race: %v", handoffBin, info.Settings)
}
