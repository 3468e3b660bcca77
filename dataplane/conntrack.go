package dataplane

// Conntrack is how full a network namespace's connection tracking table
// is. When it is full the kernel drops the packets that would open new
// connections, health checks' among them.
type Conntrack struct {
	Count int // entries now (per namespace)
	Max   int // the limit (nf_conntrack_max)
}

// Fill is Count/Max, or 0 when Max is unknown.
func (c Conntrack) Fill() float64 {
	if c.Max <= 0 {
		return 0
	}
	return float64(c.Count) / float64(c.Max)
}

// Fills of a conntrack table: from ConntrackNearFull it is reported (a
// warning, `handoff doctor`); from ConntrackFull new connections may be
// dropped, so failed health checks say nothing about the backends.
const (
	ConntrackNearFull = 0.90
	ConntrackFull     = 0.95
)
