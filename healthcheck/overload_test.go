package healthcheck

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/config"
)

// failing is a checker that fails with err, or passes while err is nil.
type failing struct{ err *atomic.Pointer[error] }

func (f failing) Check(context.Context, netip.AddrPort) error {
	if e := f.err.Load(); e != nil {
		return *e
	}
	return nil
}

// TestLocalFailuresDoNotMarkDown: checks that fail because this host
// cannot open connections (no descriptor, port or buffer), or while the
// host says it is overloaded (a full conntrack table), do not take a
// backend down; the same number of real failures does.
func TestLocalFailuresDoNotMarkDown(t *testing.T) {
	timeout := error(context.DeadlineExceeded)
	for _, tc := range []struct {
		name       string
		err        error
		overloaded string
		wantDown   bool
	}{
		{"EMFILE", fmt.Errorf("tcp: connect: %w", os.NewSyscallError("socket", syscall.EMFILE)), "", false},
		{"ENFILE", fmt.Errorf("tcp: connect: %w", syscall.ENFILE), "", false},
		{"EADDRNOTAVAIL", fmt.Errorf("tcp: connect: %w", syscall.EADDRNOTAVAIL), "", false},
		{"ENOBUFS", fmt.Errorf("tcp: connect: %w", syscall.ENOBUFS), "", false},
		{"timeout while conntrack is full", timeout, "conntrack table 97% full", false},
		{"timeout", timeout, "", true},
		{"refused", fmt.Errorf("tcp: connect: %w", syscall.ECONNREFUSED), "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cur atomic.Pointer[error]
			cur.Store(&tc.err)
			events := make(chan Event, 8)
			m := New(Options{
				OnChange:   func(ev Event) { events <- ev },
				Checker:    func(config.Health) (Checker, error) { return failing{&cur}, nil },
				Overloaded: func() string { return tc.overloaded },
			})
			defer m.Close()
			h := config.Health{Check: config.CheckTCP, Interval: 5 * time.Millisecond, Timeout: time.Second, Rise: 1, Fall: 3}
			if err := m.Set([]Target{{Service: "web", Backend: "be1", Addr: netip.MustParseAddrPort("198.19.0.1:80"), Health: h}}); err != nil {
				t.Fatal(err)
			}
			select {
			case ev := <-events:
				if !tc.wantDown {
					t.Fatalf("went down on a failure of this host: %+v", ev)
				}
				if ev.Up {
					t.Fatalf("event %+v", ev)
				}
			case <-time.After(300 * time.Millisecond):
				if tc.wantDown {
					t.Fatal("a backend whose checks fail never went down")
				}
				if m.Inconclusive() < 3 {
					t.Fatalf("%d inconclusive checks counted in 300ms at a 5ms interval", m.Inconclusive())
				}
			}
		})
	}
}
