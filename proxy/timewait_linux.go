package proxy

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// A transparent dial's socket has the client's own address and port. When
// the proxy closes it first, it stays in TIME_WAIT for a minute, and the
// kernel's early demultiplexing then hands it every packet of that
// address pair, forwarded ones included: the backend's SYN-ACK to the
// client's next, kernel-forwarded connection from the same port is tied
// to the TIME_WAIT socket, and the forwarding path drops packets tied to a
// local socket. The client is black-holed until the socket expires
// (e2e TestKernelAfterProxiedSamePort; found by scripts/soak.sh, whose
// busy clients reuse their ports that soon). So a transparent session
// ends by destroying its TIME_WAIT socket (sock_diag SOCK_DESTROY, as
// `ss -K` does): the socket guards against stray segments of a
// connection that is over, on an address that is not this host's.
//
// A session that ends in an error (the client reset it, a timeout) resets
// its backend connection instead: closed with a FIN, the socket would
// linger as an orphan in FIN_WAIT1 or FIN_WAIT2, which holds the same
// address pair, becomes TIME_WAIT only when the backend's FIN comes, after
// the destroy, and which SOCK_DESTROY does not remove (the kernel's
// tcp_abort leaves orphaned sockets alone). The test saw it in about one
// run in eight.
//
// netlink.Handle.SocketDestroy does this for IPv4 only and opens a
// netlink socket each time; this keeps one per loop.

const (
	sockDestroy = 21 // SOCK_DESTROY (linux/sock_diag.h)
	// sizeofDiagReq is struct inet_diag_req_v2 (linux/inet_diag.h).
	sizeofDiagReq = 56
)

// timeWaitUnsupported is set once the kernel refused a SOCK_DESTROY as
// unsupported (no CONFIG_INET_DIAG_DESTROY, or TIME_WAIT sockets cannot
// be destroyed), so that no loop asks again.
var timeWaitUnsupported atomic.Bool

// timeWaits destroys TIME_WAIT sockets over a NETLINK_SOCK_DIAG socket of
// the loop's own, opened on first use.
type timeWaits struct {
	fd  int // 0: not open yet
	seq uint32
	buf [unix.SizeofNlMsghdr + sizeofDiagReq + 512]byte
}

// destroy destroys the TIME_WAIT socket from local to remote, if there is
// one. It returns false when the kernel cannot.
func (w *timeWaits) destroy(local, remote netip.AddrPort) bool {
	if timeWaitUnsupported.Load() || !local.IsValid() || !remote.IsValid() {
		return false
	}
	if w.fd == 0 {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return false
		}
		tv := unix.Timeval{Sec: 1}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		w.fd = fd
	}
	w.seq++
	req := appendDestroy(w.buf[:0], w.seq, local, remote)
	if _, err := unix.Write(w.fd, req); err != nil {
		return false
	}
	ne := binary.NativeEndian
	for {
		n, err := unix.Read(w.fd, w.buf[:])
		if err != nil {
			return false
		}
		for m := w.buf[:n]; len(m) >= unix.SizeofNlMsghdr+4; {
			l := int(ne.Uint32(m[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				return false
			}
			if ne.Uint16(m[4:6]) == unix.NLMSG_ERROR && ne.Uint32(m[8:12]) == w.seq {
				switch errno := unix.Errno(-int32(ne.Uint32(m[unix.SizeofNlMsghdr:]))); errno {
				case 0, unix.ENOENT: // destroyed, or none was left
					return true
				case unix.EOPNOTSUPP, unix.EINVAL:
					timeWaitUnsupported.Store(true)
					return false
				default:
					return false
				}
			}
			m = m[min((l+3)&^3, len(m)):]
		}
	}
}

// close closes the netlink socket.
func (w *timeWaits) close() {
	if w.fd != 0 {
		unix.Close(w.fd)
		w.fd = 0
	}
}

// appendDestroy appends a SOCK_DESTROY request for the TCP socket in
// TIME_WAIT from local to remote to b.
func appendDestroy(b []byte, seq uint32, local, remote netip.AddrPort) []byte {
	ne := binary.NativeEndian
	b = ne.AppendUint32(b, unix.SizeofNlMsghdr+sizeofDiagReq)
	b = ne.AppendUint16(b, sockDestroy)
	b = ne.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	family := byte(unix.AF_INET6)
	if local.Addr().Is4() {
		family = unix.AF_INET
	}
	b = append(b, family, unix.IPPROTO_TCP, 0, 0)
	b = ne.AppendUint32(b, 1<<unix.BPF_TCP_TIME_WAIT) // idiag_states
	b = binary.BigEndian.AppendUint16(b, local.Port())
	b = binary.BigEndian.AppendUint16(b, remote.Port())
	b = appendDiagAddr(b, local.Addr())
	b = appendDiagAddr(b, remote.Addr())
	b = ne.AppendUint32(b, 0)          // idiag_if
	b = ne.AppendUint32(b, ^uint32(0)) // idiag_cookie: INET_DIAG_NOCOOKIE
	b = ne.AppendUint32(b, ^uint32(0))
	return b
}

// appendDiagAddr appends a 16-byte inet_diag address: an IPv4 address in
// its first four bytes.
func appendDiagAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return append(append(b, v[:]...), make([]byte, 12)...)
	}
	v := a.As16()
	return append(b, v[:]...)
}
