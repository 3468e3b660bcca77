package healthcheck

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// connectProbe opens a TCP connection to addr and closes it with a reset.
// It is TCP's default dial, written against the socket API because it runs
// a thousand times a second: the net package's dial costs a resolver pass,
// a dozen allocations, and getsockname, getpeername and TCP_NODELAY calls a
// probe has no use for. A check of a backend on this host costs five system
// calls (socket, connect, connect again for the outcome, setsockopt
// SO_LINGER, close); one whose handshake takes a round trip adds fcntl and
// two epoll_ctl (os.NewFile and its close) and the poller's wake-up.
//
// A connect(2) repeated on a socket whose non-blocking connect was started
// reports the outcome on Linux: 0 once established, EALREADY while the
// handshake is under way, or the error that ended it. The probe relies on
// that to learn the outcome with one system call per wake-up. None of the
// socket calls can block, so they are made as raw system calls: the
// scheduler is not told, and does not hand the P to another thread while a
// connect walks the loopback handshake.
func connectProbe(ctx context.Context, addr netip.AddrPort) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var sa sockaddr
	family, err := sa.set(addr)
	if err != nil {
		return err
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, syscall.IPPROTO_TCP)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	switch err := sa.connect(fd); err {
	case nil:
		setNoLinger(fd)
		_ = syscall.Close(fd)
		return nil
	case syscall.EINPROGRESS, syscall.EINTR:
	default:
		_ = syscall.Close(fd)
		return err
	}
	// A backend on this host (loopback, a veth into a container) usually
	// answers within the connect call itself: the kernel runs the whole
	// handshake in this thread's softirq. Asking once more costs one system
	// call and, when it is done, saves the poller's four (fcntl, two
	// epoll_ctl, the wake-up) and os.File's allocations. A remote backend
	// is still mid-handshake (EALREADY) and goes to the poller.
	if done, err := connectOutcome(sa.connect(fd)); done {
		if err == nil {
			setNoLinger(fd)
		}
		_ = syscall.Close(fd)
		return err
	}

	// Wait in the runtime's poller. os.File owns fd from here on.
	f := os.NewFile(uintptr(fd), "")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = f.SetWriteDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(aLongTimeAgo) })
	defer stop()
	var connErr error
	werr := rc.Write(func(fd uintptr) bool {
		done, err := connectOutcome(sa.connect(int(fd)))
		if done && err == nil {
			setNoLinger(int(fd)) // close sends a reset: no TIME_WAIT left behind
		}
		connErr = err
		return done
	})
	if werr != nil {
		return werr
	}
	return connErr
}

// connectOutcome reads the result of connect(2) repeated on a socket whose
// non-blocking connect is under way: done is false while the handshake
// goes on; then err is nil if it succeeded.
func connectOutcome(errno error) (done bool, err error) {
	switch errno {
	case nil, syscall.EISCONN:
		return true, nil
	case syscall.EALREADY, syscall.EINPROGRESS, syscall.EINTR:
		return false, nil
	}
	return true, errno
}

// sockaddr is an address in the kernel's sockaddr_in or sockaddr_in6
// layout; sockaddr_in uses the first bytes of in6.
type sockaddr struct {
	in6 syscall.RawSockaddrInet6
	len uintptr
}

func (sa *sockaddr) set(addr netip.AddrPort) (family int, err error) {
	a := addr.Addr()
	if !addr.IsValid() {
		return 0, errors.New("invalid address")
	}
	port := (*[2]byte)(unsafe.Pointer(&sa.in6.Port)) // network byte order
	port[0], port[1] = byte(addr.Port()>>8), byte(addr.Port())
	if a.Is4() {
		in4 := (*syscall.RawSockaddrInet4)(unsafe.Pointer(&sa.in6))
		in4.Family, in4.Addr, sa.len = syscall.AF_INET, a.As4(), syscall.SizeofSockaddrInet4
		return syscall.AF_INET, nil
	}
	sa.in6.Family, sa.in6.Addr, sa.len = syscall.AF_INET6, a.As16(), syscall.SizeofSockaddrInet6
	if z := a.Zone(); z != "" {
		if n, err := strconv.Atoi(z); err == nil {
			sa.in6.Scope_id = uint32(n)
		} else if ifi, err := net.InterfaceByName(z); err == nil {
			sa.in6.Scope_id = uint32(ifi.Index)
		} else {
			return 0, err
		}
	}
	return syscall.AF_INET6, nil
}

// connect calls connect(2) on a non-blocking socket.
func (sa *sockaddr) connect(fd int) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa.in6)), sa.len)
	if e != 0 {
		return e
	}
	return nil
}

// noLinger is SO_LINGER on with a zero timeout. The kernel only reads it.
var noLinger syscall.Linger

// setNoLinger makes close(2) of fd send a reset rather than a FIN.
func setNoLinger(fd int) {
	_, _, _ = syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, syscall.SO_LINGER,
		uintptr(unsafe.Pointer(&noLinger)), unsafe.Sizeof(noLinger), 0)
}
