//go:build race && unix

package healthcheck

const raceEnabled = true
