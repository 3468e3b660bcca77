package classifier

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// captureClientHello returns the bytes crypto/tls sends first as a client
// with cfg, captured on a loopback listener.
func captureClientHello(tb testing.TB, cfg *tls.Config) []byte {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		// One record: crypto/tls sends the ClientHello in a single record.
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			got <- nil
			return
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(c, body); err != nil {
			got <- nil
			return
		}
		got <- append(hdr[:], body...)
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, cfg)
	go func() {
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		tc.Handshake() // fails once the listener closes
	}()
	hello := <-got
	if hello == nil {
		tb.Fatal("no ClientHello captured")
	}
	return hello
}

// helloFor captures a ClientHello for serverName ("" or an IP: no SNI).
func helloFor(tb testing.TB, serverName string) []byte {
	return captureClientHello(tb, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
}

// reframe splits the handshake message of a single-record hello into
// records at the given offsets of the message.
func reframe(hello []byte, cuts ...int) []byte {
	msg := hello[5:]
	var out []byte
	prev := 0
	for _, c := range append(cuts, len(msg)) {
		out = append(out, 22, 3, 1, byte((c-prev)>>8), byte(c-prev))
		out = append(out, msg[prev:c]...)
		prev = c
	}
	return out
}

// synthHello builds a minimal ClientHello record with the given extensions
// block (nil: none at all).
func synthHello(exts []byte) []byte {
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // session id
	body = append(body, 0, 2, 0x13, 0x01)    // cipher suites
	body = append(body, 1, 0)                // compression
	if exts != nil {
		body = binary.BigEndian.AppendUint16(body, uint16(len(exts)))
		body = append(body, exts...)
	}
	msg := append([]byte{1, 0, byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{22, 3, 1, byte(len(msg) >> 8), byte(len(msg))}, msg...)
}

// sniExt builds a server_name extension with the given host_name entries.
func sniExt(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(list, 0)
		list = binary.BigEndian.AppendUint16(list, uint16(len(n)))
		list = append(list, n...)
	}
	ext := []byte{0, 0}
	ext = binary.BigEndian.AppendUint16(ext, uint16(len(list)+2))
	ext = binary.BigEndian.AppendUint16(ext, uint16(len(list)))
	return append(ext, list...)
}

func TestSNI(t *testing.T) {
	real := helloFor(t, "a.example")
	upper := bytes.Replace(real, []byte("a.example"), []byte("A.ExAmPlE"), 1)
	alpn := captureClientHello(t, &tls.Config{ServerName: "b.example", NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true, MaxVersion: tls.VersionTLS12})
	other := []byte{0, 42, 0, 0} // an unknown, empty extension
	tests := []struct {
		name string
		in   []byte
		key  string
		err  error
	}{
		{"crypto/tls", real, "a.example", nil},
		{"crypto/tls TLS 1.2 with ALPN", alpn, "b.example", nil},
		{"uppercase", upper, "a.example", nil},
		{"two records", reframe(real, 100), "a.example", nil},
		{"three records", reframe(real, 2, 300), "a.example", nil},
		{"header split", reframe(real, 1, 3), "a.example", nil},
		{"bytes after the hello", append(bytes.Clone(real), 23, 3, 3, 0, 1, 0), "a.example", nil},
		{"no SNI", helloFor(t, ""), "", ErrNoMatch},
		{"IP server name", helloFor(t, "127.0.0.1"), "", ErrNoMatch},
		{"trailing dot", synthHello(sniExt("c.example.")), "c.example", nil},
		{"other extensions first", synthHello(append(other, sniExt("d.example")...)), "d.example", nil},
		{"no extensions", synthHello(nil), "", ErrNoMatch},
		{"empty extensions", synthHello([]byte{}), "", ErrNoMatch},
		{"two host names", synthHello(sniExt("a.example", "b.example")), "", ErrMalformed},
		{"empty name", synthHello(sniExt("")), "", ErrMalformed},
		{"just a dot", synthHello(sniExt(".")), "", ErrMalformed},
		{"space in name", synthHello(sniExt("a b")), "", ErrMalformed},
		{"quote in name", synthHello(sniExt(`a"b`)), "", ErrMalformed},
		{"truncated", real[:len(real)/2], "", ErrNeedMore},
		{"empty", nil, "", ErrNeedMore},
		{"HTTP", []byte("GET / HTTP/1.1\r\n"), "", ErrMalformed},
		{"first byte", []byte{'G'}, "", ErrMalformed},
		{"SSLv2", []byte{0x80, 0x2e, 0x01}, "", ErrMalformed},
		{"bad version", []byte{22, 9}, "", ErrMalformed},
		{"zero-length record", []byte{22, 3, 1, 0, 0}, "", ErrMalformed},
		{"server hello", []byte{22, 3, 3, 0, 10, 2}, "", ErrMalformed},
		{"alert between records", append(reframe(real, 10)[:15], 21, 3, 3, 0, 2), "", ErrMalformed},
		{"inner length short", shortenInner(real), "", ErrMalformed},
		{"too long", []byte{22, 3, 1, 0x40, 0x00, 1, 0x01, 0x00, 0x00}, "", ErrTooLong},
	}
	p := sniParser{max: 16384}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := p.Parse(tt.in)
			if key != tt.key || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("Parse = %q, %v; want %q, %v", key, err, tt.key, tt.err)
			}
		})
	}
}

// shortenInner makes the extensions block of a single-record hello claim one
// byte less than it holds.
func shortenInner(hello []byte) []byte {
	h := bytes.Clone(hello)
	b := h[5+4:]
	off := 2 + 32
	off += 1 + int(b[off])
	off += 2 + int(binary.BigEndian.Uint16(b[off:]))
	off += 1 + int(b[off])
	binary.BigEndian.PutUint16(b[off:], binary.BigEndian.Uint16(b[off:])-1)
	return h
}

// TestSNIEverySplit feeds real hellos, framed as one to three records, one
// more byte at a time: every proper prefix needs more, and the whole yields
// the key.
func TestSNIEverySplit(t *testing.T) {
	real := helloFor(t, "split.example")
	for _, in := range [][]byte{real, reframe(real, 7), reframe(real, 1, 250), reframe(real, 3, 4, len(real)-6)} {
		p := sniParser{max: 16384}
		for k := 0; k < len(in); k++ {
			if key, err := p.Parse(in[:k]); err != ErrNeedMore {
				t.Fatalf("prefix of %d/%d bytes: Parse = %q, %v; want ErrNeedMore", k, len(in), key, err)
			}
		}
		if key, err := p.Parse(in); key != "split.example" || err != nil {
			t.Fatalf("Parse = %q, %v", key, err)
		}
	}
}

func BenchmarkSNI(b *testing.B) {
	hello := helloFor(b, "bench.example")
	b.Run("one record", func(b *testing.B) { benchParser(b, sniParser{max: 16384}, hello) })
	b.Run("two records", func(b *testing.B) { benchParser(b, sniParser{max: 16384}, reframe(hello, 200)) })
}

func benchParser(b *testing.B, p Parser, in []byte) {
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if _, err := p.Parse(in); err != nil {
			b.Fatal(err)
		}
	}
}
