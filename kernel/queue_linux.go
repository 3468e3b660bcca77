package kernel

// The held-SYN queue: the first SYN of an unpinned client of a service
// that classifies by source address is queued by the kernel (NFQUEUE)
// instead of reaching the listener; handoff pins the client and releases
// the SYN marked for its backend, so that the packet goes on through the
// same DNAT rules as every later connection of the client.
//
// The queue is read over a NETLINK_NETFILTER socket with the project's own
// netlink framing (pinsock_linux.go): the Go module proxy refuses the
// go-nfqueue module, and the protocol is small (bind, parameters, packet
// notifications, verdicts).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/dataplane"
)

// nfnetlink_queue protocol (linux/netfilter/nfnetlink_queue.h).
const (
	nfnlSubsysQueue = 3

	nfqnlMsgPacket  = 0
	nfqnlMsgVerdict = 1
	nfqnlMsgConfig  = 2

	nfqaCfgCmd      = 1
	nfqaCfgParams   = 2
	nfqaCfgMaxlen   = 3
	nfqaCfgMask     = 4
	nfqaCfgFlags    = 5
	nfqnlCfgCmdBind = 1
	nfqnlCopyPacket = 2

	nfqaCfgFFailOpen = 1 << 0

	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2
	nfqaMark       = 3
	nfqaPayload    = 10

	nfDrop   = 0
	nfAccept = 1
)

const (
	// queueCopyRange is how much of each held packet the kernel copies to
	// handoff: an IPv6 header and the TCP ports.
	queueCopyRange = 64
	// DefaultQueueLen is how many SYNs the kernel holds at most; past it
	// (handoff stalled, or a flood) SYNs pass unheld to the listener.
	DefaultQueueLen = 4096
	// queueWorkers decide held SYNs in parallel: a decision pins, a
	// netlink round trip of a few microseconds, which a Sync in progress
	// may delay.
	queueWorkers = 4
	queueRcvBuf  = 8 << 20
)

// Decide pins the client of a held SYN and returns its backend; ok false
// lets the SYN through unmarked, to the listener. It is called from
// several goroutines at once.
type Decide = func(ctx context.Context, syn dataplane.HeldSYN) (backend string, ok bool)

// errQueueBusy says that another process reads the queue.
var errQueueBusy = errors.New("another process reads the queue")

// HoldSYNs binds the held-SYN queue (Options.Queue) and returns the
// function that serves it: serve calls decide for each SYN of the
// services that hold SYNs and releases it marked for the backend decide
// returns, until ctx ends (then it returns nil). HoldSYNs fails when the
// queue cannot be bound (another process holds it, or the kernel lacks
// nfnetlink_queue); Sync should then not be asked to hold SYNs.
//
// While nothing reads the queue the kernel lets SYNs pass to the listener
// (the rule's --queue-bypass), and a full queue does too (fail-open), so a
// stalled or stopped handoff never black-holes a new client: SYNs queued
// when handoff dies are dropped by the kernel, and the clients'
// retransmissions take the listener.
func (d *Dataplane) HoldSYNs() (serve func(ctx context.Context, decide Decide) error, err error) {
	q, err := openQueue(d.ns, d.o.queue())
	if err != nil {
		return nil, fmt.Errorf("kernel: held-SYN queue %d: %w", d.o.queue(), err)
	}
	return func(ctx context.Context, decide Decide) error {
		stop := context.AfterFunc(ctx, q.close)
		defer stop()
		defer q.close()
		d.log.WithField("queue", d.o.queue()).Info("holding the first SYN of new clients of source-classified services")
		work := make(chan queued, DefaultQueueLen)
		var wg sync.WaitGroup
		for range queueWorkers {
			wg.Go(func() {
				for p := range work {
					d.decideHeld(ctx, q, p, decide)
				}
			})
		}
		err := q.read(func(p queued) { work <- p })
		close(work)
		wg.Wait()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("kernel: held-SYN queue %d: %w", d.o.queue(), err)
	}, nil
}

// decideHeld decides one held SYN and sends its verdict.
func (d *Dataplane) decideHeld(ctx context.Context, q *queue, p queued, decide Decide) {
	mark := p.mark
	if syn, ok := d.heldService(p); ok {
		if backend, ok := decide(ctx, syn); ok {
			if slot, ok := d.slotOf(syn.Service, backend); ok {
				mark = mark&^d.layout.mask | d.layout.mark(slot).value
			}
		}
	}
	if err := q.verdict(p.id, nfAccept, mark); err != nil && ctx.Err() == nil {
		d.held.failed.Add(1)
		d.log.WithError(err).Debug("held SYN: verdict failed")
	}
}

// heldService finds the service whose VIP the held packet is for.
func (d *Dataplane) heldService(p queued) (dataplane.HeldSYN, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, s := range d.svcs {
		if !s.hold || s.vip.Port() != p.dst.Port() || familyOf(p.dst.Addr()) != s.fam {
			continue
		}
		if s.vip.Addr().IsUnspecified() || s.vip.Addr() == p.dst.Addr() {
			return dataplane.HeldSYN{Service: s.name, Client: p.src.Addr(), VIP: p.dst}, true
		}
	}
	return dataplane.HeldSYN{}, false
}

// slotOf returns the slot of a service's backend.
func (d *Dataplane) slotOf(service, backend string) (uint32, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if s := d.svcs[service]; s != nil {
		if b := s.byName[backend]; b != nil {
			return b.slot, true
		}
	}
	return 0, false
}

// heldStats counts what Hold did.
type heldStats struct {
	failed atomic.Uint64 // verdicts the kernel refused
}

// queued is one held packet as the kernel notified it.
type queued struct {
	id       uint32
	mark     uint32
	src, dst netip.AddrPort
}

// queue is a bound NFQUEUE netlink socket. read runs in one goroutine;
// verdict may be called from many.
type queue struct {
	f   *os.File // non-blocking, in the runtime poller: close ends read
	rc  syscall.RawConn
	num uint16

	mu  sync.Mutex // serializes sends
	seq uint32

	closeOnce sync.Once
}

func openQueue(ns netns.NsHandle, num uint16) (*queue, error) {
	var fd int
	err := inNetNS(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, queueRcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, queueRcvBuf)
	}
	f := os.NewFile(uintptr(fd), "nfqueue")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	q := &queue{f: f, rc: rc, num: num}
	if err := q.configure(); err != nil {
		f.Close()
		return nil, err
	}
	return q, nil
}

// configure binds the queue and sets its parameters: copy the first
// queueCopyRange bytes, hold at most DefaultQueueLen packets, accept when
// full.
func (q *queue) configure() error {
	var cmd [4]byte
	cmd[0] = nfqnlCfgCmdBind
	if err := q.request(nfqnlMsgConfig, appendAttr(nil, nfqaCfgCmd, cmd[:]...)); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return errQueueBusy
		}
		return fmt.Errorf("bind: %w", err)
	}
	var params [5]byte
	binary.BigEndian.PutUint32(params[:4], queueCopyRange)
	params[4] = nfqnlCopyPacket
	attrs := appendAttr(nil, nfqaCfgParams, params[:]...)
	attrs = appendAttr(attrs, nfqaCfgMaxlen, be32(DefaultQueueLen)...)
	attrs = appendAttr(attrs, nfqaCfgMask, be32(nfqaCfgFFailOpen)...)
	attrs = appendAttr(attrs, nfqaCfgFlags, be32(nfqaCfgFFailOpen)...)
	if err := q.request(nfqnlMsgConfig, attrs); err != nil {
		return fmt.Errorf("parameters: %w", err)
	}
	return nil
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// message builds a queue message of type typ with attrs.
func (q *queue) message(typ uint16, flags uint16, attrs []byte) []byte {
	q.seq++
	b := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+4+len(attrs))
	b = append(b, unix.AF_UNSPEC, 0 /* NFNETLINK_V0 */, byte(q.num>>8), byte(q.num))
	b = append(b, attrs...)
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], nfnlSubsysQueue<<8|typ)
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], q.seq)
	return b
}

// request sends a message asking for an ack and waits for it. It runs
// before read starts.
func (q *queue) request(typ uint16, attrs []byte) error {
	b := q.message(typ, unix.NLM_F_REQUEST|unix.NLM_F_ACK, attrs)
	seq := q.seq
	if err := q.send(b); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, err := q.recv(buf, true)
		if err != nil {
			return err
		}
		for m := range messages(buf[:n]) {
			if m.typ == unix.NLMSG_ERROR && m.seq == seq && len(m.data) >= 4 {
				if errno := -int32(binary.NativeEndian.Uint32(m.data)); errno != 0 {
					return syscall.Errno(errno)
				}
				return nil
			}
		}
	}
	return errors.New("no answer from the kernel")
}

// verdict releases packet id with the given verdict and mark.
func (q *queue) verdict(id, verdict, mark uint32) error {
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[0:], verdict)
	binary.BigEndian.PutUint32(hdr[4:], id)
	attrs := appendAttr(nil, nfqaVerdictHdr, hdr[:]...)
	attrs = appendAttr(attrs, nfqaMark, be32(mark)...)
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.send(q.message(nfqnlMsgVerdict, unix.NLM_F_REQUEST, attrs))
}

func (q *queue) send(b []byte) error {
	var serr error
	err := q.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

// recv reads one datagram, waiting for it when wait is set.
func (q *queue) recv(buf []byte, wait bool) (int, error) {
	var n int
	var rerr error
	err := q.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
		return !wait || rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

// read hands every held packet to fn until the socket is closed. When the
// socket's buffer overflowed, notifications were lost and their packets
// would stay held: read then releases, unmarked, every packet the kernel
// queued up to the last one it did notify (a later notification tells
// that id), so that they reach the listener.
func (q *queue) read(fn func(queued)) error {
	buf := make([]byte, 1<<16)
	lost := false
	for {
		n, err := q.recv(buf, true)
		switch {
		case errors.Is(err, unix.ENOBUFS):
			lost = true
			continue
		case err != nil:
			return err
		}
		for m := range messages(buf[:n]) {
			if m.typ != nfnlSubsysQueue<<8|nfqnlMsgPacket || len(m.data) < 4 {
				continue
			}
			p, ok := parseQueued(m.data[4:])
			if !ok {
				continue
			}
			if lost {
				lost = false
				q.releaseUpTo(p.id - 1)
			}
			fn(p)
		}
	}
}

// releaseUpTo accepts every held packet with an id up to id.
func (q *queue) releaseUpTo(id uint32) {
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[0:], nfAccept)
	binary.BigEndian.PutUint32(hdr[4:], id)
	q.mu.Lock()
	defer q.mu.Unlock()
	_ = q.send(q.message(3 /* NFQNL_MSG_VERDICT_BATCH */, unix.NLM_F_REQUEST, appendAttr(nil, nfqaVerdictHdr, hdr[:]...)))
}

func (q *queue) close() { q.closeOnce.Do(func() { q.f.Close() }) }

// nlMessage is one netlink message of a datagram.
type nlMessage struct {
	typ  uint16
	seq  uint32
	data []byte
}

// messages iterates over the netlink messages of a datagram.
func messages(b []byte) func(yield func(nlMessage) bool) {
	return func(yield func(nlMessage) bool) {
		ne := binary.NativeEndian
		for len(b) >= unix.SizeofNlMsghdr {
			l := int(ne.Uint32(b[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return
			}
			if !yield(nlMessage{typ: ne.Uint16(b[4:6]), seq: ne.Uint32(b[8:12]), data: b[unix.SizeofNlMsghdr:l]}) {
				return
			}
			b = b[min(nlAlign(l), len(b)):]
		}
	}
}

// parseQueued decodes the attributes of a packet notification: its id,
// mark, and the addresses and ports of its IPv4 or IPv6 TCP header.
func parseQueued(attrs []byte) (queued, bool) {
	var p queued
	var payload []byte
	haveID := false
	for typ, val := range attributes(attrs) {
		switch typ {
		case nfqaPacketHdr:
			if len(val) >= 4 {
				p.id, haveID = binary.BigEndian.Uint32(val), true
			}
		case nfqaMark:
			if len(val) == 4 {
				p.mark = binary.BigEndian.Uint32(val)
			}
		case nfqaPayload:
			payload = val
		}
	}
	if !haveID || len(payload) == 0 {
		return p, false
	}
	var ok bool
	p.src, p.dst, ok = tcpAddrs(payload)
	return p, ok
}

// tcpAddrs reads the source and destination of an IPv4 or IPv6 TCP
// packet.
func tcpAddrs(b []byte) (src, dst netip.AddrPort, ok bool) {
	if len(b) < 1 {
		return src, dst, false
	}
	var sa, da netip.Addr
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0xf) * 4
		if len(b) < 20 || ihl < 20 || len(b) < ihl+4 || b[9] != unix.IPPROTO_TCP {
			return src, dst, false
		}
		sa = netip.AddrFrom4([4]byte(b[12:16]))
		da = netip.AddrFrom4([4]byte(b[16:20]))
		l4 = b[ihl:]
	case 6:
		if len(b) < 44 || b[6] != unix.IPPROTO_TCP { // no extension headers on a SYN we hold
			return src, dst, false
		}
		sa = netip.AddrFrom16([16]byte(b[8:24]))
		da = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	default:
		return src, dst, false
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(l4[0:2])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(l4[2:4])), true
}
