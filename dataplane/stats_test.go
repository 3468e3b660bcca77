package dataplane

import (
	"errors"
	"testing"
	"time"
)

func TestSyncRecorder(t *testing.T) {
	var r SyncRecorder
	if st := r.Stats(); st.Syncs != 0 || len(st.Counts) != len(SyncBuckets) {
		t.Fatalf("zero: %+v", st)
	}
	r.Record(3*time.Millisecond, nil)
	r.Record(2*time.Second, errors.New("iptables-restore: exit 1"))
	r.Repaired(2)
	st := r.Stats()
	if st.Syncs != 2 || st.Failures != 1 || st.Repairs != 2 || st.LastErr != "iptables-restore: exit 1" || st.LastOK.IsZero() {
		t.Errorf("%+v", st)
	}
	if st.Seconds < 2.003 || st.Seconds > 2.0031 {
		t.Errorf("seconds %v", st.Seconds)
	}
	// Cumulative: 3 ms falls in every bucket from 5 ms on, 2 s from 2.5 s on.
	for i, b := range SyncBuckets {
		want := uint64(0)
		if b >= .005 {
			want++
		}
		if b >= 2.5 {
			want++
		}
		if st.Counts[i] != want {
			t.Errorf("bucket %v: %d, want %d", b, st.Counts[i], want)
		}
	}
}
