package classifier

import (
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/config"
)

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("be%d", i+1)
	}
	return out
}

func TestMaglevSize(t *testing.T) {
	for _, tt := range []struct{ n, m int }{{0, 65537}, {1, 65537}, {256, 65537}, {257, 131101}, {512, 131101}, {513, 262151}, {1000, 262151}, {1024, 262151}, {1025, 524309}} {
		if got := maglevSize(tt.n); got != tt.m || !isPrime(got) || got < 256*tt.n {
			t.Errorf("maglevSize(%d) = %d, want %d", tt.n, got, tt.m)
		}
	}
}

// tableOf returns the maglev table of a pool with view v.
func tableOf(tb testing.TB, p *Pool, v View) []uint16 {
	tb.Helper()
	st := p.state(v, -1)
	if len(st.table) != p.size {
		tb.Fatalf("table of %d slots, want %d", len(st.table), p.size)
	}
	return st.table
}

// TestMaglevShare: each backend owns its weight's share of the 65537 slots,
// within 1% of that share.
func TestMaglevShare(t *testing.T) {
	for _, specs := range [][]string{
		names(2), names(3), names(7), names(10), names(50), names(100),
		{"a", "b*2", "c*3", "d*4"},
		{"big*10", "s1", "s2", "s3"},
		{"x*3", "y*3", "z*6"},
	} {
		t.Run(strings.Join(specs, ","), func(t *testing.T) {
			p := mustPool(t, config.BalanceMaglev, specs...)
			if p.size != 65537 {
				t.Fatalf("M = %d", p.size)
			}
			table := tableOf(t, p, nil)
			var total int
			for _, b := range p.backends {
				total += b.Weight
			}
			got := make([]int, len(p.backends))
			for _, i := range table {
				got[i]++
			}
			for i, b := range p.backends {
				ideal := float64(len(table)) * float64(b.Weight) / float64(total)
				if d := float64(got[i]) - ideal; d > 0.01*ideal || d < -0.01*ideal {
					t.Errorf("%s owns %d slots, ideal %.1f", b.Name, got[i], ideal)
				}
			}
		})
	}
}

// TestMaglevDisruption: taking one of N backends away moves its slots and at
// most 1% of the others; bringing it back restores the table exactly.
func TestMaglevDisruption(t *testing.T) {
	for _, specs := range [][]string{names(3), names(5), names(10), names(37), names(100), names(400), {"a", "b*2", "c*3", "d*4", "e"}} {
		t.Run(fmt.Sprint(len(specs), " ", specs[1]), func(t *testing.T) {
			p := mustPool(t, config.BalanceMaglev, specs...)
			v := newView()
			before := append([]uint16(nil), tableOf(t, p, v)...)
			worst := 0.0
			for k, gone := range p.backends {
				if n := len(p.backends); n > 12 && k%(n/8) != 0 {
					continue // a sample of big pools
				}
				v.setDown(true, gone.Name)
				after := tableOf(t, p, v)
				gi := uint16(p.index(gone.Name))
				moved, others := 0, 0
				for s := range before {
					if before[s] == gi {
						if after[s] == gi {
							t.Fatalf("slot %d still on %s", s, gone.Name)
						}
						continue
					}
					others++
					if after[s] != before[s] {
						moved++
					}
				}
				frac := float64(moved) / float64(others)
				worst = max(worst, frac)
				if frac > 0.01 {
					t.Errorf("removing %s moved %.2f%% of the other backends' slots", gone.Name, 100*frac)
				}
				v.setDown(false, gone.Name)
				for s, b := range tableOf(t, p, v) {
					if b != before[s] {
						t.Fatalf("restoring %s: slot %d differs", gone.Name, s)
					}
				}
			}
			t.Logf("worst: %.3f%% of the others' slots moved", 100*worst)
		})
	}
}

// TestMaglevGolden pins the backend of a few keys: a change of hash, seed,
// table size or fill order fails here, because it would move clients
// between versions and hosts.
func TestMaglevGolden(t *testing.T) {
	p := mustPool(t, config.BalanceMaglev, "be1*2", "be2", "be3", "be4", "be5")
	var got []string
	for _, k := range []string{"198.18.0.5", "198.18.0.6", "a.example", "b.example", "station-7", "", "2001:db8::1", "k"} {
		got = append(got, fmt.Sprintf("%s=%s", k, pickName(t, p, k, nil)))
	}
	want := goldenMaglev
	if g := strings.Join(got, " "); g != want {
		t.Fatalf("maglev picks changed:\n got %s\nwant %s", g, want)
	}
	var buckets []string
	for _, k := range []string{"198.18.0.5", "a.example", "station-7", ""} {
		buckets = append(buckets, fmt.Sprintf("%s=%d", k, Bucket(k)))
	}
	if g := strings.Join(buckets, " "); g != goldenBuckets {
		t.Fatalf("buckets changed:\n got %s\nwant %s", g, goldenBuckets)
	}
	p100 := mustPool(t, config.BalanceMaglev, names(100)...)
	if g := fmt.Sprintf("%016x", tableSum(p100, tableOf(t, p100, nil))); g != goldenTable100 {
		t.Fatalf("table of 100 backends changed: got %s, want %s", g, goldenTable100)
	}
}

const (
	goldenMaglev   = "198.18.0.5=be5 198.18.0.6=be3 a.example=be3 b.example=be4 station-7=be1 =be5 2001:db8::1=be2 k=be3"
	goldenBuckets  = "198.18.0.5=118 a.example=407 station-7=531 =203"
	goldenTable100 = "ec82e190e449ec96"
)

// tableSum fingerprints the backend names of a pool's table.
func tableSum(p *Pool, table []uint16) uint64 {
	h := fnv.New64a()
	for _, b := range table {
		h.Write([]byte(p.names[b] + "\n"))
	}
	return h.Sum64()
}

// TestMaglevFreshRouter: a Router built again from the same config, and one
// built in another process, have the same tables; so do pools whose
// backends are listed in another order.
func TestMaglevFreshRouter(t *testing.T) {
	fingerprint := func(specs ...string) string {
		svc := &config.Service{Name: "web", Classify: config.ClassifySource, Pools: []config.Pool{{Name: "default", Balance: config.BalanceMaglev, Backends: backends(specs...)}}}
		r, err := New(svc)
		if err != nil {
			t.Fatal(err)
		}
		p := r.Pool("default")
		return fmt.Sprintf("%016x", tableSum(p, tableOf(t, p, nil)))
	}
	specs := append(names(20), "heavy*5")
	fp := fingerprint(specs...)
	if os.Getenv("HANDOFF_MAGLEV_CHILD") != "" {
		fmt.Printf("fingerprint=%s\n", fp)
		return
	}
	if again := fingerprint(specs...); again != fp {
		t.Fatalf("rebuilt router: %s, first %s", again, fp)
	}
	rev := make([]string, len(specs))
	for i, s := range specs {
		rev[len(specs)-1-i] = s
	}
	// Reordering changes addresses (backends() numbers them) but not names.
	if again := fingerprint(rev...); again != fp {
		t.Fatalf("reordered backends: %s, first %s", again, fp)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestMaglevFreshRouter$", "-test.count=1")
	cmd.Env = append(os.Environ(), "HANDOFF_MAGLEV_CHILD=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "fingerprint="+fp+"\n") {
		t.Fatalf("child process built another table: %s, here %s", out, fp)
	}
}

func BenchmarkMaglevPick(b *testing.B) {
	p := mustPool(b, config.BalanceMaglev, names(100)...)
	v := newView()
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("198.18.%d.%d", i/256, i%256)
	}
	p.Pick(keys[0], v) // build the table
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := p.Pick(keys[i&1023], v); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n, " backends"), func(b *testing.B) {
			p := mustPool(b, config.BalanceMaglev, names(n)...)
			usable := make([]uint16, n)
			for i := range usable {
				usable[i] = uint16(i)
			}
			b.ReportAllocs()
			for b.Loop() {
				maglevTable(p.names, p.weights, usable, p.size)
			}
		})
	}
}

func BenchmarkPick(b *testing.B) {
	for _, bal := range []config.Balance{config.BalanceSourceHash, config.BalanceRoundRobin, config.BalanceRandom, config.BalanceHotStandby, config.BalanceLeastConn} {
		b.Run(string(bal), func(b *testing.B) {
			p := mustPool(b, bal, names(10)...)
			v := newView()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Pick("198.18.0.5", v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestMaglevTableReuse: a new generation with the same usable backends keeps
// the table; a change of usability builds a new one.
func TestMaglevTableReuse(t *testing.T) {
	p := mustPool(t, config.BalanceMaglev, names(10)...)
	v := newView()
	first := tableOf(t, p, v)
	v.gen.Add(1)
	if again := tableOf(t, p, v); &again[0] != &first[0] {
		t.Fatal("table rebuilt for an unchanged usable set")
	}
	v.setDown(true, "be3")
	if changed := tableOf(t, p, v); &changed[0] == &first[0] {
		t.Fatal("table kept after a backend went down")
	}
}

// TestMaglevAddBackend: adding one backend to a pool moves only the
// clients it takes, within maglev's disruption, whatever the pool's size
// (the table's size changes only when the pool crosses 256, 512, 1024, ...
// backends; then nearly every client moves, as docs/how-it-works.md says).
func TestMaglevAddBackend(t *testing.T) {
	for _, n := range []int{10, 100, 255, 300, 511, 1000} {
		before := mustPool(t, config.BalanceMaglev, names(n)...)
		after := mustPool(t, config.BalanceMaglev, names(n+1)...)
		t1, t2 := before.state(nil, -1).table, after.state(nil, -1).table
		added := fmt.Sprintf("be%d", n+1)
		moved, others := 0, 0
		for i := range 100000 {
			h := hash64(fmt.Sprintf("198.18.%d.%d", i/256, i%256), seedMaglevKey)
			a := before.names[t1[reduce(h, uint64(len(t1)))]]
			b := after.names[t2[reduce(h, uint64(len(t2)))]]
			if b == added {
				continue
			}
			others++
			if a != b {
				moved++
			}
		}
		if f := float64(moved) / float64(others); f > 0.02 {
			t.Errorf("pool of %d (M %d → %d): adding %s moved %.1f%% of the clients it did not take", n, before.size, after.size, added, 100*f)
		}
	}
}
