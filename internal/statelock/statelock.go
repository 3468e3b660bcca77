// Package statelock makes a state directory one daemon's: the first
// `handoff run` takes an exclusive lock on <dir>/handoff.lock and writes
// its PID there; a second one is refused with that PID. The operating
// system releases the lock when the holder exits, however it exits.
package statelock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// File is the lock file's name in the state directory.
const File = "handoff.lock"

// ErrLocked says that another process holds the lock; the error's text
// names its PID.
var ErrLocked = errors.New("another handoff runs with this state_dir")

// Lock takes the lock of dir (creating dir when missing) and returns the
// function that releases it.
func Lock(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state_dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, File)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state_dir lock %s: %w", path, err)
	}
	if err := lock(f); err != nil {
		pid := "unknown"
		if b, rerr := os.ReadFile(path); rerr == nil && strings.TrimSpace(string(b)) != "" {
			pid = strings.TrimSpace(string(b))
		}
		f.Close()
		if errors.Is(err, errWouldBlock) {
			return nil, fmt.Errorf("%w %s (PID %s)", ErrLocked, dir, pid)
		}
		return nil, fmt.Errorf("state_dir lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() { f.Close() }, nil
}
