package fallback

import (
	"bytes"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// FuzzLoadAffinity feeds arbitrary bytes to the affinity table's state
// file decoder: it refuses them, or returns pins that, written the way a
// save writes them, decode to the same pins (expiries to the nanosecond
// of the wall clock the file uses).
func FuzzLoadAffinity(f *testing.F) {
	f.Add([]byte(`{"version":1,"saved_at":"2026-01-02T03:04:05Z","pins":[{"service":"web","backend":"be1","client":"198.18.0.9","key":"station-7","expires":"2999-01-01T00:00:00Z"},{"service":"web","backend":"be2","client":"2001:2::1"}]}`))
	f.Add([]byte(`{"version":1,"pins":[{"service":"web","backend":"be1","client":"::ffff:198.18.0.9","key":"\u0000\"\\"}]}`))
	f.Add([]byte(`{"version":1,"pins":[{"service":"","backend":"be1","client":"198.18.0.9"}]}`))
	f.Add([]byte(`{"version":1,"pins":[]} trailing`))
	f.Add([]byte(`{"version":2}`))
	l := logrus.New()
	l.SetLevel(logrus.PanicLevel)
	d, err := New(Options{Logger: logrus.NewEntry(l)})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { d.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, _, err := d.decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		wall := d.now()
		clock := wallClock{wall: wall, since: int64(wall.Sub(d.base))}
		var b bytes.Buffer
		b.WriteString(`{"version":1,"pins":[`)
		for i, r := range recs {
			if !r.client.IsValid() || r.client.Is4In6() || r.service == "" || r.backend == "" {
				t.Fatalf("decoded an invalid pin: %+v", r)
			}
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(appendPin(nil, r, clock))
		}
		b.WriteString("]}")
		again, _, err := d.decode(bytes.NewReader(b.Bytes()))
		if err != nil {
			t.Fatalf("the table as a save writes it does not decode: %v\n%s", err, b.Bytes())
		}
		if len(again) > len(recs) {
			t.Fatalf("%d pins became %d", len(recs), len(again))
		}
		// Pins may expire between the two decodes; the others are equal.
		j := 0
		for _, r := range recs {
			if j < len(again) && again[j].client == r.client && again[j].service == r.service {
				a := again[j]
				if a.backend != r.backend || a.key != r.key || (a.expires == never) != (r.expires == never) ||
					(r.expires != never && time.Duration(a.expires-r.expires).Abs() > time.Microsecond) {
					t.Fatalf("pin %+v came back as %+v", r, a)
				}
				j++
			}
		}
		if j != len(again) {
			t.Fatalf("%d of %d pins came back in order", j, len(again))
		}
	})
}
