package dataplane

import (
	"sync"
	"time"
)

// SyncBuckets are the upper bounds, in seconds, of the sync duration
// histogram in SyncStats.
var SyncBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// SyncStats counts a data plane's syncs: each time it applies the desired
// state, asked to (Sync) or on its own (a kernel data plane's periodic
// check, which re-applies what drifted), and the drifts it repaired.
type SyncStats struct {
	Syncs    uint64    `json:"syncs"`
	Failures uint64    `json:"failures"`
	Seconds  float64   `json:"seconds"`                // total duration of the syncs
	Counts   []uint64  `json:"-"`                      // cumulative, per SyncBuckets bound
	Repairs  uint64    `json:"repairs"`                // drifts found and repaired
	LastOK   time.Time `json:"last_success,omitzero"`  // end of the last successful sync
	LastErr  string    `json:"last_error,omitempty"`   // of the last sync, when it failed
	LastTook float64   `json:"last_seconds,omitempty"` // duration of the last sync
}

// SyncRecorder keeps a SyncStats; its methods are safe for concurrent use
// and its zero value is ready.
type SyncRecorder struct {
	mu sync.Mutex
	st SyncStats
}

// Record counts one sync that took took and ended with err.
func (r *SyncRecorder) Record(took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Counts == nil {
		r.st.Counts = make([]uint64, len(SyncBuckets))
	}
	sec := took.Seconds()
	r.st.Syncs++
	r.st.Seconds += sec
	r.st.LastTook = sec
	for i, b := range SyncBuckets {
		if sec <= b {
			r.st.Counts[i]++
		}
	}
	if err != nil {
		r.st.Failures++
		r.st.LastErr = err.Error()
		return
	}
	r.st.LastErr = ""
	r.st.LastOK = time.Now()
}

// Repaired counts n drifts repaired.
func (r *SyncRecorder) Repaired(n int) {
	r.mu.Lock()
	r.st.Repairs += uint64(n)
	r.mu.Unlock()
}

// Stats returns a copy of the counts.
func (r *SyncRecorder) Stats() SyncStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.st
	st.Counts = append([]uint64(nil), r.st.Counts...)
	if st.Counts == nil {
		st.Counts = make([]uint64, len(SyncBuckets))
	}
	return st
}
