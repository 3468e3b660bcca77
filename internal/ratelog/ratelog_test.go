package ratelog

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

func TestLimiterBurstThenSuppressed(t *testing.T) {
	var buf bytes.Buffer
	lg := logrus.New()
	lg.Out = &buf
	entry := func() *logrus.Entry { return logrus.NewEntry(lg) }
	l := New(time.Hour, 3)
	for range 3000 {
		if e := l.Entry(entry); e != nil {
			e.Warn("pin failed")
		}
	}
	if n := strings.Count(buf.String(), "pin failed"); n != 3 {
		t.Fatalf("%d lines, want 3 (the burst)", n)
	}
	if got := l.Suppressed(); got != 2997 {
		t.Fatalf("suppressed %d, want 2997", got)
	}
	// The next line let through reports what was held back.
	l.lim.SetLimit(1e9)
	l.lim.SetBurst(1)
	time.Sleep(time.Millisecond)
	e := l.Entry(entry)
	if e == nil {
		t.Fatal("no line after the limit was raised")
	}
	e.Warn("again")
	if !strings.Contains(buf.String(), "suppressed=2997") {
		t.Fatalf("the line after the burst does not say how many were suppressed:\n%s", buf.String())
	}
	if l.Suppressed() != 0 {
		t.Fatalf("suppressed %d after reporting", l.Suppressed())
	}
}

func TestNilLimiterAllowsAll(t *testing.T) {
	var l *Limiter
	for range 10 {
		if _, ok := l.Allow(); !ok {
			t.Fatal("a nil limiter held a line back")
		}
	}
}
