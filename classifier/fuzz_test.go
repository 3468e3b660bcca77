package classifier

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/config"
)

// checkParser checks the Parser contract on data: no panic; a key is
// non-empty and has a printable label; errors are of the documented kinds;
// and the answer does not depend on how data is split into reads (every
// prefix needs more until the first decision, which is the answer for the
// whole data, and stays so).
func checkParser(t *testing.T, kind config.Classify, p Parser, data []byte) {
	key, err := p.Parse(data)
	checkResult(t, kind, key, err)
	decided := -1
	for k := 0; k <= len(data); k++ {
		kk, kerr := p.Parse(data[:k])
		if kerr == ErrNeedMore {
			if decided >= 0 {
				t.Fatalf("prefix %d needs more after prefix %d decided", k, decided)
			}
			continue
		}
		if decided < 0 {
			decided = k
		}
		if kk != key || Reason(kerr) != Reason(err) || (kerr == nil) != (err == nil) {
			t.Fatalf("prefix %d/%d = %q, %v; whole = %q, %v", k, len(data), kk, kerr, key, err)
		}
	}
}

func checkResult(t *testing.T, kind config.Classify, key string, err error) {
	if err == nil {
		if key == "" {
			t.Fatal("empty key without error")
		}
		l := Label(kind, key)
		if len(l) > MaxLabelLen || strings.Contains(l, `"`) {
			t.Fatalf("label %q", l)
		}
		for i := 0; i < len(l); i++ {
			if l[i] <= ' ' || l[i] >= 0x7f {
				t.Fatalf("label %q: byte %#x", l, l[i])
			}
		}
		return
	}
	if key != "" {
		t.Fatalf("key %q with error %v", key, err)
	}
	switch Reason(err) {
	case "no_match", "malformed", "too_long":
	default:
		if err != ErrNeedMore {
			t.Fatalf("error %v of reason %q", err, Reason(err))
		}
	}
}

func FuzzSNI(f *testing.F) {
	f.Add(synthHello(sniExt("seed.example")))
	f.Add(synthHello(nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParser(t, config.ClassifySNI, sniParser{max: config.DefaultPeekMaxBytes}, data)
	})
}

func FuzzHTTPHost(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: seed.example\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkParser(t, config.ClassifyHTTPHost, httpHostParser{}, data)
	})
}

// FuzzPayload checks the streaming matcher against package regexp: a
// decision taken on some bytes is what regexp finds in them and in longer
// data, and at max_bytes the answer is regexp's over the first max_bytes.
func FuzzPayload(f *testing.F) {
	f.Add(`^HELLO station=(\w+)`, uint16(512), []byte("HELLO station=7\n"))
	f.Fuzz(func(t *testing.T, pattern string, max uint16, data []byte) {
		if len(pattern) > 64 || len(data) > 1024 {
			return
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			return
		}
		if sre, err := syntax.Parse(pattern, syntax.Perl); err != nil {
			return
		} else if prog, err := syntax.Compile(sre.Simplify()); err != nil || len(prog.Inst) > 500 {
			return
		}
		maxBytes := 1 + int(max)%600
		p, err := NewParser(config.ClassifyPayload, config.Payload{Pattern: re, MaxBytes: maxBytes})
		if err != nil {
			t.Fatal(err)
		}
		checkParser(t, config.ClassifyPayload, p, data)

		want := func(d []byte) (string, bool) {
			m := re.FindSubmatchIndex(d)
			if m == nil {
				return "", false
			}
			lo, hi := m[0], m[1]
			if len(m) > 2 {
				lo, hi = m[2], m[3]
			}
			if lo < 0 || hi <= lo {
				return "", false
			}
			return string(d[lo:hi]), true
		}
		key, err := p.Parse(data)
		if len(data) >= maxBytes {
			wk, ok := want(data[:maxBytes])
			if key != wk || (err == nil) != ok || err != nil && Reason(err) != "too_long" && Reason(err) != "no_match" {
				t.Fatalf("at max_bytes: Parse = %q, %v; regexp %q, %v", key, err, wk, ok)
			}
			return
		}
		if err == ErrNeedMore {
			return
		}
		for _, tail := range []string{"", "\n", "a", " z", "\x00\xff", "é", "\r\nHELLO station=1\n"} {
			d := append(append([]byte(nil), data...), tail...)
			wk, ok := want(d)
			if key != wk || (err == nil) != ok {
				t.Fatalf("decided %q, %v on %q; regexp finds %q, %v in %q", key, err, data, wk, ok, d)
			}
		}
	})
}

// TestWriteFuzzCorpus checks the committed seed corpora under
// testdata/fuzz against what it generates from real ClientHellos and
// requests: the same files, with the same argument types (a ClientHello's
// random bytes differ from run to run). With HANDOFF_WRITE_FUZZ_CORPUS=1 it
// regenerates them instead.
func TestWriteFuzzCorpus(t *testing.T) {
	root, regenerate := t.TempDir(), os.Getenv("HANDOFF_WRITE_FUZZ_CORPUS") == "1"
	if regenerate {
		root = filepath.Join("testdata", "fuzz")
	}
	var written []string
	write := func(fuzz, name string, args ...any) {
		var b strings.Builder
		b.WriteString("go test fuzz v1\n")
		for _, a := range args {
			switch a := a.(type) {
			case []byte:
				fmt.Fprintf(&b, "[]byte(%q)\n", a)
			case string:
				fmt.Fprintf(&b, "string(%q)\n", a)
			case uint16:
				fmt.Fprintf(&b, "uint16(%d)\n", a)
			}
		}
		dir := filepath.Join(root, fuzz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		written = append(written, filepath.Join(fuzz, name))
	}
	tls13 := helloFor(t, "a.example")
	write("FuzzSNI", "tls13", tls13)
	write("FuzzSNI", "tls12-alpn", captureClientHello(t, &tls.Config{ServerName: "b.example", NextProtos: []string{"h2"}, MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true}))
	write("FuzzSNI", "no-sni", helloFor(t, ""))
	write("FuzzSNI", "two-records", reframe(tls13, 100))
	write("FuzzSNI", "three-records", reframe(tls13, 1, 3))
	write("FuzzSNI", "synthetic-trailing-dot", synthHello(sniExt("C.Example.")))
	write("FuzzSNI", "truncated", tls13[:200])
	write("FuzzSNI", "http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))

	write("FuzzHTTPHost", "plain", []byte("GET / HTTP/1.1\r\nHost: b.example:8080\r\nAccept: */*\r\n\r\n"))
	write("FuzzHTTPHost", "ipv6", []byte("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"))
	write("FuzzHTTPHost", "http10", []byte("GET / HTTP/1.0\r\n\r\n"))
	write("FuzzHTTPHost", "absolute", []byte("GET http://u@E.example:81/p HTTP/1.1\r\nHost: other\r\n\r\n"))
	write("FuzzHTTPHost", "connect", []byte("CONNECT g.example:443 HTTP/1.1\r\n\r\n"))
	write("FuzzHTTPHost", "folded", []byte("GET / HTTP/1.1\nX: 1\n 2\nhost: F.example.\n\n"))
	write("FuzzHTTPHost", "tls", tls13)

	write("FuzzPayload", "station", `^HELLO station=(\w+)`, uint16(512), []byte("HELLO station=station-7\r\n"))
	write("FuzzPayload", "unanchored", `id=([a-z]+);`, uint16(64), []byte("xx id=abc; yy"))
	write("FuzzPayload", "leftmost", `a.*z|b`, uint16(100), []byte("ab\nz"))
	write("FuzzPayload", "multiline", `(?m)^key=(\w+)$`, uint16(100), []byte("junk\nkey=v\nx"))
	write("FuzzPayload", "boundary", `\bk=(\w+)\b`, uint16(16), []byte("k=abcdefghijklmnopq"))
	write("FuzzPayload", "utf8", `(?i)^name=(\pL+)\s`, uint16(100), []byte("name=Élan\xc3\xa9 "))
	write("FuzzPayload", "binary", `^\x00\x01(..)`, uint16(8), []byte("\x00\x01\xff\xfe"))
	write("FuzzPayload", "lazy", `<(.+?)>`, uint16(32), []byte("..<a>b>"))
	if !regenerate {
		checkCorpus(t, root, written)
	}
}

// checkCorpus compares the generated corpus files (paths under generated)
// with the committed ones under testdata/fuzz: each must be there, with the
// same argument types line by line.
func checkCorpus(t *testing.T, generated string, files []string) {
	t.Helper()
	types := func(b []byte) []string {
		var out []string
		for _, l := range strings.Split(string(b), "\n") {
			typ, _, _ := strings.Cut(l, "(")
			out = append(out, typ)
		}
		return out
	}
	for _, f := range files {
		want, err := os.ReadFile(filepath.Join(generated, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("testdata", "fuzz", f))
		if err != nil {
			t.Errorf("seed %s: %v (regenerate: HANDOFF_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus)", f, err)
			continue
		}
		if g, w := types(got), types(want); !slices.Equal(g, w) {
			t.Errorf("seed %s has arguments %q, the generator writes %q (regenerate: HANDOFF_WRITE_FUZZ_CORPUS=1 go test -run TestWriteFuzzCorpus)", f, g, w)
		}
	}
}
