package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// flow is what Forget matches a conntrack entry on.
type flow struct {
	proto uint8
	// dst is the original direction's destination: the VIP the client
	// connected to.
	dst netip.AddrPort
	// replySrc is the reply direction's source: where the connection
	// went after DNAT.
	replySrc netip.AddrPort
}

// ctMsg is the netlink message type of a ctnetlink command.
func ctMsg(cmd uint16) uint16 { return unix.NFNL_SUBSYS_CTNETLINK<<8 | cmd }

// deleteFlows implements flowDeleter. It streams the family's conntrack
// table through a dump socket and deletes each entry that matches over a
// request socket as the dump goes, as `conntrack -D` does, so that it
// holds two buffers whatever the table's size and allocates nothing per
// entry.
// netlink.Handle.ConntrackDeleteFilters, used before, reads the whole dump
// into memory first: cutting 67k flows out of a 230k-entry table took the
// daemon's RSS from 28 to 140 MiB (scripts/soak.sh);
// TestNSForgetStreams bounds the heap this takes now.
func (s *nlSets) deleteFlows(fam family, match func(flow) bool) (int, error) {
	dump, err := s.dumps.get("")
	if err != nil {
		return 0, err
	}
	del, err := s.dumps.requestSocket()
	if err != nil {
		s.dumps.put(dump, true)
		return 0, err
	}
	defer unix.Close(del.fd)
	af := uint8(nlFamily(fam))
	var n, failed int
	var firstErr error
	key := make([]byte, 0, 256) // reused: no allocation per entry
	dump.seq++
	dump.req = appendCTRequest(dump.req[:0], dump.seq, nl.IPCTNL_MSG_CT_GET, unix.NLM_F_DUMP, af, nil)
	// The kernel sends each entry of a dump as an IPCTNL_MSG_CT_NEW.
	reusable, err := dump.exchange(ctMsg(nl.IPCTNL_MSG_CT_NEW), func(attrs []byte) error {
		var f flow
		var ok bool
		f, key, ok = parseFlow(attrs, key[:0])
		if !ok || !match(f) {
			return nil
		}
		del.seq++
		del.req = appendCTRequest(del.req[:0], del.seq, nl.IPCTNL_MSG_CT_DELETE, unix.NLM_F_ACK, af, key)
		derr := del.request()
		switch {
		case derr == nil, errors.Is(derr, unix.ENOENT): // gone already: it went all the same
			n++
		default:
			failed++
			if firstErr == nil {
				firstErr = derr
			}
		}
		return nil
	})
	if err != nil && dump.interrupted.Load() {
		err = errClosed // the data plane closed during the dump
	}
	s.dumps.put(dump, reusable)
	if err != nil {
		return n, fmt.Errorf("conntrack dump: %w", err)
	}
	if failed > 0 {
		return n, fmt.Errorf("conntrack: %d deletes failed, the first: %w", failed, firstErr)
	}
	return n, nil
}

// appendCTRequest appends a ctnetlink request with the attributes attrs
// to b.
func appendCTRequest(b []byte, seq uint32, cmd uint16, flags uint16, af uint8, attrs []byte) []byte {
	start := len(b)
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...) // filled in below
	b = append(b, af, nl.NFNETLINK_V0, 0, 0)
	b = append(b, attrs...)
	ne := binary.NativeEndian
	ne.PutUint32(b[start:], uint32(len(b)-start))
	ne.PutUint16(b[start+4:], ctMsg(cmd))
	ne.PutUint16(b[start+6:], unix.NLM_F_REQUEST|flags)
	ne.PutUint32(b[start+8:], seq)
	ne.PutUint32(b[start+12:], 0)
	return b
}

// parseFlow decodes the attributes of a ctnetlink dump message and
// appends to key the attributes that name the entry to a delete: the
// original tuple, the zone and the entry's id (which keeps a delete from
// hitting a new entry with the same tuple).
func parseFlow(attrs, key []byte) (f flow, _ []byte, ok bool) {
	var orig, reply bool
	for b := attrs; len(b) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return flow{}, nil, false
		}
		typ := binary.NativeEndian.Uint16(b[2:4]) & 0x3fff
		val, raw := b[unix.SizeofRtAttr:l], b[:min(nlAlign(l), len(b))]
		switch typ {
		case nl.CTA_TUPLE_ORIG:
			_, f.dst, f.proto, orig = parseTuple(val)
			key = append(key, raw...)
		case nl.CTA_TUPLE_REPLY:
			f.replySrc, _, _, reply = parseTuple(val)
		case nl.CTA_ZONE, nl.CTA_ID:
			key = append(key, raw...)
		}
		b = b[len(raw):]
	}
	return f, key, orig && reply
}

// parseTuple decodes a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY.
func parseTuple(b []byte) (src, dst netip.AddrPort, proto uint8, ok bool) {
	var sip, dip netip.Addr
	var sport, dport uint16
	for typ, val := range attributes(b) {
		switch typ {
		case nl.CTA_TUPLE_IP:
			for t, v := range attributes(val) {
				a, aok := netip.AddrFromSlice(v)
				if !aok {
					continue
				}
				switch t {
				case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
					sip = a
				case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
					dip = a
				}
			}
		case nl.CTA_TUPLE_PROTO:
			for t, v := range attributes(val) {
				switch {
				case t == nl.CTA_PROTO_NUM && len(v) == 1:
					proto = v[0]
				case t == nl.CTA_PROTO_SRC_PORT && len(v) == 2:
					sport = binary.BigEndian.Uint16(v)
				case t == nl.CTA_PROTO_DST_PORT && len(v) == 2:
					dport = binary.BigEndian.Uint16(v)
				}
			}
		}
	}
	if !sip.IsValid() || !dip.IsValid() {
		return src, dst, proto, false
	}
	return netip.AddrPortFrom(sip, sport), netip.AddrPortFrom(dip, dport), proto, true
}
