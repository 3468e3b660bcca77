package proxy

import "sync/atomic"

// Limiter bounds the connections a service proxies at once (max_connections).
// It never blocks: past the limit, TryAcquire fails at once and the caller
// refuses the connection. Its counters feed metrics. The zero value has no
// limit. A Limiter is safe for concurrent use.
type Limiter struct {
	max     atomic.Int64
	active  atomic.Int64
	refused atomic.Uint64
}

// NewLimiter returns a Limiter admitting max connections at once; max <= 0
// means no limit.
func NewLimiter(max int) *Limiter {
	l := &Limiter{}
	l.SetMax(max)
	return l
}

// SetMax changes the limit (a reload); max <= 0 means no limit. Connections
// already admitted stay, even above a lowered limit.
func (l *Limiter) SetMax(max int) { l.max.Store(int64(max)) }

// TryAcquire admits one connection, or counts a refusal and returns false
// when max connections are active. Each successful TryAcquire must be paired
// with one Release.
func (l *Limiter) TryAcquire() bool {
	for {
		n, max := l.active.Load(), l.max.Load()
		if max > 0 && n >= max {
			l.refused.Add(1)
			return false
		}
		if l.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release ends a connection admitted by TryAcquire.
func (l *Limiter) Release() {
	if l.active.Add(-1) < 0 {
		panic("proxy: Limiter.Release without TryAcquire")
	}
}

// Active returns how many connections are admitted now.
func (l *Limiter) Active() int64 { return l.active.Load() }

// Refused returns how many connections TryAcquire refused since the Limiter
// was made.
func (l *Limiter) Refused() uint64 { return l.refused.Load() }
