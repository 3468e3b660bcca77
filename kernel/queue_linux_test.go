package kernel

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// synPacket is an IPv4 or IPv6 TCP SYN header from src to dst.
func synPacket(src, dst netip.AddrPort) []byte {
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	tcp[12], tcp[13] = 5<<4, 0x02
	// The header's length, first byte, protocol field and source offset.
	size, first, proto, at := 20, byte(0x45), 9, 12
	if src.Addr().Is6() {
		size, first, proto, at = 40, 0x60, 6, 8
	}
	ip := make([]byte, size)
	ip[0], ip[proto] = first, 6
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	copy(ip[at:], s)
	copy(ip[at+len(s):], d)
	return append(ip, tcp...)
}

// notification is the attributes of a packet notification.
func notification(id, mark uint32, payload []byte) []byte {
	hdr := make([]byte, 7)
	binary.BigEndian.PutUint32(hdr, id)
	b := appendAttr(nil, nfqaPacketHdr, hdr...)
	b = appendAttr(b, nfqaMark, be32(mark)...)
	return appendAttr(b, nfqaPayload, payload...)
}

func TestParseQueued(t *testing.T) {
	for _, c := range []struct {
		name     string
		src, dst string
	}{
		{"ipv4", "198.18.0.7:40000", "198.18.0.1:80"},
		{"ipv6", "[2001:2:0:1::7]:40000", "[2001:2:0:1::1]:443"},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, dst := netip.MustParseAddrPort(c.src), netip.MustParseAddrPort(c.dst)
			p, ok := parseQueued(notification(42, 0x1234, synPacket(src, dst)))
			if !ok || p.id != 42 || p.mark != 0x1234 || p.src != src || p.dst != dst {
				t.Errorf("parseQueued = %+v, %v", p, ok)
			}
		})
	}
	for name, attrs := range map[string][]byte{
		"no header":        appendAttr(nil, nfqaPayload, synPacket(netip.MustParseAddrPort("198.18.0.7:1"), netip.MustParseAddrPort("198.18.0.1:2"))...),
		"no payload":       appendAttr(nil, nfqaPacketHdr, make([]byte, 7)...),
		"udp":              notification(1, 0, append([]byte{0x45, 0, 0, 0, 0, 0, 0, 0, 0, 17}, make([]byte, 30)...)),
		"short ipv4":       notification(1, 0, []byte{0x45, 0, 0}),
		"short ipv6":       notification(1, 0, append([]byte{0x60}, make([]byte, 20)...)),
		"bad ihl":          notification(1, 0, append([]byte{0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 6}, make([]byte, 30)...)),
		"version 5":        notification(1, 0, make([]byte, 60)),
		"truncated attr":   notification(1, 0, synPacket(netip.MustParseAddrPort("198.18.0.7:1"), netip.MustParseAddrPort("198.18.0.1:2")))[:9],
		"empty":            nil,
		"zero-length attr": {4, 0, nfqaPayload, 0},
	} {
		if p, ok := parseQueued(attrs); ok {
			t.Errorf("%s: parsed %+v", name, p)
		}
	}
}

// FuzzParseQueued feeds packet notifications, whose payload is a client's
// packet, to the parser: it must never panic, and what it accepts must
// carry addresses of one family.
func FuzzParseQueued(f *testing.F) {
	f.Add(notification(1, 0, synPacket(netip.MustParseAddrPort("198.18.0.7:40000"), netip.MustParseAddrPort("198.18.0.1:80"))))
	f.Add(notification(2, 7, synPacket(netip.MustParseAddrPort("[2001:2::7]:40000"), netip.MustParseAddrPort("[2001:2::1]:80"))))
	f.Add([]byte{4, 0, nfqaPayload, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := parseQueued(b)
		if ok && p.src.Addr().Is4() != p.dst.Addr().Is4() {
			t.Fatalf("mixed families: %+v", p)
		}
	})
}
