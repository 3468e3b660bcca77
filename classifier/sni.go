package classifier

import "fmt"

// sniParser implements classify: sni. It reads the server name from a TLS
// ClientHello without terminating TLS. The hello may arrive in any number of
// TCP segments and span several handshake records.
type sniParser struct {
	max int // max_bytes; a hello declared longer is ErrTooLong at once
}

const (
	recordHeaderLen    = 5
	recordTypeHS       = 22
	maxRecordLen       = 1<<14 + 2048 // TLSCiphertext bound; plaintext hellos stay within 2^14
	handshakeHeaderLen = 4
	typeClientHello    = 1
	extServerName      = 0
	sniHostName        = 0
)

func (p sniParser) Parse(data []byte) (string, error) {
	hello, err := p.clientHello(data)
	if err != nil {
		return "", err
	}
	name, err := serverName(hello)
	if err != nil {
		return "", err
	}
	return hostKey(name)
}

// clientHello returns the ClientHello body (after the handshake header),
// reassembled from as many records as it spans.
func (p sniParser) clientHello(data []byte) ([]byte, error) {
	// Walk the records, validating each header as soon as its bytes are
	// here, so that garbage fails on its first bytes.
	var hdr [handshakeHeaderLen]byte
	got := 0         // handshake bytes available so far
	need := -1       // total handshake bytes, once the header is known
	frags := 0       // records holding handshake bytes
	var first []byte // the first record's fragment
	for off := 0; ; {
		rest := data[off:]
		if err := checkRecordHeader(rest); err != nil {
			return nil, err
		}
		if len(rest) < recordHeaderLen {
			return nil, ErrNeedMore
		}
		n := int(rest[3])<<8 | int(rest[4])
		frag := rest[recordHeaderLen:min(len(rest), recordHeaderLen+n)]
		frags++
		if frags == 1 {
			first = frag
		}
		k := 0
		for ; k < len(frag) && got < handshakeHeaderLen; k++ {
			hdr[got] = frag[k]
			got++
			if got == 1 && hdr[0] != typeClientHello {
				return nil, malformed("handshake type %d is not a ClientHello", hdr[0])
			}
			if got == handshakeHeaderLen {
				need = handshakeHeaderLen + (int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3]))
				if p.max > 0 && need+recordHeaderLen > p.max {
					return nil, fmt.Errorf("%w: ClientHello of %d bytes", ErrTooLong, need)
				}
			}
		}
		got += len(frag) - k
		if need >= 0 && got >= need {
			break
		}
		if len(frag) < n {
			return nil, ErrNeedMore
		}
		off += recordHeaderLen + n
	}
	if frags == 1 {
		return first[handshakeHeaderLen:need], nil
	}
	// Reassemble the message spread over several records.
	msg := make([]byte, 0, need)
	for off := 0; len(msg) < need; {
		n := int(data[off+3])<<8 | int(data[off+4])
		frag := data[off+recordHeaderLen : off+recordHeaderLen+min(n, need-len(msg))]
		msg = append(msg, frag...)
		off += recordHeaderLen + n
	}
	return msg[handshakeHeaderLen:], nil
}

// checkRecordHeader validates as much of a record header as rest holds.
func checkRecordHeader(rest []byte) error {
	switch {
	case len(rest) >= 1 && rest[0] != recordTypeHS:
		return malformed("record type %d is not a handshake", rest[0])
	case len(rest) >= 2 && rest[1] != 3:
		return malformed("record version %d.x is not TLS", rest[1])
	case len(rest) >= 5:
		n := int(rest[3])<<8 | int(rest[4])
		if n == 0 || n > maxRecordLen {
			return malformed("handshake record of %d bytes", n)
		}
	}
	return nil
}

// serverName returns the host_name of the server_name extension of a
// complete ClientHello body.
func serverName(b []byte) ([]byte, error) {
	s := helloReader(b)
	var sid, suites, comp, exts helloReader
	if !s.skip(2+32) || // legacy_version, random
		!s.vec8(&sid) || len(sid) > 32 ||
		!s.vec16(&suites) || len(suites) < 2 || len(suites)%2 != 0 ||
		!s.vec8(&comp) || len(comp) < 1 {
		return nil, malformed("bad ClientHello")
	}
	if len(s) == 0 {
		return nil, fmt.Errorf("%w: ClientHello has no extensions", ErrNoMatch)
	}
	if !s.vec16(&exts) || len(s) != 0 {
		return nil, malformed("bad ClientHello extensions")
	}
	for len(exts) > 0 {
		var typ uint16
		var ext helloReader
		if !exts.u16(&typ) || !exts.vec16(&ext) {
			return nil, malformed("bad ClientHello extension")
		}
		if typ != extServerName {
			continue
		}
		var list helloReader
		if !ext.vec16(&list) || len(ext) != 0 || len(list) == 0 {
			return nil, malformed("bad server_name extension")
		}
		var name []byte
		for len(list) > 0 {
			var typ uint8
			var n helloReader
			if !list.u8(&typ) || !list.vec16(&n) || len(n) == 0 {
				return nil, malformed("bad server_name list")
			}
			if typ != sniHostName {
				continue
			}
			if name != nil {
				return nil, malformed("two host names in server_name")
			}
			name = n
		}
		if name == nil {
			break
		}
		return name, nil
	}
	return nil, fmt.Errorf("%w: ClientHello has no server name", ErrNoMatch)
}

// helloReader consumes a TLS structure from the front.
type helloReader []byte

func (r *helloReader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

func (r *helloReader) u8(v *uint8) bool {
	if len(*r) < 1 {
		return false
	}
	*v = (*r)[0]
	*r = (*r)[1:]
	return true
}

func (r *helloReader) u16(v *uint16) bool {
	if len(*r) < 2 {
		return false
	}
	*v = uint16((*r)[0])<<8 | uint16((*r)[1])
	*r = (*r)[2:]
	return true
}

func (r *helloReader) vec8(v *helloReader) bool {
	var n uint8
	if !r.u8(&n) || len(*r) < int(n) {
		return false
	}
	*v, *r = (*r)[:n], (*r)[n:]
	return true
}

func (r *helloReader) vec16(v *helloReader) bool {
	var n uint16
	if !r.u16(&n) || len(*r) < int(n) {
		return false
	}
	*v, *r = (*r)[:n], (*r)[n:]
	return true
}
