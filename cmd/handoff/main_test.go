package main

import (
	"os"
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

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBinaries()
	os.Exit(code)
}
