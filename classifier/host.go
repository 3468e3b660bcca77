package classifier

import (
	"fmt"

	"github.com/handoff-lb/handoff/internal/hostname"
)

// malformed returns an error wrapping ErrMalformed.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// hostKey turns a server name into a key (hostname.Key); a bad name is
// ErrMalformed.
func hostKey(b []byte) (string, error) {
	k, err := hostname.Key(b)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return k, nil
}
