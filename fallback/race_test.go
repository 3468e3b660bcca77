//go:build linux && race

package fallback_test

const raceEnabled = true
