package kernel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// nested returns the attributes of a nested attribute a, as a listing
// hands them to parseMember and parseHeader.
func nested(a *nl.RtAttr) []byte { return a.Serialize()[unix.SizeofRtAttr:] }

// TestParseCountingSet checks that a counting set's header and entries
// parse as the kernel lists them: the header's counters flag and type make
// an exact counting spec, and an entry's address, port and counters come
// through.
func TestParseCountingSet(t *testing.T) {
	data := nl.NewRtAttr(nl.IPSET_ATTR_DATA|unix.NLA_F_NESTED, nil)
	ip := data.AddRtAttr(nl.IPSET_ATTR_IP|unix.NLA_F_NESTED, nil)
	ip.AddRtAttr(nl.IPSET_ATTR_IPADDR_IPV4|unix.NLA_F_NET_BYTEORDER, []byte{198, 19, 1, 11})
	data.AddRtAttr(nl.IPSET_ATTR_PORT|unix.NLA_F_NET_BYTEORDER, []byte{0x1f, 0x90})
	data.AddRtAttr(nl.IPSET_ATTR_PROTO, []byte{unix.IPPROTO_TCP})
	data.AddRtAttr(nl.IPSET_ATTR_PACKETS|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint64(nil, 50))
	data.AddRtAttr(nl.IPSET_ATTR_BYTES|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint64(nil, 70000))
	m := parseMember(nested(data))
	if m.ip != netip.MustParseAddr("198.19.1.11") || m.port != 8080 || m.packets != 50 || m.bytes != 70000 {
		t.Errorf("member %+v, want 198.19.1.11 port 8080, 50 packets, 70000 bytes", m)
	}

	header := func(typ string, flags uint32) []byte {
		var b []byte
		b = append(b, nl.NewRtAttr(nl.IPSET_ATTR_SETNAME, nl.ZeroTerminated("hoc-web")).Serialize()...)
		b = append(b, nl.NewRtAttr(nl.IPSET_ATTR_TYPENAME, nl.ZeroTerminated(typ)).Serialize()...)
		b = append(b, nl.NewRtAttr(nl.IPSET_ATTR_FAMILY, []byte{unix.AF_INET}).Serialize()...)
		d := nl.NewRtAttr(nl.IPSET_ATTR_DATA|unix.NLA_F_NESTED, nil)
		d.AddRtAttr(nl.IPSET_ATTR_HASHSIZE|unix.NLA_F_NET_BYTEORDER, be32(1024))
		d.AddRtAttr(nl.IPSET_ATTR_MAXELEM|unix.NLA_F_NET_BYTEORDER, be32(defaultMaxelem))
		d.AddRtAttr(nl.IPSET_ATTR_CADT_FLAGS|unix.NLA_F_NET_BYTEORDER, be32(flags))
		d.AddRtAttr(nl.IPSET_ATTR_ELEMENTS|unix.NLA_F_NET_BYTEORDER, be32(2))
		return append(b, d.Serialize()...)
	}
	want := setSpec{family: ipv4, counters: true}
	for _, c := range []struct {
		typ   string
		flags uint32
		is    bool
	}{
		{"hash:ip,port", nl.IPSET_FLAG_WITH_COUNTERS, true},
		{"hash:ip", nl.IPSET_FLAG_WITH_COUNTERS, false},
		{"hash:ip,port", nl.IPSET_FLAG_WITH_COMMENT, false},
		{"hash:ip,port", nl.IPSET_FLAG_WITH_COUNTERS | nl.IPSET_FLAG_WITH_COMMENT, false},
	} {
		h, ok := parseHeader(header(c.typ, c.flags))
		if !ok || h.name != "hoc-web" || h.entries != 2 || h.is(want) != c.is {
			t.Errorf("%s flags %#x: %+v (ok %v), is a counting set: %v, want %v", c.typ, c.flags, h, ok, h.is(want), c.is)
		}
	}
}
