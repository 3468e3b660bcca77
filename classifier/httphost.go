package classifier

import (
	"bytes"
	"fmt"
	"net/netip"
)

// httpHostParser implements classify: http-host. The key is the host of the
// first HTTP/1.x request: from an absolute-form request target
// ("GET http://a.example/ HTTP/1.1") or a CONNECT target when there is one,
// as RFC 9112 says, else from the Host header. The port is dropped, an IPv6
// literal loses its brackets ("[::1]:80" is "::1"), and the name is
// lowercased without a trailing dot.
//
// Bytes that cannot start an HTTP/1.x request (a TLS hello, a binary
// protocol) are rejected on the first byte that shows it. The parser waits
// for the byte after the Host line to rule out an obsolete line folding.
type httpHostParser struct{}

// tchars are the bytes of an HTTP token (RFC 9110 5.6.2).
var tchars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func (httpHostParser) Parse(d []byte) (string, error) {
	i := 0
	// RFC 9112 2.2: ignore empty lines before the request line.
	for i < len(d) && (d[i] == '\r' || d[i] == '\n') {
		j, err := lineEnd(d, i)
		if err != nil {
			return "", err
		}
		i = j
	}

	// request-line = method SP request-target SP HTTP-version CRLF
	ms := i
	for i < len(d) && tchars[d[i]] {
		i++
	}
	if i == len(d) {
		return "", ErrNeedMore
	}
	if d[i] != ' ' || i == ms {
		return "", malformed("not an HTTP request: byte %#x in method", d[i])
	}
	method := d[ms:i]
	i++
	ts := i
	for i < len(d) && d[i] > ' ' && d[i] < 0x7f {
		i++
	}
	if i == len(d) {
		return "", ErrNeedMore
	}
	if d[i] != ' ' || i == ts {
		return "", malformed("not an HTTP request: byte %#x in request target", d[i])
	}
	target := d[ts:i]
	i++
	const version = "HTTP/1."
	for k := 0; k < len(version); k, i = k+1, i+1 {
		if i == len(d) {
			return "", ErrNeedMore
		}
		if d[i] != version[k] {
			return "", malformed("not an HTTP/1.x request")
		}
	}
	if i == len(d) {
		return "", ErrNeedMore
	}
	if d[i] < '0' || d[i] > '9' {
		return "", malformed("not an HTTP/1.x request")
	}
	i, err := lineEnd(d, i+1)
	if err != nil {
		return "", err
	}

	if authority, ok, err := targetAuthority(method, target); err != nil || ok {
		if err != nil {
			return "", err
		}
		return hostOf(authority)
	}

	// Header fields, up to the empty line.
	for first := true; ; first = false {
		if i == len(d) {
			return "", ErrNeedMore
		}
		switch d[i] {
		case '\r', '\n':
			if _, err := lineEnd(d, i); err != nil {
				return "", err
			}
			return "", fmt.Errorf("%w: request has no Host header", ErrNoMatch)
		case ' ', '\t':
			// obs-fold: a continuation of the previous field's value.
			if first {
				return "", malformed("whitespace before the first header field")
			}
			_, end, err := fieldValue(d, i)
			if err != nil {
				return "", err
			}
			i = end
			continue
		}
		ns := i
		for i < len(d) && tchars[d[i]] {
			i++
		}
		if i == len(d) {
			return "", ErrNeedMore
		}
		if d[i] != ':' || i == ns {
			return "", malformed("byte %#x in header field name", d[i])
		}
		name := d[ns:i]
		value, end, err := fieldValue(d, i+1)
		if err != nil {
			return "", err
		}
		i = end
		if len(name) == 4 && bytes.EqualFold(name, []byte("host")) {
			if i == len(d) {
				return "", ErrNeedMore
			}
			if d[i] == ' ' || d[i] == '\t' {
				return "", malformed("folded Host header")
			}
			return hostOf(bytes.Trim(value, " \t"))
		}
	}
}

// lineEnd returns the index after the CRLF (or bare LF) at d[i].
func lineEnd(d []byte, i int) (int, error) {
	switch {
	case i == len(d):
		return 0, ErrNeedMore
	case d[i] == '\n':
		return i + 1, nil
	case d[i] != '\r':
		return 0, malformed("byte %#x before end of line", d[i])
	case i+1 == len(d):
		return 0, ErrNeedMore
	case d[i+1] != '\n':
		return 0, malformed("CR without LF")
	}
	return i + 2, nil
}

// fieldValue returns the field value starting at d[i] and the index after
// its line.
func fieldValue(d []byte, i int) (value []byte, next int, err error) {
	vs := i
	for ; i < len(d) && d[i] != '\r' && d[i] != '\n'; i++ {
		if c := d[i]; c < ' ' && c != '\t' || c == 0x7f {
			return nil, 0, malformed("control byte %#x in header field", c)
		}
	}
	next, err = lineEnd(d, i)
	if err != nil {
		return nil, 0, err
	}
	return d[vs:i], next, nil
}

// targetAuthority returns the authority of an absolute-form
// ("http://host:port/path") or authority-form (CONNECT host:port) target.
func targetAuthority(method, target []byte) (authority []byte, ok bool, err error) {
	if string(method) == "CONNECT" {
		return target, true, nil
	}
	rest, ok := cutPrefixFold(target, "http://")
	if !ok {
		if rest, ok = cutPrefixFold(target, "https://"); !ok {
			return nil, false, nil
		}
	}
	if end := bytes.IndexAny(rest, "/?#"); end >= 0 {
		rest = rest[:end]
	}
	if at := bytes.LastIndexByte(rest, '@'); at >= 0 {
		rest = rest[at+1:] // userinfo
	}
	if len(rest) == 0 {
		return nil, false, malformed("request target %q has no host", target)
	}
	return rest, true, nil
}

func cutPrefixFold(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || !bytes.EqualFold(b[:len(prefix)], []byte(prefix)) {
		return b, false
	}
	return b[len(prefix):], true
}

// hostOf returns the key of a Host header value or authority: host without
// port, IPv6 literal without brackets.
func hostOf(v []byte) (string, error) {
	if len(v) == 0 {
		return "", fmt.Errorf("%w: empty Host", ErrNoMatch)
	}
	var host, port []byte
	if v[0] == '[' {
		end := bytes.IndexByte(v, ']')
		if end < 0 {
			return "", malformed("unterminated IPv6 literal in Host")
		}
		host, port = v[1:end], v[end+1:]
		if len(port) > 0 && port[0] != ':' {
			return "", malformed("bytes after IPv6 literal in Host")
		}
	} else {
		host, port = v, nil
		if c := bytes.IndexByte(v, ':'); c >= 0 {
			host, port = v[:c], v[c:]
		}
	}
	if len(port) > 0 {
		if len(port) > 6 {
			return "", malformed("port in Host too long")
		}
		for _, c := range port[1:] {
			if c < '0' || c > '9' {
				return "", malformed("bad port in Host")
			}
		}
	}
	if v[0] == '[' {
		a, err := netip.ParseAddr(string(host))
		if err != nil || !a.Is6() {
			return "", malformed("bad IPv6 literal in Host")
		}
		return a.WithZone("").String(), nil
	}
	return hostKey(host)
}
