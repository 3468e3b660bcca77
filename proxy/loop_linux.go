package proxy

import (
	"encoding/binary"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// loop is one event loop: an epoll instance holding listeners and
// connections, run by one goroutine. The goroutine waits in the runtime's
// poller on the epoll descriptor itself (readable when an event is ready),
// takes what is ready without blocking, and handles it; timers wake it
// through the descriptor's read deadline, and other goroutines through an
// eventfd in the set. Everything on the loop runs on that goroutine,
// except what the mutex guards.
type loop struct {
	srv  *Server
	ep   int      // the epoll instance
	epf  *os.File // ep, for waiting in the runtime's poller
	evfd int      // eventfd in ep (edge-triggered, never read): a write wakes the loop

	mu     sync.Mutex
	slots  []slot  // what each epoll registration's data points to
	free   []int32 // free slots
	inbox  []func()
	parked bool // the loop waits in the poller: a post must write evfd
	closed bool // the loop ended: posts are refused
	queued atomic.Int32

	// The loop's own, touched by its goroutine only.
	events   []unix.EpollEvent
	objs     []handler
	now      int64 // nanoseconds since srv.start, read once per wakeup
	timers   timerHeap
	deadline int64 // the epoll file's read deadline, 0 for none
	again    []*dir
	backlog  bool    // a listener stopped accepting with connections left
	live     session // sentinel of the list of live sessions
	spare    *[]byte // a copy buffer for the next read
	pollFn   func(fd uintptr) bool
	// timeWaits destroys the TIME_WAIT sockets of transparent sessions.
	timeWaits timeWaits
}

// handler is what an epoll registration points to: a connection, or a
// listener in this loop.
type handler interface {
	event(l *loop, ev uint32)
}

// slot is one registration; gen tells a stale event (its registration
// ended, the slot was reused) from a current one.
type slot struct {
	gen uint32
	h   handler
}

// evfdSlot is the slot of the loop's eventfd.
const evfdSlot = 0

// readEvents are the events an accepted connection is registered for,
// edge-triggered: readable (and urgent data, and the peer's FIN). A fresh
// socket is writable at once, and an event saying so would wake the loop
// for nothing; writable is added (armOut) when a write first finds the
// socket full. connEvents, with writable, are a dialed connection's: its
// first writable event says the connect succeeded.
const (
	readEvents = unix.EPOLLIN | unix.EPOLLPRI | unix.EPOLLRDHUP | unix.EPOLLET
	connEvents = readEvents | unix.EPOLLOUT
)

func newLoop(srv *Server) (*loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: evfdSlot}); err != nil {
		unix.Close(ep)
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	// The epoll descriptor waits in the runtime's poller, which takes
	// non-blocking descriptors only.
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		unix.Close(evfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	l := &loop{
		srv:    srv,
		ep:     ep,
		epf:    os.NewFile(uintptr(ep), "epoll"),
		evfd:   evfd,
		slots:  make([]slot, 1, 64), // slot 0: evfd
		events: make([]unix.EpollEvent, 128),
		objs:   make([]handler, 128),
	}
	l.live.prev, l.live.next = &l.live, &l.live
	l.pollFn = l.poll
	return l, nil
}

// run is the loop's goroutine: it returns when the loop is told to exit,
// after ending what it still holds.
func (l *loop) run() {
	rc, err := l.epf.SyscallConn()
	if err != nil {
		panic(err) // an *os.File always has one
	}
	for !l.exiting() {
		err := rc.Read(l.pollFn)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// A timer is due: clear the deadline so that the next Read
			// runs poll, which fires it.
			l.deadline = 0
			l.epf.SetReadDeadline(time.Time{})
			continue
		}
		if err != nil {
			panic(err) // only Close makes the poller refuse, and run closes last
		}
	}
	l.shutdown()
}

// exiting reports whether the loop was told to exit.
func (l *loop) exiting() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// poll is called by the runtime's poller with the epoll descriptor ready
// (or at first): it handles everything ready until nothing is, and returns
// false to wait in the poller again, or true to return to run (exit).
func (l *loop) poll(uintptr) bool {
	l.mu.Lock()
	l.parked = false
	l.mu.Unlock()
	for {
		n, err := rawEpollPoll(l.ep, l.events)
		if err != nil && err != unix.EINTR {
			panic(os.NewSyscallError("epoll_pwait", err)) // EBADF, EFAULT, EINVAL: a bug
		}
		l.now = l.srv.clock()
		if n > 0 {
			l.dispatch(n)
		}
		if l.queued.Load() > 0 {
			if l.runInbox() {
				return true
			}
		}
		l.fireTimers()
		if len(l.again) > 0 {
			l.runAgain()
			continue
		}
		if n == len(l.events) || l.backlog {
			l.backlog = false
			continue // more may be ready
		}
		// The set was drained when it was polled, and whatever became
		// ready since has woken the poller (every event that enters the
		// set does), so wait there without polling again to find it
		// empty: that saves a system call per wakeup. Not so for a
		// listener left with connections to accept: it is level-
		// triggered, and stays in the set's ready list without waking the
		// poller again (backlog). Nor when a post (or exit) came
		// meanwhile.
		l.mu.Lock()
		if len(l.inbox) > 0 || l.closed {
			l.mu.Unlock()
			continue
		}
		l.parked = true
		l.mu.Unlock()
		l.setDeadline()
		return false
	}
}

// dispatch handles n events: it resolves their registrations first, under
// the mutex, then calls each without it.
func (l *loop) dispatch(n int) {
	l.mu.Lock()
	for i := range n {
		ev := &l.events[i]
		s, gen := ev.Fd, uint32(ev.Pad)
		l.objs[i] = nil
		if s != evfdSlot && int(s) < len(l.slots) && l.slots[s].gen == gen {
			l.objs[i] = l.slots[s].h
		}
	}
	l.mu.Unlock()
	for i := range n {
		if h := l.objs[i]; h != nil {
			l.objs[i] = nil
			h.event(l, l.events[i].Events)
		}
	}
}

// register adds fd to the loop's epoll set for h with events, and returns
// its slot. It may be called from any goroutine.
func (l *loop) register(fd int, h handler, events uint32, slotp *int32) error {
	l.mu.Lock()
	var s int32
	if n := len(l.free); n > 0 {
		s = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		s = int32(len(l.slots))
		l.slots = append(l.slots, slot{})
	}
	l.slots[s].h = h
	gen := l.slots[s].gen
	// Stored before fd is in the set, under l.mu: the loop may handle
	// its first event, and read the slot, before register returns.
	*slotp = s
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: events, Fd: s, Pad: int32(gen)}
	if err := rawEpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.unregister(s)
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// unregister frees slot s: events of its registration that are still on
// their way are dropped. It may be called from any goroutine; the caller
// then closes the descriptor (which ends its registration) or deletes it
// from the set.
func (l *loop) unregister(s int32) {
	l.mu.Lock()
	l.slots[s].h = nil
	l.slots[s].gen++
	l.free = append(l.free, s)
	l.mu.Unlock()
}

// post runs fn on the loop soon; it reports false (and does not run fn)
// when the loop has ended. It may be called from any goroutine but the
// loop's.
func (l *loop) post(fn func()) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.inbox = append(l.inbox, fn)
	l.queued.Add(1)
	wake := l.parked
	l.parked = false
	l.mu.Unlock()
	if wake {
		l.wake()
	}
	return true
}

// wake makes the epoll descriptor readable, which ends the loop's wait in
// the poller.
func (l *loop) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	rawWrite(l.evfd, one[:])
}

// runInbox runs what other goroutines posted; it reports whether the loop
// was told to exit.
func (l *loop) runInbox() bool {
	l.mu.Lock()
	fns := l.inbox
	l.inbox = nil
	l.queued.Store(0)
	closed := l.closed
	l.mu.Unlock()
	for i, fn := range fns {
		fn()
		fns[i] = nil
	}
	return closed
}

// exit tells the loop to end; the caller waits for run to return.
func (l *loop) exit() {
	l.mu.Lock()
	l.closed = true
	wake := l.parked
	l.parked = false
	l.queued.Add(1)
	l.mu.Unlock()
	if wake {
		l.wake()
	}
}

// shutdown ends every live session and closes the loop's descriptors.
// Connections a goroutine owns stay open (their owner closes them), but
// their waits fail from now on.
func (l *loop) shutdown() {
	l.runInbox() // the posts that came before exit
	for s := l.live.next; s != &l.live; s = l.live.next {
		s.end(ErrServerClosed)
	}
	l.mu.Lock()
	var owned []*Conn
	for i := range l.slots {
		if c, ok := l.slots[i].h.(*Conn); ok {
			owned = append(owned, c)
		}
	}
	l.mu.Unlock()
	for _, c := range owned {
		c.loopEnded()
	}
	l.epf.Close()
	rawClose(l.evfd)
	l.timeWaits.close()
}

// setDeadline makes the poller wake the loop for its next timer.
func (l *loop) setDeadline() {
	next, ok := l.timers.next()
	if !ok || l.deadline != 0 && l.deadline <= next {
		return
	}
	l.deadline = next
	l.epf.SetReadDeadline(l.srv.start.Add(time.Duration(next)))
}

// fireTimers runs the timers that are due.
func (l *loop) fireTimers() {
	for {
		t := l.timers.due(l.now)
		if t == nil {
			return
		}
		t.owner.expire(l)
	}
}

// runAgain continues the directions that stopped for fairness with bytes
// still to move.
func (l *loop) runAgain() {
	ds := l.again
	l.again = nil
	for i, d := range ds {
		ds[i] = nil
		d.queued = false
		d.s.pump(d)
	}
	if l.again == nil {
		l.again = ds[:0]
	}
}

// takeBuf returns a copy buffer for a direction to keep while its bytes
// wait for the receiver.
func (l *loop) takeBuf() *[]byte {
	if b := l.spare; b != nil {
		l.spare = nil
		return b
	}
	return bufPool.Get().(*[]byte)
}

// giveBuf takes back a buffer whose bytes are all written.
func (l *loop) giveBuf(b *[]byte) {
	if l.spare == nil {
		l.spare = b
		return
	}
	bufPool.Put(b)
}

// timer is one deadline on a loop's heap.
type timer struct {
	when  int64 // loop clock
	idx   int   // in the heap; -1 when not on it
	owner timerOwner
}

// timerOwner is told when its timer is due.
type timerOwner interface {
	expire(l *loop)
}

// timerHeap is a min-heap of timers by when.
type timerHeap []*timer

func (h *timerHeap) next() (int64, bool) {
	if len(*h) == 0 {
		return 0, false
	}
	return (*h)[0].when, true
}

// set puts t on the heap at when, or moves it there.
func (h *timerHeap) set(t *timer, when int64) {
	if t.idx >= 0 && t.idx < len(*h) && (*h)[t.idx] == t {
		t.when = when
		h.fix(t.idx)
		return
	}
	t.when = when
	t.idx = len(*h)
	*h = append(*h, t)
	h.up(t.idx)
}

// stop takes t off the heap if it is on it.
func (h *timerHeap) stop(t *timer) {
	i := t.idx
	if i < 0 || i >= len(*h) || (*h)[i] != t {
		return
	}
	last := len(*h) - 1
	if i != last {
		h.swap(i, last)
	}
	(*h)[last] = nil
	*h = (*h)[:last]
	t.idx = -1
	if i != last {
		h.fix(i)
	}
}

// due pops and returns the earliest timer if it is due at now.
func (h *timerHeap) due(now int64) *timer {
	if len(*h) == 0 || (*h)[0].when > now {
		return nil
	}
	t := (*h)[0]
	h.stop(t)
	return t
}

func (h timerHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}

func (h timerHeap) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h timerHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].when <= h[i].when {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h timerHeap) down(i int) bool {
	start := i
	for {
		c := 2*i + 1
		if c >= len(h) {
			break
		}
		if r := c + 1; r < len(h) && h[r].when < h[c].when {
			c = r
		}
		if h[i].when <= h[c].when {
			break
		}
		h.swap(i, c)
		i = c
	}
	return i > start
}
