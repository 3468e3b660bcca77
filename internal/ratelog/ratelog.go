// Package ratelog bounds the log lines that clients can trigger: a flood of
// connections must not become a flood of lines. A Limiter lets a burst of
// lines through, then one per interval, and the next line it lets through
// says how many it held back.
package ratelog

import (
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// Defaults of the limiters on the per-connection paths: ten lines at once,
// then one a second.
const (
	DefaultEvery = time.Second
	DefaultBurst = 10
)

// Limiter decides whether one more line of its kind is logged. The zero
// value is not usable; a nil *Limiter lets every line through. It is safe
// for concurrent use.
type Limiter struct {
	lim        *rate.Limiter
	suppressed atomic.Uint64
}

// New returns a Limiter that lets burst lines through at once and one
// every interval after that.
func New(every time.Duration, burst int) *Limiter {
	return &Limiter{lim: rate.NewLimiter(rate.Every(every), burst)}
}

// Default returns a Limiter with DefaultEvery and DefaultBurst.
func Default() *Limiter { return New(DefaultEvery, DefaultBurst) }

// Allow reports whether a line may be logged now, and how many lines were
// held back since the last one let through. A line held back is counted.
func (l *Limiter) Allow() (suppressed uint64, ok bool) {
	if l == nil {
		return 0, true
	}
	if !l.lim.Allow() {
		l.suppressed.Add(1)
		return 0, false
	}
	return l.suppressed.Swap(0), true
}

// Entry returns e, with the field "suppressed" when lines were held back,
// when a line may be logged now, else nil. e is called only then, so a
// caller that builds its entry lazily pays nothing for a dropped line.
func (l *Limiter) Entry(e func() *logrus.Entry) *logrus.Entry {
	n, ok := l.Allow()
	if !ok {
		return nil
	}
	if n > 0 {
		return e().WithField("suppressed", n)
	}
	return e()
}

// Suppressed returns how many lines are held back and not yet reported.
func (l *Limiter) Suppressed() uint64 {
	if l == nil {
		return 0
	}
	return l.suppressed.Load()
}
