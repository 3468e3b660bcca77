package kernel

// Root tests of PinBatch, Flush and Count against real sets, each in a
// fresh network namespace.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// savedEntries returns the entries of set as `ipset save` shows them.
func savedEntries(t testing.TB, ns *nstest.NS, set string) map[netip.Addr]member {
	t.Helper()
	re := regexp.MustCompile(`^add (\S+) (\S+)(?: timeout (\d+))?(?: comment "([^"]*)")?$`)
	out := map[netip.Addr]member{}
	for l := range strings.SplitSeq(ns.Run(t, "ipset", "save", set), "\n") {
		if !strings.HasPrefix(l, "add ") {
			continue
		}
		m := re.FindStringSubmatch(l)
		if m == nil || m[1] != set {
			t.Fatalf("ipset save %s: cannot parse %q", set, l)
		}
		ip := netip.MustParseAddr(m[2])
		to, _ := strconv.Atoi(m[3])
		out[ip] = member{ip: ip, timeout: uint32(to), comment: m[4]}
	}
	return out
}

func TestNSPinBatch(t *testing.T) {
	ns, d, _ := nsLab(t, "kb-", Options{})
	ctx := context.Background()
	mustSync(t, d, labState(3, time.Hour, 10000))

	// 3000 clients over be0 and be1 with the service's TTL or their own,
	// a few IPv6 ones, keys that need cleaning, and one client pinned
	// twice (the second pin wins).
	type want struct {
		set     string
		timeout uint32
		comment string
	}
	wants := map[netip.Addr]want{}
	var pins []dataplane.Pin
	for i := range 3000 {
		ip := netip.AddrFrom4([4]byte{198, 18, 10 + byte(i>>8), byte(i)})
		p := dataplane.Pin{Service: "web", Backend: fmt.Sprintf("be%d", i%2), Client: ip, Key: "src=" + ip.String()}
		w := want{set: "ho-web-" + p.Backend, timeout: 3600, comment: p.Key}
		switch i % 3 {
		case 1:
			p.TTL = time.Duration(100+i%1000) * time.Second
			w.timeout = uint32(100 + i%1000)
		case 2:
			p.TTL = 1500 * time.Millisecond
			w.timeout = 2
		}
		if i%500 == 7 {
			p.Key = "sni=\"ä\".example"
			w.comment = "sni=____.example" // two quotes, two bytes of ä
		}
		pins = append(pins, p)
		wants[ip] = w
	}
	twice := pins[10].Client
	pins = append(pins, dataplane.Pin{Service: "web", Backend: "be0", Client: twice, Key: "again", TTL: time.Minute})
	wants[twice] = want{set: "ho-web-be0", timeout: 60, comment: "again"}
	for i := range 10 {
		ip := netip.MustParseAddr(fmt.Sprintf("2001:2:0:9::%x", i+1))
		pins = append(pins, dataplane.Pin{Service: "web6", Backend: "be1", Client: ip, Key: "v6"})
		wants[ip] = want{set: "ho6-web6-be1", timeout: 3600, comment: "v6"}
	}
	if err := d.PinBatch(ctx, pins); err != nil {
		t.Fatalf("PinBatch: %v", err)
	}

	got := map[string]map[netip.Addr]member{}
	for _, set := range []string{"ho-web-be0", "ho-web-be1", "ho-web-be2", "ho6-web6-be1"} {
		got[set] = savedEntries(t, ns, set)
	}
	perSet := map[string]int{}
	for ip, w := range wants {
		perSet[w.set]++
		m, ok := got[w.set][ip]
		if !ok {
			t.Errorf("%s not in %s", ip, w.set)
			continue
		}
		// The kernel shows the time left: allow for the test's pace.
		if m.timeout > w.timeout || m.timeout+3 < w.timeout || m.comment != w.comment {
			t.Errorf("%s in %s: timeout %d comment %q, want timeout %d comment %q", ip, w.set, m.timeout, m.comment, w.timeout, w.comment)
		}
	}
	for set, n := range perSet {
		if len(got[set]) != n {
			t.Errorf("%s holds %d entries, want %d", set, len(got[set]), n)
		}
	}
	if n := len(got["ho-web-be2"]); n != 0 {
		t.Errorf("ho-web-be2 holds %d entries, want none", n)
	}

	counts, err := d.Count(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if w := map[string]int{"be0": 1500, "be1": 1500, "be2": 0}; fmt.Sprint(counts) != fmt.Sprint(w) {
		t.Errorf("Count = %v, want %v", counts, w)
	}

	// Flush empties exactly one set.
	if err := d.Flush(ctx, "web", "be0"); err != nil {
		t.Fatal(err)
	}
	if n := len(savedEntries(t, ns, "ho-web-be0")); n != 0 {
		t.Errorf("%d entries left in ho-web-be0 after Flush", n)
	}
	if n := len(savedEntries(t, ns, "ho-web-be1")); n != 1500 {
		t.Errorf("ho-web-be1 holds %d entries after flushing be0, want 1500", n)
	}
	if n := len(savedEntries(t, ns, "ho6-web6-be1")); n != 10 {
		t.Errorf("ho6-web6-be1 holds %d entries after flushing web/be0, want 10", n)
	}
	counts, err = d.Count(ctx, "web")
	if err != nil || counts["be0"] != 0 || counts["be1"] != 1500 {
		t.Errorf("Count after Flush = %v, %v", counts, err)
	}
	if err := d.Flush(ctx, "web", "nope"); !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("Flush of an unknown backend: %v", err)
	}
	if _, err := d.Count(ctx, "nope"); !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("Count of an unknown service: %v", err)
	}
}

func TestNSPinBatchErrors(t *testing.T) {
	ns, d, _ := nsLab(t, "kb-", Options{})
	ctx := context.Background()
	mustSync(t, d, labState(2, time.Hour, 5))

	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 20, byte(i)}) }
	var pins []dataplane.Pin
	for i := range 8 {
		pins = append(pins, dataplane.Pin{Service: "web", Backend: "be0", Client: client(i)})
	}
	pins = append(pins,
		dataplane.Pin{Service: "web", Backend: "nope", Client: client(100)},
		dataplane.Pin{Service: "nosvc", Backend: "be0", Client: client(101)},
		dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("2001:2::5")},
		dataplane.Pin{Service: "web", Backend: "be1", Client: client(102)},
		dataplane.Pin{Service: "web", Backend: "be1", Client: client(103)},
	)
	err := d.PinBatch(ctx, pins)
	if err == nil {
		t.Fatal("PinBatch reported no error")
	}
	msg := err.Error()
	t.Logf("PinBatch: %v", err)
	for _, want := range []string{
		"kernel: pin batch: 6 of 13 pins failed: ",
		`ipset "ho-web-be0": add 198.18.20.5: client table full (maxelem reached) (and 2 more like it)`,
		`backend "nope": unknown service or backend`,
		`service "nosvc": unknown service or backend`,
		"client 2001:2::5 is not ipv4",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q", want)
		}
	}
	if !errors.Is(err, dataplane.ErrFull) || !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("error wraps neither ErrFull nor ErrUnknown: %v", err)
	}
	// The pins that could be made were: the first five of be0, both of be1.
	be0 := savedEntries(t, ns, "ho-web-be0")
	for i := range 8 {
		if _, ok := be0[client(i)]; ok != (i < 5) {
			t.Errorf("%s in ho-web-be0: %v", client(i), ok)
		}
	}
	if counts, err := d.Count(ctx, "web"); err != nil || counts["be0"] != 5 || counts["be1"] != 2 {
		t.Errorf("Count = %v, %v; want be0 5, be1 2", counts, err)
	}
}

// TestNSBatchReplies checks that a batch's replies fit the receive buffer
// when every add fails (so the kernel answers every message), and that
// when they cannot, the dropped outcomes are recovered.
func TestNSBatchReplies(t *testing.T) {
	nstest.RequireRoot(t)
	ns := nstest.New(t, "kb-")
	s, err := newNLSets(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	const set = "ho-t-full"
	if err := s.create(set, setSpec{family: ipv4, timeout: 600, maxelem: 10}); err != nil {
		t.Fatal(err)
	}
	es := make([]setAdd, 2000)
	for i := range es {
		es[i] = setAdd{set: set, ip: benchClient(i), timeout: 300, comment: "src=" + benchClient(i).String()}
	}
	for _, c := range []struct {
		desc     string
		rcvbuf   int  // SO_RCVBUF to set; 0 keeps newPinSocket's
		maxBatch int  // 0 keeps the one derived from the buffer
		lost     bool // whether replies must overflow
	}{
		{"default buffer", 0, 0, false},
		{"batch sized by a small buffer", 64 << 10, 0, false},
		{"batch too big for the buffer", 4096, len(es), true},
	} {
		t.Run(c.desc, func(t *testing.T) {
			if err := s.flush(set); err != nil {
				t.Fatal(err)
			}
			ps, err := newPinSocket(ns.Handle())
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(ps.fd)
			if c.rcvbuf > 0 {
				if err := unix.SetsockoptInt(ps.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, c.rcvbuf); err != nil {
					t.Fatal(err)
				}
				rb, _ := unix.GetsockoptInt(ps.fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
				ps.maxBatch = max(rb/ackTruesize, 1)
			}
			if c.maxBatch > 0 {
				ps.maxBatch = c.maxBatch
			}
			errs := make([]error, len(es))
			ps.addBatch(es, true, errs)
			for i, err := range errs {
				if (i < 10) != (err == nil) || (err != nil && !errors.Is(err, dataplane.ErrFull)) {
					t.Fatalf("add #%d: %v", i, err)
				}
			}
			if (ps.lost > 0) != c.lost {
				t.Errorf("replies lost in %d batches (maxBatch %d), want lost: %v", ps.lost, ps.maxBatch, c.lost)
			}
			if n, err := s.count(set); n != 10 || err != nil {
				t.Errorf("count = %d, %v; want 10", n, err)
			}
			// The socket is in step for the next request.
			if err := ps.add(setAdd{set: set, ip: es[0].ip, comment: "again"}, true); err != nil {
				t.Errorf("add after the batch: %v", err)
			}
		})
	}
	if err := s.flush("ho-t-absent"); err != nil {
		t.Errorf("flush of an absent set: %v", err)
	}
	if _, err := s.count("ho-t-absent"); !errors.Is(err, errNoSet) {
		t.Errorf("count of an absent set: %v, want errNoSet", err)
	}
}

// TestNSCountSkipsTimedOut checks that Count, which reads the set
// headers, leaves out pins whose timeout passed but that the kernel has
// not collected yet.
func TestNSCountSkipsTimedOut(t *testing.T) {
	_, d, _ := nsLab(t, "kb-", Options{})
	ctx := context.Background()
	mustSync(t, d, labState(1, time.Hour, 100))
	var pins []dataplane.Pin
	for i := range 20 {
		p := dataplane.Pin{Service: "web", Backend: "be0", Client: netip.AddrFrom4([4]byte{198, 18, 30, byte(i)})}
		if i%2 == 0 {
			p.TTL = time.Second
		}
		pins = append(pins, p)
	}
	if err := d.PinBatch(ctx, pins); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2100 * time.Millisecond)
	listed := 0
	if err := d.Pins(ctx, "web", "be0", func(dataplane.Pin) error { listed++; return nil }); err != nil {
		t.Fatal(err)
	}
	counts, err := d.Count(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if counts["be0"] != 10 || listed != 10 {
		t.Errorf("Count = %v, listed %d; want 10 live pins", counts, listed)
	}
}

// TestNSRepin re-pins the clients of a failed backend as the balancer
// does, against the clock: list the dead backend's set (Pins), PinBatch
// its clients onto three other backends keeping each one's remaining TTL
// and key, and Flush the dead set. It moves 5,000 clients once; with
// HANDOFF_PERF=1 it moves the 100,000 three times, logs the
// phases and the median, and fails when the median exceeds one second.
func TestNSRepin(t *testing.T) {
	nstest.RequireRoot(t)
	n, runs, perf := 5000, 1, testenv.Perf()
	if perf {
		n, runs = 100000, 3
	}
	ns := nstest.New(t, "kr-")
	d, _ := newNSDataplane(t, ns, Options{})
	ctx := context.Background()
	mustSync(t, d, labState(4, time.Hour, benchClients))

	fill := make([]dataplane.Pin, n)
	ttl := func(i int) time.Duration { return time.Duration(600+i%3000) * time.Second }
	for i := range fill {
		c := benchClient(i)
		fill[i] = dataplane.Pin{Service: "web", Backend: "be0", Client: c, Key: "src=" + c.String(), TTL: ttl(i)}
	}
	var totals []time.Duration
	for run := range runs {
		for _, be := range []string{"be1", "be2", "be3"} {
			if err := d.Flush(ctx, "web", be); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.PinBatch(ctx, fill); err != nil {
			t.Fatalf("filling be0: %v", err)
		}

		start := time.Now()
		moved := make([]dataplane.Pin, 0, n)
		if err := d.Pins(ctx, "web", "be0", func(p dataplane.Pin) error {
			p.Backend = [...]string{"be1", "be2", "be3"}[len(moved)%3]
			moved = append(moved, p)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		listed := time.Now()
		if err := d.PinBatch(ctx, moved); err != nil {
			t.Fatal(err)
		}
		pinned := time.Now()
		if err := d.Flush(ctx, "web", "be0"); err != nil {
			t.Fatal(err)
		}
		end := time.Now()
		totals = append(totals, end.Sub(start))
		t.Logf("run %d: %d clients: list %v, PinBatch %v (%.0f pins/s), Flush %v; total %v",
			run+1, len(moved), listed.Sub(start).Round(time.Millisecond), pinned.Sub(listed).Round(time.Millisecond),
			float64(len(moved))/pinned.Sub(listed).Seconds(), end.Sub(pinned).Round(time.Millisecond), end.Sub(start).Round(time.Millisecond))

		counts, err := d.Count(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		if counts["be0"] != 0 || counts["be1"]+counts["be2"]+counts["be3"] != n || counts["be1"] < n/3 {
			t.Fatalf("Count after the move = %v, want be0 empty and %d over be1..be3", counts, n)
		}
		left := map[netip.Addr]dataplane.Pin{}
		if err := d.Pins(ctx, "web", "", func(p dataplane.Pin) error { left[p.Client] = p; return nil }); err != nil {
			t.Fatal(err)
		}
		bad := 0
		for i, f := range fill {
			p := left[f.Client]
			if p.Backend == "" || p.Backend == "be0" || p.Key != f.Key || p.TTL > ttl(i) || p.TTL < ttl(i)-10*time.Second {
				if bad++; bad <= 3 {
					t.Errorf("after the move, pin of %s = %+v, want key %q and TTL about %v on be1..be3", f.Client, p, f.Key, ttl(i))
				}
			}
		}
		if bad > 0 {
			t.Fatalf("%d of %d pins not moved intact", bad, n)
		}
	}
	slices.Sort(totals)
	median := totals[len(totals)/2]
	t.Logf("re-pinned %d clients: median %v over %d runs (%.0f clients/s)", n, median.Round(time.Millisecond), runs, float64(n)/median.Seconds())
	if perf && median > time.Second {
		t.Errorf("median re-pin of %d clients took %v, want ≤ 1s", n, median)
	}
}
