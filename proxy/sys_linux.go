package proxy

import (
	"net/netip"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The event loops' system calls are raw (RawSyscall): every descriptor they
// touch is non-blocking, so no call waits for the network, and a call the
// scheduler knows of costs more (entersyscall/exitsyscall) and wakes the
// runtime's system monitor whenever the process was idle just before
// (which then polls every 20 µs for a while: on a proxy that sleeps
// between bursts, that was a thread switch per burst and 7–16% of the
// proxy's CPU per GB). A call may still take a while: a send on veth runs
// the receiver's TCP processing inline, and during a 12 Gb/s stream on a
// loaded 2-vCPU VM splices took 63 µs on average and, rarely, a few
// milliseconds when the CPU was taken away mid-call. Meanwhile the loop
// keeps its P, and a stop-the-world waits for the call to return.

// rawRecv and rawSend are read and write for sockets: recvfrom(2) and
// sendto(2) skip the file layer's position lock and iterators that read(2)
// and write(2) go through (about 3% of the proxy's CPU per connection), and
// MSG_NOSIGNAL spares a write to a reset peer the SIGPIPE.
func rawRecv(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), 0, 0, 0)
	return rawResult(r, e)
}

func rawSend(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), unix.MSG_NOSIGNAL, 0, 0)
	return rawResult(r, e)
}

func rawWrite(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return rawResult(r, e)
}

// spliceFlags: never block on the pipe (the sockets are non-blocking
// already), and move pages rather than copy them where the kernel can.
const spliceFlags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE

func rawSplice(in, out, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
	return rawResult(r, e)
}

// rawAccept accepts a connection of the listener fd, non-blocking and
// close-on-exec, and returns it with the client's address.
func rawAccept(fd int) (int, netip.AddrPort, error) {
	var rsa unix.RawSockaddrAny
	l := uint32(unsafe.Sizeof(rsa))
	r, _, e := unix.RawSyscall6(unix.SYS_ACCEPT4, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l)),
		unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
	if e != 0 {
		return -1, netip.AddrPort{}, e
	}
	return int(r), sockaddrAddrPort(&rsa), nil
}

func rawSocket(family int) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_SOCKET, uintptr(family), unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	return rawResult(r, e)
}

// rawConnect starts connecting fd to ap; a non-blocking socket returns
// EINPROGRESS.
func rawConnect(fd int, ap netip.AddrPort) error {
	var sa [unix.SizeofSockaddrInet6]byte
	n := putSockaddr(&sa, ap)
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(n))
	if e != 0 {
		return e
	}
	return nil
}

// rawBind binds fd to ap.
func rawBind(fd int, ap netip.AddrPort) error {
	var sa [unix.SizeofSockaddrInet6]byte
	n := putSockaddr(&sa, ap)
	_, _, e := unix.RawSyscall(unix.SYS_BIND, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(n))
	if e != 0 {
		return e
	}
	return nil
}

func rawSetsockoptInt(fd, level, opt, v int) error {
	i := int32(v)
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(unsafe.Pointer(&i)), 4, 0)
	if e != 0 {
		return e
	}
	return nil
}

func rawShutdownWrite(fd int) {
	unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), unix.SHUT_WR, 0)
}

func rawClose(fd int) {
	unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}

// rawLingerZero makes the next close of fd send an RST.
func rawLingerZero(fd int) {
	l := unix.Linger{Onoff: 1, Linger: 0}
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
}

func rawEpollCtl(ep, op, fd int, ev *unix.EpollEvent) error {
	_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(ep), uintptr(op), uintptr(fd), uintptr(unsafe.Pointer(ev)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// rawEpollPoll returns the events ready now (it never waits).
func rawEpollPoll(ep int, evs []unix.EpollEvent) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&evs[0])), uintptr(len(evs)), 0, 0, 0)
	return rawResult(r, e)
}

func rawResult(r uintptr, e unix.Errno) (int, error) {
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// putSockaddr writes ap as a sockaddr_in or sockaddr_in6 into b and
// returns its length.
func putSockaddr(b *[unix.SizeofSockaddrInet6]byte, ap netip.AddrPort) int {
	port := ap.Port()
	if a := ap.Addr(); a.Is4() {
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(b))
		sa.Family = unix.AF_INET
		putPort(&sa.Port, port)
		sa.Addr = a.As4()
		return unix.SizeofSockaddrInet4
	}
	sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(b))
	sa.Family = unix.AF_INET6
	putPort(&sa.Port, port)
	sa.Addr = ap.Addr().As16()
	return unix.SizeofSockaddrInet6
}

// sockaddrAddrPort reads a sockaddr_in or sockaddr_in6; anything else is
// the zero AddrPort.
func sockaddrAddrPort(rsa *unix.RawSockaddrAny) netip.AddrPort {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), getPort(&sa.Port))
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), getPort(&sa.Port))
	}
	return netip.AddrPort{}
}

// putPort and getPort write and read a sockaddr's port, which is in
// network byte order.
func putPort(p *uint16, port uint16) {
	b := (*[2]byte)(unsafe.Pointer(p))
	b[0], b[1] = byte(port>>8), byte(port)
}

func getPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// maxChunk bounds one copy step in bulk mode: the bytes one splice takes
// from the source into the pipe, and how often progress is observed. The
// pipes are sized to hold it (as the runtime sizes its own splice pipes);
// smaller chunks cost measurably more CPU per byte.
const maxChunk = 1 << 20

// copyBuf is the size of the buffers a direction starts with; a read that
// fills one switches the direction to splice(2), and a read that does not
// (in splice mode, the rare read that follows a splice finding nothing)
// back to copying.
const copyBuf = 16 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

// pipe is a kernel pipe used to splice between two sockets; it is empty
// whenever it is in the pool.
type pipe struct {
	r, w    int
	cleanup runtime.Cleanup // closes both ends if the pool drops the pipe
}

var pipes sync.Pool

func getPipe() (*pipe, error) {
	if p, ok := pipes.Get().(*pipe); ok {
		return p, nil
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// Best effort: past /proc/sys/fs/pipe-max-size, or pipe-user-pages-soft
	// for an unprivileged user, the pipe keeps its default 64 KiB.
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, maxChunk)
	p := &pipe{r: fds[0], w: fds[1]}
	p.cleanup = runtime.AddCleanup(p, closeFDs, fds)
	return p, nil
}

func putPipe(p *pipe) { pipes.Put(p) }

func (p *pipe) close() {
	p.cleanup.Stop()
	closeFDs([2]int{p.r, p.w})
}

func closeFDs(fds [2]int) {
	unix.Close(fds[0])
	unix.Close(fds[1])
}
