package classifier

import (
	"net/netip"

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

// SourceKey returns the key of classify: source, the client's address in
// its usual text form (an IPv4-mapped IPv6 address is written as IPv4, and
// the zone is dropped).
func SourceKey(client netip.Addr) string {
	return client.Unmap().WithZone("").String()
}
