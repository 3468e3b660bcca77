package classifier

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/handoff-lb/handoff/config"
)

// MaxLabelLen is the longest label Label returns: the kernel's limit on an
// ipset comment.
const MaxLabelLen = 255

// Label returns the human-readable form of a key, stored as the pin's
// comment (the ipset entry comment in the kernel): "src=198.18.0.5",
// "payload=station-7", "sni=a.example", "host=b.example", or "NAME=KEY" for
// a registered classify NAME.
//
// The label holds printable ASCII only, with no space, '"' or '\': other
// bytes are written as \xNN. It is cut to MaxLabelLen bytes, never inside an
// escape.
func Label(c config.Classify, key string) string {
	prefix := string(c)
	switch c {
	case config.ClassifySource:
		prefix = "src"
	case config.ClassifyHTTPHost:
		prefix = "host"
	}
	const hex = "0123456789abcdef"
	b := make([]byte, 0, min(MaxLabelLen, len(prefix)+1+len(key)))
	b = append(append(b, prefix...), '=')
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c > ' ' && c < 0x7f && c != '"' && c != '\\' {
			if len(b)+1 > MaxLabelLen {
				break
			}
			b = append(b, c)
			continue
		}
		if len(b)+4 > MaxLabelLen {
			break
		}
		b = append(b, '\\', 'x', hex[c>>4], hex[c&0xf])
	}
	return string(b)
}

// LabelKey undoes Label: it returns the key a label holds, with its \xNN
// escapes decoded, and reports whether the label has Label's form
// ("NAME=KEY", escapes well formed). A label that Label had to cut (a key
// of more than about 240 bytes) yields only the key's beginning.
func LabelKey(label string) (string, bool) {
	_, k, ok := strings.Cut(label, "=")
	if !ok {
		return "", false
	}
	if strings.IndexByte(k, '\\') < 0 {
		return k, true
	}
	b := make([]byte, 0, len(k))
	for i := 0; i < len(k); i++ {
		if k[i] != '\\' {
			b = append(b, k[i])
			continue
		}
		if i+3 >= len(k) || k[i+1] != 'x' {
			return "", false
		}
		v, err := strconv.ParseUint(k[i+2:i+4], 16, 8)
		if err != nil {
			return "", false
		}
		b = append(b, byte(v))
		i += 3
	}
	return string(b), true
}

// SourceKey returns the key of classify: source, the client's address in
// its usual text form (an IPv4-mapped IPv6 address is written as IPv4, and
// the zone is dropped).
func SourceKey(client netip.Addr) string {
	return client.Unmap().WithZone("").String()
}
