package classifier

import "fmt"

// malformed returns an error wrapping ErrMalformed.
func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// maxHostLen bounds a host name key (DNS names have at most 253 bytes).
const maxHostLen = 255

// hostChars are the bytes accepted in a host name key: letters, digits and
// the other characters of a URI reg-name (RFC 3986), which covers DNS names
// and the underscores seen in the wild.
var hostChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "-._~%!$&'()*+,;=" {
		t[c] = true
	}
	return t
}()

// hostKey turns a server name into a key: validated, lowercased, without a
// trailing dot. It allocates only the returned string.
func hostKey(b []byte) (string, error) {
	if n := len(b); n > 0 && b[n-1] == '.' {
		b = b[:n-1]
	}
	if len(b) == 0 || len(b) > maxHostLen {
		return "", malformed("host name of %d bytes", len(b))
	}
	upper := false
	for _, c := range b {
		if !hostChars[c] {
			return "", malformed("byte %#x in host name", c)
		}
		upper = upper || 'A' <= c && c <= 'Z'
	}
	if !upper {
		return string(b), nil
	}
	var buf [maxHostLen]byte
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return string(buf[:len(b)]), nil
}
