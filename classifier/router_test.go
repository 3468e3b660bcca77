package classifier

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/handoff-lb/handoff/config"
)

// fakeView is a View whose usability and loads the test sets.
type fakeView struct {
	mu   sync.Mutex
	down map[string]bool
	load map[string]int
	gen  atomic.Uint64
}

func newView() *fakeView {
	v := &fakeView{down: map[string]bool{}, load: map[string]int{}}
	v.gen.Store(1)
	return v
}

func (v *fakeView) Usable(_, b string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return !v.down[b]
}

func (v *fakeView) Load(_, b string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.load[b]
}

func (v *fakeView) Generation() uint64 { return v.gen.Load() }

func (v *fakeView) setDown(down bool, backends ...string) *fakeView {
	v.mu.Lock()
	for _, b := range backends {
		v.down[b] = down
	}
	v.mu.Unlock()
	v.gen.Add(1)
	return v
}

func (v *fakeView) setLoad(b string, n int) *fakeView {
	v.mu.Lock()
	v.load[b] = n
	v.mu.Unlock()
	return v
}

// backends makes backends named by "name" or "name*weight".
func backends(specs ...string) []config.Backend {
	var out []config.Backend
	for i, s := range specs {
		name, w := s, 1
		if n, ws, ok := strings.Cut(s, "*"); ok {
			name = n
			fmt.Sscan(ws, &w)
		}
		out = append(out, config.Backend{Name: name, Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 1, byte(10 + i)}), 80), Weight: w})
	}
	return out
}

func mustPool(tb testing.TB, balance config.Balance, specs ...string) *Pool {
	tb.Helper()
	p, err := newPool("svc", &config.Pool{Name: "p", Balance: balance, Backends: backends(specs...)})
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func pickName(tb testing.TB, p *Pool, key string, v View) string {
	tb.Helper()
	b, err := p.Pick(key, v)
	if errors.Is(err, ErrNoBackend) {
		return "-"
	}
	if err != nil {
		tb.Fatal(err)
	}
	return b.Name
}

// counts picks n times with keys k0…kn-1 and counts backends.
func counts(tb testing.TB, p *Pool, v View, n int) map[string]int {
	c := map[string]int{}
	for i := range n {
		c[pickName(tb, p, fmt.Sprintf("k%d", i), v)]++
	}
	return c
}

func near(got, want, tol float64) bool { return got >= want-tol && got <= want+tol }

func TestPolicies(t *testing.T) {
	tests := []struct {
		name    string
		balance config.Balance
		specs   []string
		view    func() *fakeView
		check   func(t *testing.T, p *Pool, v View)
	}{
		{"hot-standby first", config.BalanceHotStandby, []string{"p", "s", "t"}, newView, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "p" {
				t.Fatalf("got %s", got)
			}
		}},
		{"hot-standby failover", config.BalanceHotStandby, []string{"p", "s", "t"}, func() *fakeView { return newView().setDown(true, "p") }, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "s" {
				t.Fatalf("got %s", got)
			}
		}},
		{"hot-standby none", config.BalanceHotStandby, []string{"p", "s"}, func() *fakeView { return newView().setDown(true, "p", "s") }, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "-" {
				t.Fatalf("got %s", got)
			}
		}},
		{"least-conn", config.BalanceLeastConn, []string{"a", "b", "c"}, func() *fakeView {
			return newView().setLoad("a", 5).setLoad("b", 2).setLoad("c", 1)
		}, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "c" {
				t.Fatalf("got %s", got)
			}
		}},
		{"least-conn tie goes to list order", config.BalanceLeastConn, []string{"a", "b", "c"}, func() *fakeView {
			return newView().setLoad("a", 5).setLoad("b", 2).setLoad("c", 2)
		}, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "b" {
				t.Fatalf("got %s", got)
			}
		}},
		{"least-conn weighted", config.BalanceLeastConn, []string{"a*4", "b"}, func() *fakeView {
			return newView().setLoad("a", 7).setLoad("b", 2) // 7/4 < 2/1
		}, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "a" {
				t.Fatalf("got %s", got)
			}
		}},
		{"least-conn skips unusable", config.BalanceLeastConn, []string{"a", "b", "c"}, func() *fakeView {
			return newView().setLoad("a", 5).setLoad("b", 2).setLoad("c", 1).setDown(true, "c")
		}, func(t *testing.T, p *Pool, v View) {
			if got := pickName(t, p, "x", v); got != "b" {
				t.Fatalf("got %s", got)
			}
		}},
		{"round-robin", config.BalanceRoundRobin, []string{"a", "b", "c"}, newView, func(t *testing.T, p *Pool, v View) {
			var seq []string
			for range 6 {
				seq = append(seq, pickName(t, p, "x", v))
			}
			if got := strings.Join(seq, ""); got != "abcabc" {
				t.Fatalf("got %s", got)
			}
		}},
		{"round-robin weighted, smooth", config.BalanceRoundRobin, []string{"a*2", "b", "c*3"}, newView, func(t *testing.T, p *Pool, v View) {
			var seq []string
			for range 12 {
				seq = append(seq, pickName(t, p, "x", v))
			}
			got := strings.Join(seq, "")
			if got != "cabcaccabcac" { // nginx's smooth weighted round-robin
				t.Fatalf("got %s", got)
			}
		}},
		{"round-robin skips unusable", config.BalanceRoundRobin, []string{"a", "b", "c"}, func() *fakeView { return newView().setDown(true, "b") }, func(t *testing.T, p *Pool, v View) {
			c := counts(t, p, v, 10)
			if c["a"] != 5 || c["c"] != 5 {
				t.Fatalf("got %v", c)
			}
		}},
		{"random weighted", config.BalanceRandom, []string{"a*3", "b"}, newView, func(t *testing.T, p *Pool, v View) {
			c := counts(t, p, v, 40000)
			if !near(float64(c["a"])/40000, 0.75, 0.02) {
				t.Fatalf("got %v", c)
			}
		}},
		{"random skips unusable", config.BalanceRandom, []string{"a", "b", "c"}, func() *fakeView { return newView().setDown(true, "a", "c") }, func(t *testing.T, p *Pool, v View) {
			if c := counts(t, p, v, 100); c["b"] != 100 {
				t.Fatalf("got %v", c)
			}
		}},
		{"source-hash weighted", config.BalanceSourceHash, []string{"a", "b*2", "c"}, newView, func(t *testing.T, p *Pool, v View) {
			c := counts(t, p, v, 40000)
			if !near(float64(c["b"])/40000, 0.5, 0.02) || !near(float64(c["a"])/40000, 0.25, 0.02) {
				t.Fatalf("got %v", c)
			}
		}},
		{"source-hash is stable", config.BalanceSourceHash, []string{"a", "b", "c"}, newView, func(t *testing.T, p *Pool, v View) {
			for i := range 100 {
				k := fmt.Sprint("k", i)
				if first, again := pickName(t, p, k, v), pickName(t, p, k, v); first != again {
					t.Fatalf("key %s moves", k)
				}
			}
		}},
		{"source-hash skips unusable", config.BalanceSourceHash, []string{"a", "b", "c"}, func() *fakeView { return newView().setDown(true, "a") }, func(t *testing.T, p *Pool, v View) {
			if c := counts(t, p, v, 1000); c["a"] != 0 || c["b"] == 0 || c["c"] == 0 {
				t.Fatalf("got %v", c)
			}
		}},
		{"maglev weighted", config.BalanceMaglev, []string{"a", "b*2", "c"}, newView, func(t *testing.T, p *Pool, v View) {
			c := counts(t, p, v, 40000)
			if !near(float64(c["b"])/40000, 0.5, 0.02) || !near(float64(c["c"])/40000, 0.25, 0.02) {
				t.Fatalf("got %v", c)
			}
		}},
		{"maglev skips unusable", config.BalanceMaglev, []string{"a", "b", "c"}, func() *fakeView { return newView().setDown(true, "b") }, func(t *testing.T, p *Pool, v View) {
			if c := counts(t, p, v, 1000); c["b"] != 0 || c["a"] == 0 || c["c"] == 0 {
				t.Fatalf("got %v", c)
			}
		}},
		{"maglev none usable", config.BalanceMaglev, []string{"a"}, func() *fakeView { return newView().setDown(true, "a") }, func(t *testing.T, p *Pool, v View) {
			if _, err := p.Pick("k", v); !errors.Is(err, ErrNoBackend) || Reason(err) != "no_backend" {
				t.Fatalf("err %v", err)
			}
		}},
		{"empty pool", config.BalanceRoundRobin, nil, newView, func(t *testing.T, p *Pool, v View) {
			if _, err := p.Pick("k", v); !errors.Is(err, ErrNoBackend) {
				t.Fatalf("err %v", err)
			}
			if c := p.Candidates("k", v, 3); c != nil {
				t.Fatalf("candidates %v", c)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, mustPool(t, tt.balance, tt.specs...), tt.view())
		})
	}
}

// TestPoolFollowsView: a generation change is seen at the next pick, and a
// nil View means everything is usable.
func TestPoolFollowsView(t *testing.T) {
	for _, bal := range []config.Balance{config.BalanceMaglev, config.BalanceSourceHash, config.BalanceRoundRobin, config.BalanceRandom, config.BalanceHotStandby, config.BalanceLeastConn} {
		t.Run(string(bal), func(t *testing.T) {
			p := mustPool(t, bal, "a", "b")
			v := newView()
			for _, step := range []struct {
				down []string
				want string // the only backend that may be picked; "" either
			}{{nil, ""}, {[]string{"a"}, "b"}, {[]string{"b"}, "-"}, {nil, ""}} {
				v.setDown(true, step.down...)
				if step.down == nil {
					v.setDown(false, "a", "b")
				}
				for i := range 20 {
					got := pickName(t, p, fmt.Sprint(i), v)
					if step.want != "" && got != step.want || step.want == "" && got == "-" {
						t.Fatalf("down %v: got %s", step.down, got)
					}
				}
			}
			if got := pickName(t, p, "k", nil); got == "-" {
				t.Fatal("nil view: no backend")
			}
		})
	}
}

func TestCandidates(t *testing.T) {
	for _, bal := range []config.Balance{config.BalanceMaglev, config.BalanceSourceHash, config.BalanceRoundRobin, config.BalanceRandom, config.BalanceHotStandby, config.BalanceLeastConn} {
		t.Run(string(bal), func(t *testing.T) {
			p := mustPool(t, bal, "a*2", "b", "c", "d")
			v := newView().setDown(true, "c").setLoad("a", 3).setLoad("b", 1).setLoad("d", 2)
			for i := range 50 {
				key := fmt.Sprint("key", i)
				c := p.Candidates(key, v, 10)
				var names []string
				for _, b := range c {
					names = append(names, b.Name)
				}
				slices.Sort(names)
				if !slices.Equal(names, []string{"a", "b", "d"}) {
					t.Fatalf("candidates %v", names)
				}
				if bal == config.BalanceRoundRobin || bal == config.BalanceRandom {
					continue
				}
				if first := pickName(t, p, key, v); c[0].Name != first {
					t.Fatalf("first candidate %s, Pick %s", c[0].Name, first)
				}
				if n := len(p.Candidates(key, v, 2)); n != 2 {
					t.Fatalf("%d candidates for n=2", n)
				}
			}
		})
	}
	p := mustPool(t, config.BalanceHotStandby, "p", "s", "t")
	c := p.Candidates("", newView().setDown(true, "p"), 5)
	if len(c) != 2 || c[0].Name != "s" || c[1].Name != "t" {
		t.Fatalf("hot-standby candidates %v", c)
	}
	p = mustPool(t, config.BalanceLeastConn, "a", "b", "c")
	c = p.Candidates("", newView().setLoad("a", 3).setLoad("b", 1).setLoad("c", 2), 3)
	if c[0].Name != "b" || c[1].Name != "c" || c[2].Name != "a" {
		t.Fatalf("least-conn candidates %v", c)
	}
}

// TestPickExcept: PickExcept answers as Pick would with the backend down.
func TestPickExcept(t *testing.T) {
	for _, bal := range []config.Balance{config.BalanceMaglev, config.BalanceSourceHash, config.BalanceHotStandby} {
		t.Run(string(bal), func(t *testing.T) {
			p := mustPool(t, bal, "a", "b*2", "c", "d")
			v := newView()
			down := newView().setDown(true, "b")
			for i := range 2000 {
				key := fmt.Sprint("client-", i)
				b, err := p.PickExcept(key, v, "b")
				if err != nil {
					t.Fatal(err)
				}
				if want := pickName(t, p, key, down); b.Name != want {
					t.Fatalf("%s: PickExcept %s, Pick with b down %s", key, b.Name, want)
				}
			}
			if got, _ := p.PickExcept("k", v, "nonesuch"); got.Name != pickName(t, p, "k", v) {
				t.Fatal("unknown except changes the pick")
			}
		})
	}
}

func TestNewPoolErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		pool config.Pool
	}{
		{"unknown balance", config.Pool{Name: "p", Balance: "fastest", Backends: backends("a")}},
		{"zero weight", config.Pool{Name: "p", Balance: config.BalanceMaglev, Backends: []config.Backend{{Name: "a"}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := newPool("svc", &tt.pool); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func testService() *config.Service {
	return &config.Service{
		Name:     "web",
		Classify: config.ClassifySNI,
		Payload:  config.DefaultPayload(config.ClassifySNI),
		Routes: []config.Route{
			{Match: config.Match{CIDR: netip.MustParsePrefix("198.18.1.0/28")}, Pool: "vip"},
			{Match: config.Match{Key: "station-7"}, Pool: "vip"},
			{Match: config.Match{KeyRegex: regexp.MustCompile(`^eu-`)}, Pool: "eu"},
			{Match: config.Match{HashRange: &[2]int{0, 499}}, Pool: "low"},
		},
		Pools: []config.Pool{
			{Name: "default", Balance: config.BalanceMaglev, Backends: backends("be1*2", "be2")},
			{Name: "vip", Balance: config.BalanceHotStandby, Backends: backends("primary", "standby")},
			{Name: "eu", Balance: config.BalanceRoundRobin, Backends: backends("eu1")},
			{Name: "low", Balance: config.BalanceSourceHash, Backends: backends("low1", "low2")},
		},
	}
}

// keyInBucket returns a key whose Bucket is in [lo, hi] (or outside it).
func keyInBucket(lo, hi int, inside bool) string {
	for i := 0; ; i++ {
		k := fmt.Sprint("key-", i)
		if b := Bucket(k); (lo <= b && b <= hi) == inside {
			return k
		}
	}
}

func TestRoute(t *testing.T) {
	r, err := New(testService())
	if err != nil {
		t.Fatal(err)
	}
	noDefault := testService()
	noDefault.Pools[0].Name = "other"
	noDefault.Routes = noDefault.Routes[:3]
	rnd, err := New(noDefault)
	if err != nil {
		t.Fatal(err)
	}
	outside := netip.MustParseAddr("198.18.2.1")
	tests := []struct {
		name   string
		r      *Router
		client netip.Addr
		key    string
		pool   string
		err    error
	}{
		{"cidr", r, netip.MustParseAddr("198.18.1.5"), "eu-x", "vip", nil},
		{"cidr, mapped client", r, netip.MustParseAddr("::ffff:198.18.1.15"), "x", "vip", nil},
		{"cidr edge", r, netip.MustParseAddr("198.18.1.16"), "eu-x", "eu", nil},
		{"key", r, outside, "station-7", "vip", nil},
		{"key is exact", r, outside, "station-77", "", nil},
		{"key_regex", r, outside, "eu-west", "eu", nil},
		{"hash_range in", r, outside, keyInBucket(0, 499, true), "low", nil},
		{"hash_range out goes to default", r, outside, keyInBucket(0, 499, false), "default", nil},
		{"no match, no default", rnd, outside, "nothing", "", ErrNoRoute},
		{"IPv6 client", r, netip.MustParseAddr("2001:db8::1"), "station-7", "vip", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tt.r.Route(tt.client, tt.key)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			want := tt.pool
			if want == "" { // "key is exact": decided by its bucket
				want = "default"
				if Bucket(tt.key) <= 499 {
					want = "low"
				}
			}
			if p.Name() != want {
				t.Fatalf("pool %s, want %s", p.Name(), want)
			}
		})
	}
}

func TestHashRangeBounds(t *testing.T) {
	svc := &config.Service{Name: "s", Classify: config.ClassifySource,
		Routes: []config.Route{
			{Match: config.Match{HashRange: &[2]int{0, 0}}, Pool: "a"},
			{Match: config.Match{HashRange: &[2]int{999, 999}}, Pool: "b"},
			{Match: config.Match{HashRange: &[2]int{1, 998}}, Pool: "c"},
		},
		Pools: []config.Pool{
			{Name: "a", Balance: config.BalanceRandom, Backends: backends("x")},
			{Name: "b", Balance: config.BalanceRandom, Backends: backends("y")},
			{Name: "c", Balance: config.BalanceRandom, Backends: backends("z")},
		},
	}
	r, err := New(svc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		b    int
		pool string
	}{{0, "a"}, {999, "b"}, {1, "c"}, {998, "c"}} {
		p, err := r.Route(netip.Addr{}, keyInBucket(tt.b, tt.b, true))
		if err != nil || p.Name() != tt.pool {
			t.Fatalf("bucket %d: %v, %v", tt.b, p, err)
		}
	}
	// Buckets are spread evenly.
	var n [config.HashRangeModulus]int
	for i := range 100000 {
		n[Bucket(fmt.Sprint("198.18.", i/256, ".", i%256))]++
	}
	for b, c := range n {
		if c < 50 || c > 160 {
			t.Fatalf("bucket %d holds %d of 100000 keys", b, c)
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(*config.Service)
	}{
		{"route to unknown pool", func(s *config.Service) { s.Routes[0].Pool = "nope" }},
		{"route without condition", func(s *config.Service) { s.Routes[0].Match = config.Match{} }},
		{"route with two conditions", func(s *config.Service) { s.Routes[1].Match.CIDR = netip.MustParsePrefix("10.0.0.0/8") }},
		{"hash_range reversed", func(s *config.Service) { s.Routes[3].Match.HashRange = &[2]int{5, 4} }},
		{"hash_range too high", func(s *config.Service) { s.Routes[3].Match.HashRange = &[2]int{0, 1000} }},
		{"duplicate pool", func(s *config.Service) { s.Pools[1].Name = "default" }},
		{"duplicate backend across pools", func(s *config.Service) { s.Pools[1].Backends[0].Name = "be1" }},
		{"unknown balance", func(s *config.Service) { s.Pools[0].Balance = "fastest" }},
		{"unknown classify", func(s *config.Service) { s.Classify = "smtp-helo" }},
		{"payload without pattern", func(s *config.Service) { s.Classify = config.ClassifyPayload }},
		{"no classify", func(s *config.Service) { s.Classify = "" }},
		{"no max_bytes", func(s *config.Service) { s.Payload.MaxBytes = 0 }},
		{"no payload timeout", func(s *config.Service) { s.Payload.Timeout = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := testService()
			tt.edit(svc)
			if _, err := New(svc); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func TestDecide(t *testing.T) {
	r, err := New(testService())
	if err != nil {
		t.Fatal(err)
	}
	v := newView()
	client := netip.MustParseAddr("198.18.0.5")
	d, err := r.Decide(client, "station-7", v)
	want := Decision{Pool: "vip", Backend: "primary", Address: netip.MustParseAddrPort("198.19.1.10:80"), Key: "station-7", Label: "sni=station-7"}
	if err != nil || d != want {
		t.Fatalf("Decide = %+v, %v; want %+v", d, err, want)
	}
	v.setDown(true, "primary", "standby")
	if _, err := r.Decide(client, "station-7", v); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("err %v", err)
	}
	d, err = r.Unclassified(client, v)
	if err != nil || d.Pool != "default" || d.Key != "198.18.0.5" || d.Label != "src=198.18.0.5" {
		t.Fatalf("Unclassified = %+v, %v", d, err)
	}
}

func TestClassifySource(t *testing.T) {
	svc := testService()
	svc.Classify = config.ClassifySource
	r, err := New(svc)
	if err != nil {
		t.Fatal(err)
	}
	_, s := pair(t)
	key, peeked, err := r.Classify(context.Background(), s)
	if key != "127.0.0.1" || peeked != nil || err != nil {
		t.Fatalf("Classify = %q, %q, %v", key, peeked, err)
	}
}

func TestLabel(t *testing.T) {
	for _, tt := range []struct {
		c         config.Classify
		key, want string
	}{
		{config.ClassifySource, "198.18.0.5", "src=198.18.0.5"},
		{config.ClassifyPayload, "station-7", "payload=station-7"},
		{config.ClassifySNI, "a.example", "sni=a.example"},
		{config.ClassifyHTTPHost, "b.example", "host=b.example"},
		{"frame", `a "b"\` + "\x00\xff", `frame=a\x20\x22b\x22\x5c\x00\xff`},
		{config.ClassifyPayload, strings.Repeat("x", 300), "payload=" + strings.Repeat("x", 247)},
		{config.ClassifyPayload, strings.Repeat("x", 245) + "\x01\x01", "payload=" + strings.Repeat("x", 245)},
	} {
		if got := Label(tt.c, tt.key); got != tt.want || len(got) > MaxLabelLen {
			t.Errorf("Label(%q, %q) = %q, want %q", tt.c, tt.key, got, tt.want)
		}
	}
	if got := SourceKey(netip.MustParseAddr("::ffff:198.18.0.5")); got != "198.18.0.5" {
		t.Errorf("SourceKey = %q", got)
	}
}

func BenchmarkRoute(b *testing.B) {
	r, err := New(testService())
	if err != nil {
		b.Fatal(err)
	}
	client := netip.MustParseAddr("198.18.2.1")
	for _, key := range []string{"station-7", "eu-west", "a.example"} {
		b.Run(key, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Route(client, key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("decide", func(b *testing.B) {
		v := newView()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Decide(client, "a.example", v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

var registerTestProto sync.Once // -count=2 runs TestRegister twice

func TestRegister(t *testing.T) {
	mustPanic := func(name string, f NewParserFunc) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("Register(%q) did not panic", name)
			}
		}()
		Register(name, f)
	}
	ok := func(config.Payload) (Parser, error) { return needMore, nil }
	for _, name := range []string{"", "Bad", "sni", "source", "payload", "http-host", "frame" /* example_test.go */, "has space"} {
		mustPanic(name, ok)
	}
	mustPanic("nil-constructor", nil)
	registerTestProto.Do(func() { Register("test-proto", ok) })
	mustPanic("test-proto", ok)
	if _, err := NewParser("test-proto", config.Payload{}); err != nil {
		t.Fatal(err)
	}
	// config now accepts `classify: test-proto`. (The backend is no
	// loopback address: kernel mode, the default, refuses those.)
	y := "services:\n  - name: t\n    listen: 198.18.1.1:9\n    classify: test-proto\n    balance: random\n    backends: [{name: a, address: 198.19.1.10:10}]\n"
	if _, err := config.Parse("test.yaml", []byte(y)); err != nil {
		t.Fatalf("config rejects a registered classify: %v", err)
	}
}
