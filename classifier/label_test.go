package classifier

import (
	"math/rand/v2"
	"testing"

	"github.com/handoff-lb/handoff/config"
)

// TestLabelKeyRoundTrip: LabelKey gives back every key Label did not have
// to cut, whatever its bytes, and refuses labels Label does not write.
func TestLabelKeyRoundTrip(t *testing.T) {
	keys := []string{"", "a.example", "station 7", "müller", `a"b\c`, "\x00\xff", "x=y", `\x41`}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(60))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		keys = append(keys, string(b))
	}
	for _, k := range keys {
		for _, c := range []config.Classify{config.ClassifyPayload, config.ClassifySNI, config.ClassifyHTTPHost} {
			l := Label(c, k)
			got, ok := LabelKey(l)
			if !ok || got != k {
				t.Fatalf("LabelKey(Label(%s, %q) = %q) = %q, %v", c, k, l, got, ok)
			}
		}
	}
	for _, l := range []string{"manual", `payload=\x4`, `payload=\y41`, `payload=\xzz`, `payload=a\`} {
		if k, ok := LabelKey(l); ok {
			t.Errorf("LabelKey(%q) = %q, true; want not Label's form", l, k)
		}
	}
}
