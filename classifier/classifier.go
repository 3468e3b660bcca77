// Package classifier decides which backend a new client belongs to.
//
// It has two halves. Key extraction peeks at the first bytes a client sends
// (a payload pattern, the TLS SNI, the HTTP Host) through a [Parser], driven
// by [Read]; with classify: source the key is the client's address. Routing
// turns a key into a pool ([Router.Route]) and a pool's policy turns it into
// a backend ([Pool.Pick]), honouring a [View] of which backends are usable.
// [Router.Decide] does both and returns a [Decision].
//
// The package does no I/O beyond reading the client's first bytes: it never
// writes to a connection, dials a backend or touches the kernel. Everything
// here is safe for concurrent use unless stated otherwise.
package classifier

import (
	"context"
	"errors"
	"os"
)

// Reasons a key could not be read. Every error returned by [Read] and
// [Router.Classify] wraps exactly one of them (or the context's error), and
// [Reason] turns it into a short label for metrics.
var (
	// ErrNeedMore is returned by a [Parser] when more bytes could complete
	// the key. Read never returns it.
	ErrNeedMore = errors.New("need more bytes")
	// ErrNoMatch means the bytes are well formed but hold no key: no SNI in
	// the ClientHello, no Host header, no match of the payload pattern.
	ErrNoMatch = errors.New("no key in the client's first bytes")
	// ErrMalformed means the bytes are not the expected protocol, and no
	// further byte will make them so.
	ErrMalformed = errors.New("malformed client bytes")
	// ErrTooLong means max_bytes were read without a decision.
	ErrTooLong = errors.New("no key within max_bytes")
	// ErrTimeout means the client sent too little before the timeout.
	ErrTimeout = errors.New("timed out waiting for the client's first bytes")
	// ErrClosed means the client closed (or reset) the connection before a
	// key was found.
	ErrClosed = errors.New("client closed before sending a key")
)

// Routing errors.
var (
	// ErrNoRoute means no route matched and the service has no pool named
	// "default"; the balancer applies on_unclassified.
	ErrNoRoute = errors.New("no route matches and no default pool")
	// ErrNoBackend means the chosen pool has no usable backend.
	ErrNoBackend = errors.New("no usable backend")
)

// Reason returns a short, stable label for err, for metrics and logs:
// "no_match", "malformed", "too_long", "timeout" (also a passed context
// deadline), "closed", "canceled",
// "no_route", "no_backend", "" for nil, and "error" for anything else.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrNoMatch):
		return "no_match"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrTooLong):
		return "too_long"
	case errors.Is(err, ErrTimeout), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, ErrNoRoute):
		return "no_route"
	case errors.Is(err, ErrNoBackend):
		return "no_backend"
	}
	return "error"
}
