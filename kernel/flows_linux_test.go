package kernel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// appendTuple appends a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY as the kernel
// dumps it.
func appendTuple(b []byte, typ uint16, proto uint8, src, dst netip.AddrPort) []byte {
	start := len(b)
	b = appendAttrHdr(b, typ|unix.NLA_F_NESTED)
	ip := len(b)
	b = appendAttrHdr(b, nl.CTA_TUPLE_IP|unix.NLA_F_NESTED)
	srcT, dstT := uint16(nl.CTA_IP_V4_SRC), uint16(nl.CTA_IP_V4_DST)
	if src.Addr().Is6() {
		srcT, dstT = nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	b = appendAttr(b, srcT, src.Addr().AsSlice()...)
	b = appendAttr(b, dstT, dst.Addr().AsSlice()...)
	endAttr(b, ip)
	p := len(b)
	b = appendAttrHdr(b, nl.CTA_TUPLE_PROTO|unix.NLA_F_NESTED)
	b = appendAttr(b, nl.CTA_PROTO_NUM, proto)
	b = appendAttr(b, nl.CTA_PROTO_SRC_PORT, binary.BigEndian.AppendUint16(nil, src.Port())...)
	b = appendAttr(b, nl.CTA_PROTO_DST_PORT, binary.BigEndian.AppendUint16(nil, dst.Port())...)
	endAttr(b, p)
	endAttr(b, start)
	return b
}

func TestParseFlow(t *testing.T) {
	for _, c := range []struct{ client, vip, be string }{
		{"198.18.0.2:40000", "198.18.1.1:80", "198.19.1.11:8080"},
		{"[2001:2::2]:40000", "[2001:2:0:1::1]:80", "[2001:2:0:2::11]:8080"},
	} {
		client, vip, be := netip.MustParseAddrPort(c.client), netip.MustParseAddrPort(c.vip), netip.MustParseAddrPort(c.be)
		var msg []byte
		msg = appendTuple(msg, nl.CTA_TUPLE_ORIG, unix.IPPROTO_TCP, client, vip)
		orig := len(msg)
		msg = appendTuple(msg, nl.CTA_TUPLE_REPLY, unix.IPPROTO_TCP, be, client)
		msg = appendAttr(msg, nl.CTA_STATUS, 0, 0, 1, 0xbe)
		id := len(msg)
		msg = appendAttr(msg, nl.CTA_ID, 1, 2, 3, 4)
		msg = appendAttr(msg, nl.CTA_MARK, 0, 0, 0, 7)

		f, key, ok := parseFlow(msg, nil)
		if !ok {
			t.Fatalf("%s: not parsed", c.client)
		}
		if want := (flow{proto: unix.IPPROTO_TCP, dst: vip, replySrc: be}); f != want {
			t.Errorf("parseFlow = %+v, want %+v", f, want)
		}
		if want := append(append([]byte(nil), msg[:orig]...), msg[id:id+8]...); string(key) != string(want) {
			t.Errorf("key = %x, want the original tuple and the id %x", key, want)
		}
		if _, _, ok := parseFlow(msg[:orig], nil); ok {
			t.Error("a message without its reply tuple parsed")
		}
		if _, _, ok := parseFlow(msg[:orig-3], nil); ok {
			t.Error("a cut message parsed")
		}
		buf := make([]byte, 0, 256)
		if a := testing.AllocsPerRun(100, func() { parseFlow(msg, buf[:0]) }); a != 0 {
			t.Errorf("parseFlow allocates %.0f times a message, want 0", a)
		}
	}
}
