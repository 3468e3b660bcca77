package classifier

import (
	"errors"
	"regexp"
	"testing"

	"github.com/handoff-lb/handoff/config"
)

func mustPayload(tb testing.TB, pattern string, max int) Parser {
	tb.Helper()
	p, err := NewParser(config.ClassifyPayload, config.Payload{Pattern: regexp.MustCompile(pattern), MaxBytes: max})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func TestPayload(t *testing.T) {
	const station = `^HELLO station=(\w+)`
	tests := []struct {
		name, pattern string
		max           int
		in            string
		key           string
		err           error
	}{
		{"capture group", station, 512, "HELLO station=7a\n", "7a", nil},
		{"group still growing", station, 512, "HELLO station=7a", "", ErrNeedMore},
		{"prefix of the pattern", station, 512, "HELLO sta", "", ErrNeedMore},
		{"empty", station, 512, "", "", ErrNeedMore},
		{"cannot match", station, 512, "GET / HTTP/1.1\r\n", "", ErrNoMatch},
		{"first byte cannot match", station, 512, "X", "", ErrNoMatch},
		{"whole match", `^ID:[0-9]{3}`, 512, "ID:123456", "ID:123", nil},
		{"whole match at the end", `^ID:[0-9]{3}`, 512, "ID:123", "ID:123", nil},
		{"unanchored", `id=([a-z]+);`, 512, "xxxx id=abc; yyy", "abc", nil},
		{"unanchored, no match yet", `id=([a-z]+);`, 512, "xxxx yyy", "", ErrNeedMore},
		{"leftmost-first prefers an earlier start", `a.*z|b`, 512, "ab", "", ErrNeedMore},
		{"leftmost-first decided", `a.*z|b`, 512, "ab\nz", "b", nil},
		{"alternation priority", `^(?:(abc)|(ab))`, 512, "abd", "", ErrNoMatch},
		{"lazy", `^<(.+?)>`, 512, "<a>b>", "a", nil},
		{"end of line", `(?m)^key=(\w+)$`, 512, "key=v", "", ErrNeedMore},
		{"unanchored (?m)^ needs more", `(?m)^key=(\w+)$`, 512, "key=v\r", "", ErrNeedMore},
		{"end of line seen", `\Akey=(\w+)(?m:$)`, 512, "key=v\r", "", ErrNoMatch},
		{"end of line seen LF", `(?m)^key=(\w+)$`, 512, "key=v\nrest", "v", nil},
		{"end of text never seen", `^key=(\w+)$`, 512, "key=v", "", ErrNeedMore},
		{"word boundary pending", `^k=(\w+)\b`, 512, "k=ab", "", ErrNeedMore},
		{"word boundary", `^k=(\w+)\b`, 512, "k=ab.", "ab", nil},
		{"case fold", `(?i)^hello (\w+)\n`, 512, "HeLLo Bob\n", "Bob", nil},
		{"UTF-8 split", `^name=(\PL*)(é)`, 512, "name=\xc3", "", ErrNeedMore},
		{"group could grow", `^x(\w*)y`, 512, "xy", "", ErrNeedMore},
		{"empty group", `^x(\w*)y`, 512, "xy!", "", ErrNoMatch},
		{"optional group unset", `^(a)?b`, 512, "b", "", ErrNoMatch},
		{"max bytes reached, match", station, 16, "HELLO station=abcdefgh", "ab", nil},
		{"max bytes reached, no match", `id=(\d+);`, 8, "xxxxxxxxxx", "", ErrTooLong},
		{"max bytes, end of text", `^key=(\w+)$`, 8, "key=abcd", "abcd", nil},
		{"binary", `^\x00\x01(..)`, 512, "\x00\x01\xff\xfe", "\xff\xfe", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPayload(t, tt.pattern, tt.max)
			key, err := p.Parse([]byte(tt.in))
			if key != tt.key || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("Parse(%q) = %q, %v; want %q, %v", tt.in, key, err, tt.key, tt.err)
			}
		})
	}
}

func TestPayloadNeedsPattern(t *testing.T) {
	if _, err := NewParser(config.ClassifyPayload, config.Payload{}); err == nil {
		t.Fatal("no error without a pattern")
	}
}

// TestParsersNeedMaxBytes: the built-in parsers take max_bytes from config
// and default nothing.
func TestParsersNeedMaxBytes(t *testing.T) {
	for _, c := range []config.Classify{config.ClassifyPayload, config.ClassifySNI} {
		p := config.Payload{Pattern: regexp.MustCompile(`^(x)`), Timeout: config.DefaultPayloadTimeout}
		if _, err := NewParser(c, p); err == nil {
			t.Errorf("classify %s: no error without max_bytes", c)
		}
		p.MaxBytes = config.DefaultPayload(c).MaxBytes
		if _, err := NewParser(c, p); err != nil {
			t.Errorf("classify %s: %v", c, err)
		}
	}
}

func BenchmarkPayload(b *testing.B) {
	p := mustPayload(b, `^HELLO station=(\w+)`, 512)
	benchParser(b, p, []byte("HELLO station=station-7\n"))
}
