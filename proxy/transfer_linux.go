package proxy

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxChunk bounds one copy step: the bytes one splice takes from the source
// into the pipe, and how often progress is observed. The pipes are sized to
// hold it (as the runtime sizes its own splice pipes); smaller chunks cost
// measurably more CPU per byte.
const maxChunk = 1 << 20

// spliceFlags: never block on the pipe (the sockets are non-blocking
// already), and move pages rather than copy them where the kernel can.
const spliceFlags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE

// copyBuf is the size of the buffers a direction starts with; a read that
// fills one switches the direction to splice(2), and a read that does not
// (in splice mode, the rare read that follows a splice finding nothing)
// back to copying.
const copyBuf = 16 << 10

// pump moves one direction's bytes. It starts by copying through a pooled
// 16 KiB buffer (read(2), write(2)): for the few small messages of most
// connections that costs less than splicing. The first read that fills the
// buffer shows a bulk stream, and from then on bytes move with splice(2):
// from src into a kernel pipe, then from the pipe to dst, never entering
// user memory.
//
// Either way the read is also the readiness test: it takes what src holds,
// or reports EOF, an error or "nothing yet" (EAGAIN), in one system call;
// in splice mode a read(2) confirms "nothing yet" and EOF (see fillFD).
// The buffer or pipe comes from a pool and goes back before the direction
// waits for more bytes, so a waiting direction holds neither. A pump is used
// by one goroutine.
type pump struct {
	src, dst syscall.RawConn
	splice   bool    // bulk: splice instead of copying
	buf      *[]byte // copying: non-nil while bytes are in flight
	out      []byte  // copying: bytes read and not yet written
	pipe     *pipe   // splicing: non-nil while bytes are in flight
	held     int     // splicing: bytes in pipe
	moved    int64   // bytes flush wrote
	err      error   // outcome of the last callback
	fillFn   func(fd uintptr) bool
	flushFn  func(fd uintptr) bool
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBuf); return &b }}

func newPump(dst, src *net.TCPConn) (*pump, error) {
	p := &pump{}
	var err error
	if p.src, err = src.SyscallConn(); err != nil {
		return nil, err
	}
	if p.dst, err = dst.SyscallConn(); err != nil {
		return nil, err
	}
	p.fillFn, p.flushFn = p.fillFD, p.flushFD
	return p, nil
}

// fill waits in the runtime's poller until src has bytes, EOF or an error,
// honouring src's read deadline, and takes what src holds (at most
// maxChunk) into the pump. It returns nil with bytes held, io.EOF, or the
// error.
func (p *pump) fill() error {
	p.err = nil
	if err := p.src.Read(p.fillFn); err != nil {
		return err
	}
	return p.err
}

// fillFD is fill's callback: it returns false to wait for readability.
func (p *pump) fillFD(fd uintptr) bool {
	if !p.splice {
		return p.readFD(fd)
	}
	if p.pipe == nil {
		pp, err := getPipe()
		if err != nil {
			p.err = err
			return true
		}
		p.pipe = pp
	}
	for {
		n, err := rawSplice(int(fd), p.pipe.w, maxChunk)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == nil && n == 0:
			// Nothing yet, or EOF. But splice(2) also stops at TCP's
			// urgent mark (MSG_OOB) and never moves past it: EAGAIN while
			// the sender is open, 0 once it half-closed, with bytes still
			// queued behind the mark. read(2) steps over the urgent byte
			// (it is not part of the stream and is not forwarded), so it
			// has the last word: it takes those bytes, or confirms
			// "nothing yet" or EOF. That costs one call returning EAGAIN
			// per wait, next to splices taking tens of microseconds.
			putPipe(p.pipe)
			p.pipe = nil
			return p.readFD(fd)
		case err != nil:
			p.err = os.NewSyscallError("splice", err)
		default:
			p.held = int(n)
		}
		return true
	}
}

// flush writes the bytes held to dst, waiting for dst to accept them and
// honouring its write deadline. It returns how many it wrote; after an
// error the rest stays held, so a flush after a passed deadline goes on
// where this one stopped.
func (p *pump) flush() (int64, error) {
	p.err, p.moved = nil, 0
	if err := p.dst.Write(p.flushFn); err != nil {
		return p.moved, err
	}
	return p.moved, p.err
}

func (p *pump) flushFD(fd uintptr) bool {
	if len(p.out) > 0 {
		return p.writeFD(fd)
	}
	for p.held > 0 {
		n, err := rawSplice(p.pipe.r, int(fd), p.held)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN: // dst's send buffer is full
			return false
		case err != nil:
			p.err = os.NewSyscallError("splice", err)
			return true
		case n == 0:
			p.err = io.ErrShortWrite
			return true
		}
		p.held -= int(n)
		p.moved += n
	}
	return true
}

// readFD is fillFD while copying.
func (p *pump) readFD(fd uintptr) bool {
	if p.buf == nil {
		p.buf = bufPool.Get().(*[]byte)
	}
	for {
		n, err := rawRead(int(fd), *p.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			bufPool.Put(p.buf)
			p.buf = nil
			return false
		case err != nil:
			p.err = os.NewSyscallError("read", err)
		case n == 0:
			p.err = io.EOF
		default:
			p.out = (*p.buf)[:n]
			p.splice = n == len(*p.buf)
		}
		return true
	}
}

// writeFD is flushFD while copying; it gives the buffer back once empty.
func (p *pump) writeFD(fd uintptr) bool {
	for len(p.out) > 0 {
		n, err := rawWrite(int(fd), p.out)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			p.err = os.NewSyscallError("write", err)
			return true
		}
		p.out = p.out[n:]
		p.moved += int64(n)
	}
	bufPool.Put(p.buf)
	p.buf = nil
	return true
}

// release gives the buffer and the pipe back (a pipe with bytes left in it
// is closed instead).
func (p *pump) release() {
	if p.buf != nil {
		bufPool.Put(p.buf)
		p.buf, p.out = nil, nil
	}
	if p.pipe == nil {
		return
	}
	if p.held == 0 {
		putPipe(p.pipe)
	} else {
		p.pipe.close()
	}
	p.pipe, p.held = nil, 0
}

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

// rawRead, rawWrite and rawSplice are the pump's system calls, made
// without telling the scheduler (RawSyscall). A system call the scheduler
// knows of wakes the runtime's system monitor whenever the process was
// idle just before, and the monitor then polls every 20 µs for a while: on
// a proxy that sleeps between bursts of a stream, that was a thread switch
// per burst and 7–16% of the proxy's CPU per GB.
//
// The sockets and pipes are non-blocking, so no call waits for the
// network. It may still take a while: a send on veth runs the receiver's
// TCP processing inline. During a 12 Gb/s stream on a loaded 2-vCPU VM,
// splices took 63 µs on average and, rarely, a few milliseconds when the
// CPU was taken away mid-call. Meanwhile the goroutine keeps its P, and a
// stop-the-world waits for the call to return.
func rawRead(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return rawResult(r, e)
}

func rawWrite(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
	return rawResult(r, e)
}

func rawSplice(in, out, n int) (int64, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
	k, err := rawResult(r, e)
	return int64(k), err
}

func rawResult(r uintptr, e unix.Errno) (int, error) {
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
