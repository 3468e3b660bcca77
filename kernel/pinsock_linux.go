package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
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
}

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
func (p pinSockets) add(set string, ip netip.Addr, timeout uint32, comment string, replace bool) error {
	s := <-p
	err := s.add(set, ip, timeout, comment, replace)
	p <- s
	return err
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
	return &pinSocket{fd: fd, req: make([]byte, 0, 512), rep: make([]byte, 4096)}, nil
}

// add sends IPSET_CMD_ADD for ip to set and waits for the kernel's ack.
// timeout 0 leaves it out (the set's default); replace clears NLM_F_EXCL
// so an existing entry gets the new timeout and comment.
func (s *pinSocket) add(set string, ip netip.Addr, timeout uint32, comment string, replace bool) error {
	s.seq++
	flags := uint16(unix.NLM_F_REQUEST | unix.NLM_F_ACK)
	if !replace {
		flags |= unix.NLM_F_EXCL
	}
	b := s.req[:0]
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...) // filled in below
	b = append(b, unix.AF_NETLINK, nl.NFNETLINK_V0, 0, 0)
	b = appendAttr(b, nl.IPSET_ATTR_PROTOCOL, nl.IPSET_PROTOCOL)
	b = appendAttrString(b, nl.IPSET_ATTR_SETNAME, set)
	data := len(b)
	b = appendAttrHdr(b, nl.IPSET_ATTR_DATA|nl.NLA_F_NESTED)
	ipAttr := len(b)
	b = appendAttrHdr(b, nl.IPSET_ATTR_IP|nl.NLA_F_NESTED)
	if ip.Is4() {
		a := ip.As4()
		b = appendAttr(b, nl.IPSET_ATTR_IPADDR_IPV4|nl.NLA_F_NET_BYTEORDER, a[:]...)
	} else {
		a := ip.As16()
		b = appendAttr(b, nl.IPSET_ATTR_IPADDR_IPV6|nl.NLA_F_NET_BYTEORDER, a[:]...)
	}
	endAttr(b, ipAttr)
	if timeout > 0 {
		b = appendAttr(b, nl.IPSET_ATTR_TIMEOUT|nl.NLA_F_NET_BYTEORDER,
			byte(timeout>>24), byte(timeout>>16), byte(timeout>>8), byte(timeout))
	}
	if comment != "" {
		b = appendAttrString(b, nl.IPSET_ATTR_COMMENT, comment)
	}
	endAttr(b, data)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:4], uint32(len(b)))
	ne.PutUint16(b[4:6], unix.NFNL_SUBSYS_IPSET<<8|nl.IPSET_CMD_ADD)
	ne.PutUint16(b[6:8], flags)
	ne.PutUint32(b[8:12], s.seq)
	ne.PutUint32(b[12:16], 0)
	s.req = b

	if err := retryEINTR(func() error { _, err := unix.Write(s.fd, b); return err }); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	return s.ack()
}

// ack reads replies until the one to the last request and returns its
// error.
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
				errno := -int32(ne.Uint32(m[unix.SizeofNlMsghdr:]))
				switch {
				case errno == 0:
					return nil
				case errno >= nl.IPSET_ERR_PRIVATE:
					return mapIpsetErr(nl.IPSetError(errno))
				default:
					return mapIpsetErr(syscall.Errno(errno))
				}
			}
			// A reply to an earlier request that timed out: skip it.
			m = m[min(nlAlign(l), len(m)):]
		}
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
