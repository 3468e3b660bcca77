package classifier

import (
	"errors"
	"testing"
)

func TestHTTPHost(t *testing.T) {
	tests := []struct {
		name string
		in   string
		key  string
		err  error
	}{
		{"plain", "GET / HTTP/1.1\r\nHost: b.example\r\n\r\n", "b.example", nil},
		{"port", "GET / HTTP/1.1\r\nHost: b.example:8080\r\nAccept: */*\r\n\r\n", "b.example", nil},
		{"case", "GET / HTTP/1.1\r\nhOsT: B.Example\r\n\r\n", "b.example", nil},
		{"trailing dot", "GET / HTTP/1.1\r\nHost: b.example.:80\r\n\r\n", "b.example", nil},
		{"spaces around value", "GET / HTTP/1.1\r\nHost: \t b.example \t\r\n\r\n", "b.example", nil},
		{"after other headers", "POST /x HTTP/1.1\r\nUser-Agent: t\r\nX-A: 1\r\nHost: c.example\r\n\r\n", "c.example", nil},
		{"bare LF", "GET / HTTP/1.1\nHost: b.example\n\n", "b.example", nil},
		{"leading empty line", "\r\nGET / HTTP/1.1\r\nHost: b.example\r\n\r\n", "b.example", nil},
		{"IPv6 with port", "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "::1", nil},
		{"IPv6 without port", "GET / HTTP/1.1\r\nHost: [2001:DB8::0001]\r\n\r\n", "2001:db8::1", nil},
		{"IPv4", "GET / HTTP/1.1\r\nHost: 198.18.0.1:80\r\n\r\n", "198.18.0.1", nil},
		{"HTTP/1.0 with Host", "GET / HTTP/1.0\r\nHost: d.example\r\n\r\n", "d.example", nil},
		{"absolute form", "GET http://E.example:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n", "e.example", nil},
		{"absolute form https userinfo", "GET https://u:p@f.example/ HTTP/1.1\r\n", "f.example", nil},
		{"CONNECT", "CONNECT g.example:443 HTTP/1.1\r\n", "g.example", nil},
		{"folded other header", "GET / HTTP/1.1\r\nX-A: 1\r\n  2\r\nHost: b.example\r\n\r\n", "b.example", nil},

		{"HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", "", ErrNoMatch},
		{"HTTP/1.1 without Host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "", ErrNoMatch},
		{"empty Host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", "", ErrNoMatch},

		{"empty", "", "", ErrNeedMore},
		{"method only", "GET", "", ErrNeedMore},
		{"request line", "GET / HTTP/1.1\r\n", "", ErrNeedMore},
		{"half header", "GET / HTTP/1.1\r\nHo", "", ErrNeedMore},
		{"host line without CRLF", "GET / HTTP/1.1\r\nHost: b.example", "", ErrNeedMore},
		{"host line before next byte", "GET / HTTP/1.1\r\nHost: b.example\r\n", "", ErrNeedMore},
		{"CR at end", "GET / HTTP/1.1\r", "", ErrNeedMore},

		{"TLS", "\x16\x03\x01\x02\x00", "", ErrMalformed},
		{"binary", "\x00\x01", "", ErrMalformed},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "", ErrMalformed},
		{"bad version", "GET / HTTX", "", ErrMalformed},
		{"version junk", "GET / HTTP/1.1x\r\n", "", ErrMalformed},
		{"space in name", "GET / HTTP/1.1\r\nHost : b.example\r\n\r\n", "", ErrMalformed},
		{"control in value", "GET / HTTP/1.1\r\nHost: b\x01\r\n\r\n", "", ErrMalformed},
		{"folded Host", "GET / HTTP/1.1\r\nHost: b.example\r\n c\r\n\r\n", "", ErrMalformed},
		{"whitespace first", "GET / HTTP/1.1\r\n Host: b.example\r\n\r\n", "", ErrMalformed},
		{"CR without LF", "GET / HTTP/1.1\rX", "", ErrMalformed},
		{"bad port", "GET / HTTP/1.1\r\nHost: b.example:8x\r\n\r\n", "", ErrMalformed},
		{"two colons", "GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", "", ErrMalformed},
		{"bad IPv6", "GET / HTTP/1.1\r\nHost: [zz]:80\r\n\r\n", "", ErrMalformed},
		{"IPv4 in brackets", "GET / HTTP/1.1\r\nHost: [1.2.3.4]\r\n\r\n", "", ErrMalformed},
		{"unterminated bracket", "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "", ErrMalformed},
		{"quote", "GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", "", ErrMalformed},
		{"absolute form without host", "GET http:///x HTTP/1.1\r\n", "", ErrMalformed},
	}
	var p httpHostParser
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := p.Parse([]byte(tt.in))
			if key != tt.key || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("Parse(%q) = %q, %v; want %q, %v", tt.in, key, err, tt.key, tt.err)
			}
		})
	}
}

// TestHTTPHostEverySplit: the answer never depends on where reads end.
func TestHTTPHostEverySplit(t *testing.T) {
	for _, in := range []string{
		"GET /index.html HTTP/1.1\r\nUser-Agent: curl/8\r\nHost: Split.Example:8080\r\nAccept: */*\r\n\r\n",
		"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
	} {
		var p httpHostParser
		wantKey, wantErr := p.Parse([]byte(in))
		decided := false
		for k := 0; k <= len(in); k++ {
			key, err := p.Parse([]byte(in[:k]))
			if err == ErrNeedMore {
				if decided {
					t.Fatalf("%q: prefix %d needs more after a decision", in, k)
				}
				continue
			}
			decided = true
			if key != wantKey || Reason(err) != Reason(wantErr) {
				t.Fatalf("%q: prefix %d = %q, %v; whole = %q, %v", in, k, key, err, wantKey, wantErr)
			}
		}
		if !decided {
			t.Fatalf("%q: never decided", in)
		}
	}
}

func BenchmarkHTTPHost(b *testing.B) {
	req := []byte("GET /index.html HTTP/1.1\r\nHost: bench.example:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n")
	b.Run("lowercase", func(b *testing.B) { benchParser(b, httpHostParser{}, req) })
	browser := []byte("GET / HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.9\r\nAccept-Encoding: gzip, deflate\r\nCookie: a=b; c=d\r\nHost: Bench.Example\r\n\r\n")
	b.Run("host last", func(b *testing.B) { benchParser(b, httpHostParser{}, browser) })
}
