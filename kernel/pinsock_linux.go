package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// pinSocket adds ipset entries on the hot path: a blocking
// NETLINK_NETFILTER socket of the data plane's namespace with reused
// request and reply buffers, so an acknowledged add costs two syscalls and
// no allocation (netlink.Handle.IpsetAdd costs three syscalls and 37
// allocations). A pinSocket is used by one goroutine at a time.
type pinSocket struct {
	fd  int
	seq uint32
	req []byte
	rep []byte
	// maxBatch is how many failures the receive buffer can hold: the
	// most messages addBatch sends at once.
	maxBatch int
	// lost counts the batches whose replies overflowed the receive
	// buffer (tests read it).
	lost int
}

// Batched adds: a sendmsg carries at most batchBytes of requests, and at
// most as many messages as the receive buffer has room for replies,
// counting ackTruesize bytes per reply (an error message is one skb of a
// few hundred bytes; the kernel drops replies beyond the buffer).
const (
	batchBytes  = 64 << 10
	ackTruesize = 2048
	// batchRcvBuf is the receive buffer asked for (the kernel doubles
	// it): room for the replies of a full batchBytes of failing adds.
	batchRcvBuf = 1 << 20
)

// pinSockets is a fixed pool of pinSockets.
type pinSockets chan *pinSocket

func newPinSockets(ns netns.NsHandle, n int) (pinSockets, error) {
	p := make(pinSockets, n)
	for range n {
		s, err := newPinSocket(ns)
		if err != nil {
			p.close()
			return nil, err
		}
		p <- s
	}
	return p, nil
}

// close closes the sockets in the pool; call it when none is in use.
func (p pinSockets) close() {
	for {
		select {
		case s := <-p:
			unix.Close(s.fd)
		default:
			return
		}
	}
}

// add adds an entry with one of the pool's sockets.
func (p pinSockets) add(e setAdd, replace bool) error {
	s := <-p
	err := s.add(e, replace)
	p <- s
	return err
}

// addBatch adds entries with one of the pool's sockets.
func (p pinSockets) addBatch(es []setAdd, replace bool, errs []error) {
	s := <-p
	s.addBatch(es, replace, errs)
	p <- s
}

func newPinSocket(ns netns.NsHandle) (*pinSocket, error) {
	var fd int
	err := inNetNS(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	tv := unix.Timeval{Sec: 10}
	for _, err := range []error{
		unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv),
	} {
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netlink socket: %w", err)
		}
	}
	// Acks need not echo the request; older kernels lack the option.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	// Room for the replies of a batch: forced past rmem_max where
	// CAP_NET_ADMIN allows (it does wherever ipsets can be changed).
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, batchRcvBuf)
	}
	rcvbuf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &pinSocket{fd: fd, req: make([]byte, 0, 512), rep: make([]byte, 4096), maxBatch: max(rcvbuf/ackTruesize, 1)}, nil
}

// addBatch adds every entry of es, as add does each one, and stores the
// outcome of es[i] in errs[i]. It sends many IPSET_CMD_ADD messages per
// sendmsg and asks for an ack of the last one only: the kernel answers
// the others only when they fail, so a batch that succeeds costs one
// write and one read per batchBytes of requests.
//
// Should replies overflow the receive buffer all the same, the entries
// whose outcome is unknown are added again one by one; without replace,
// an entry this batch added is then reported with errExists.
func (s *pinSocket) addBatch(es []setAdd, replace bool, errs []error) {
	for len(es) > 0 {
		n, lost := s.sendBatch(es, replace, errs)
		if lost {
			s.lost++
			for i := range n {
				if errs[i] == nil {
					errs[i] = s.add(es[i], replace)
				}
			}
		}
		es, errs = es[n:], errs[n:]
	}
}

// sendBatch sends the adds of a prefix of es in one sendmsg, stores their
// outcomes in errs and returns how many it sent. With lost set, replies
// were dropped, and a nil errs[i] means unknown.
func (s *pinSocket) sendBatch(es []setAdd, replace bool, errs []error) (n int, lost bool) {
	flags := addFlags(replace)
	first := s.seq + 1
	b, last := s.req[:0], 0
	for n < len(es) && n < s.maxBatch {
		start := len(b)
		b = appendAdd(b, first+uint32(n), flags, es[n])
		if len(b) > batchBytes && n > 0 {
			b = b[:start]
			break
		}
		errs[n], last = nil, start
		n++
	}
	s.req = b
	s.seq = first + uint32(n) - 1
	// The last message asks for an ack: its reply ends the batch.
	ne := binary.NativeEndian
	ne.PutUint16(b[last+6:], ne.Uint16(b[last+6:])|unix.NLM_F_ACK)
	if err := retryEINTR(func() error { _, err := unix.Write(s.fd, b); return err }); err != nil {
		for i := range n {
			errs[i] = fmt.Errorf("netlink send: %w", err)
		}
		return n, false
	}
	lost, err := s.replies(first, errs[:n])
	if err != nil {
		for i := range n {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return n, lost
}

// replies reads the replies to the len(errs) requests numbered from first
// on, storing each failure in errs[seq-first], until the reply to the
// last one. After an overflow (ENOBUFS) it reads what is left without
// waiting and reports lost: every reply was queued during the sendmsg, as
// the kernel handles netlink requests synchronously, but the last one may
// have been dropped.
func (s *pinSocket) replies(first uint32, errs []error) (lost bool, err error) {
	ne := binary.NativeEndian
	n := uint32(len(errs))
	for {
		var r int
		if lost {
			err = retryEINTR(func() (err error) { r, _, err = unix.Recvfrom(s.fd, s.rep, unix.MSG_DONTWAIT); return err })
		} else {
			err = retryEINTR(func() (err error) { r, err = unix.Read(s.fd, s.rep); return err })
		}
		switch {
		case errors.Is(err, unix.ENOBUFS):
			lost = true
			continue
		case lost && errors.Is(err, unix.EAGAIN):
			return true, nil
		case err != nil:
			return lost, fmt.Errorf("netlink receive: %w", err)
		}
		m := s.rep[:r]
		for len(m) >= unix.SizeofNlMsghdr {
			l := int(ne.Uint32(m[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				return lost, errors.New("netlink receive: malformed reply")
			}
			typ, seq := ne.Uint16(m[4:6]), ne.Uint32(m[8:12])
			if i := seq - first; i < n && typ == unix.NLMSG_ERROR && l >= unix.SizeofNlMsghdr+4 {
				errs[i] = ackErr(m[unix.SizeofNlMsghdr:])
				if i == n-1 {
					return lost, nil
				}
			}
			// Otherwise a reply to an earlier request that timed out.
			m = m[min(nlAlign(l), len(m)):]
		}
	}
}

// add sends IPSET_CMD_ADD for ip to set and waits for the kernel's ack.
// timeout 0 leaves it out (the set's default); replace clears NLM_F_EXCL
// so an existing entry gets the new timeout and comment.
func (s *pinSocket) add(e setAdd, replace bool) error {
	s.seq++
	s.req = appendAdd(s.req[:0], s.seq, addFlags(replace)|unix.NLM_F_ACK, e)
	return mapIpsetErr(s.request())
}

// request sends the request in s.req, whose sequence number is s.seq and
// which asks for an ack, and returns the kernel's answer: nil, an
// nl.IPSetError or a syscall.Errno.
func (s *pinSocket) request() error {
	if err := retryEINTR(func() error { _, err := unix.Write(s.fd, s.req); return err }); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	return s.ack()
}

// addFlags are the netlink flags of an IPSET_CMD_ADD without NLM_F_ACK.
func addFlags(replace bool) uint16 {
	if replace {
		return unix.NLM_F_REQUEST
	}
	return unix.NLM_F_REQUEST | unix.NLM_F_EXCL
}

// appendAdd appends the IPSET_CMD_ADD message of e with sequence number
// seq and netlink flags to b.
func appendAdd(b []byte, seq uint32, flags uint16, e setAdd) []byte {
	start := len(b)
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...) // filled in below
	b = append(b, unix.AF_NETLINK, nl.NFNETLINK_V0, 0, 0)
	b = appendAttr(b, nl.IPSET_ATTR_PROTOCOL, nl.IPSET_PROTOCOL)
	b = appendAttrString(b, nl.IPSET_ATTR_SETNAME, e.set)
	data := len(b)
	b = appendAttrHdr(b, nl.IPSET_ATTR_DATA|nl.NLA_F_NESTED)
	ipAttr := len(b)
	b = appendAttrHdr(b, nl.IPSET_ATTR_IP|nl.NLA_F_NESTED)
	if e.ip.Is4() {
		a := e.ip.As4()
		b = appendAttr(b, nl.IPSET_ATTR_IPADDR_IPV4|nl.NLA_F_NET_BYTEORDER, a[:]...)
	} else {
		a := e.ip.As16()
		b = appendAttr(b, nl.IPSET_ATTR_IPADDR_IPV6|nl.NLA_F_NET_BYTEORDER, a[:]...)
	}
	endAttr(b, ipAttr)
	if e.cidr != 0 {
		b = appendAttr(b, nl.IPSET_ATTR_CIDR, e.cidr)
	}
	if t := e.timeout; t > 0 {
		b = appendAttr(b, nl.IPSET_ATTR_TIMEOUT|nl.NLA_F_NET_BYTEORDER, byte(t>>24), byte(t>>16), byte(t>>8), byte(t))
	}
	if e.comment != "" {
		b = appendAttrString(b, nl.IPSET_ATTR_COMMENT, e.comment)
	}
	if m := e.mark; m.mask != 0 {
		b = appendAttr(b, nl.IPSET_ATTR_SKBMARK|nl.NLA_F_NET_BYTEORDER,
			byte(m.value>>24), byte(m.value>>16), byte(m.value>>8), byte(m.value),
			byte(m.mask>>24), byte(m.mask>>16), byte(m.mask>>8), byte(m.mask))
	}
	endAttr(b, data)
	ne := binary.NativeEndian
	ne.PutUint32(b[start:], uint32(len(b)-start))
	ne.PutUint16(b[start+4:], unix.NFNL_SUBSYS_IPSET<<8|nl.IPSET_CMD_ADD)
	ne.PutUint16(b[start+6:], flags)
	ne.PutUint32(b[start+8:], seq)
	ne.PutUint32(b[start+12:], 0)
	return b
}

// ack reads replies until the one to the last request and returns its
// error, unmapped (rawAckErr).
func (s *pinSocket) ack() error {
	ne := binary.NativeEndian
	for {
		var n int
		err := retryEINTR(func() (err error) { n, err = unix.Read(s.fd, s.rep); return err })
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		m := s.rep[:n]
		for len(m) >= unix.SizeofNlMsghdr {
			l := int(ne.Uint32(m[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				return errors.New("netlink receive: malformed reply")
			}
			typ, seq := ne.Uint16(m[4:6]), ne.Uint32(m[8:12])
			if seq == s.seq && typ == unix.NLMSG_ERROR && l >= unix.SizeofNlMsghdr+4 {
				return rawAckErr(m[unix.SizeofNlMsghdr:])
			}
			// A reply to an earlier request that timed out: skip it.
			m = m[min(nlAlign(l), len(m)):]
		}
	}
}

// ackErr returns the error of an NLMSG_ERROR payload (nil for an ack),
// mapped as an ipset command's.
func ackErr(payload []byte) error { return mapIpsetErr(rawAckErr(payload)) }

// rawAckErr returns the error of an NLMSG_ERROR payload (nil for an ack):
// an nl.IPSetError for ipset's own codes, else a syscall.Errno.
func rawAckErr(payload []byte) error {
	errno := -int32(binary.NativeEndian.Uint32(payload))
	switch {
	case errno == 0:
		return nil
	case errno >= nl.IPSET_ERR_PRIVATE:
		return nl.IPSetError(errno)
	default:
		return syscall.Errno(errno)
	}
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func nlAlign(n int) int { return (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1) }

// appendAttrHdr appends an attribute header whose length endAttr fixes.
func appendAttrHdr(b []byte, typ uint16) []byte {
	return binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16(b, unix.SizeofRtAttr), typ)
}

// endAttr sets the length of the attribute starting at start to reach the
// end of b.
func endAttr(b []byte, start int) {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
}

// appendAttr appends an attribute with value v, padded.
func appendAttr(b []byte, typ uint16, v ...byte) []byte {
	start := len(b)
	b = appendAttrHdr(b, typ)
	b = append(b, v...)
	endAttr(b, start)
	return pad(b)
}

// appendAttrString appends a NUL-terminated string attribute, padded.
func appendAttrString(b []byte, typ uint16, s string) []byte {
	start := len(b)
	b = appendAttrHdr(b, typ)
	b = append(b, s...)
	b = append(b, 0)
	endAttr(b, start)
	return pad(b)
}

func pad(b []byte) []byte {
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}
