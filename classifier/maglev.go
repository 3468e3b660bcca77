package classifier

import (
	"slices"
	"strings"
)

// Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//
// The lookup table has M slots, M the smallest prime ≥ 65537·2^k for the
// smallest k with 65537·2^k ≥ 256 × the pool's backends, so it depends on
// the pool's size class but not on which backends are usable, nor on the
// exact count: a key's slot depends on M, and a table that changed size
// with every backend added (through the API, say) or removed moved nearly
// every client of a pool of more than 256. Now that happens only when the
// pool crosses 256, 512, 1024, ... backends. (At 100 slots per backend,
// removing one of 400 backends moved slightly more than 1% of the others'
// slots; at 256, at most 0.85% for any pool size measured.)
//
// Each backend's preference list is the permutation slot(j) = (offset +
// j·skip) mod M with offset = hash(name, "maglevof") mod M and skip =
// hash(name, "maglevsp") mod (M−1) + 1 (see hash64), so it depends only on
// the backend's name. The usable backends take turns in name order, each
// claiming the next free slot of its list; a backend of weight w takes a
// turn in w of every wmax rounds, so it ends up with a share of w/Σw of
// the slots. A key goes to table[⌊hash(key, "maglevky")·M
// / 2^64⌋].

const (
	minMaglevSize   = 65537
	slotsPerBackend = 256
)

// noBackend marks an unfilled slot; pools hold at most noBackend backends.
const noBackend = 0xFFFF

// maglevSize returns the table size for a pool of n backends: the
// smallest prime from the size class of n (see the top of this file).
func maglevSize(n int) int {
	m := minMaglevSize
	for m < slotsPerBackend*n {
		m *= 2
	}
	for !isPrime(m) {
		m++
	}
	return m
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// maglevTable builds the lookup table of size m over the usable backends
// (indices into names and weights). It needs at least one usable backend.
func maglevTable(names []string, weights []uint64, usable []uint16, m int) []uint16 {
	type turn struct {
		pos, skip uint64
		weight    uint64
		credit    uint64
		idx       uint16
	}
	order := slices.Clone(usable)
	slices.SortFunc(order, func(a, b uint16) int { return strings.Compare(names[a], names[b]) })
	turns := make([]turn, len(order))
	var wmax uint64
	um := uint64(m)
	for k, i := range order {
		turns[k] = turn{
			pos:    hash64(names[i], seedMaglevOff) % um,
			skip:   hash64(names[i], seedMaglevSkip)%(um-1) + 1,
			weight: weights[i],
			idx:    i,
		}
		wmax = max(wmax, weights[i])
	}
	table := make([]uint16, m)
	for i := range table {
		table[i] = noBackend
	}
	for filled := 0; filled < m; {
		for k := range turns {
			t := &turns[k]
			t.credit += t.weight
			if t.credit < wmax {
				continue
			}
			t.credit -= wmax
			for table[t.pos] != noBackend {
				if t.pos += t.skip; t.pos >= um {
					t.pos -= um
				}
			}
			table[t.pos] = t.idx
			if t.pos += t.skip; t.pos >= um {
				t.pos -= um
			}
			if filled++; filled == m {
				break
			}
		}
	}
	return table
}
