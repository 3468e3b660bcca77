// Package hostname turns server names (TLS SNI, HTTP Host, route keys of
// the config) into the keys handoff compares: one definition for the
// classifiers, which read names from clients, and the config, whose route
// keys must be written the same way to match.
package hostname

import "fmt"

// MaxLen bounds a host name key (DNS names have at most 253 bytes).
const MaxLen = 255

// chars are the bytes accepted in a host name key: letters, digits and
// the other characters of a URI reg-name (RFC 3986), which covers DNS names
// and the underscores seen in the wild.
var chars = func() (t [256]bool) {
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

// Key turns a server name into a key: validated, lowercased, without a
// trailing dot. It allocates only the returned string.
func Key(b []byte) (string, error) {
	if n := len(b); n > 0 && b[n-1] == '.' {
		b = b[:n-1]
	}
	if len(b) == 0 || len(b) > MaxLen {
		return "", fmt.Errorf("host name of %d bytes", len(b))
	}
	upper := false
	for _, c := range b {
		if !chars[c] {
			return "", fmt.Errorf("byte %#x in host name", c)
		}
		upper = upper || 'A' <= c && c <= 'Z'
	}
	if !upper {
		return string(b), nil
	}
	var buf [MaxLen]byte
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return string(buf[:len(b)]), nil
}
