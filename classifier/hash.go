package classifier

import (
	"math/bits"

	"github.com/handoff-lb/handoff/config"
)

// Every hash in this package is FNV-1a 64 over the string's bytes, XORed
// with a fixed seed per use and finished with the SplitMix64 finalizer:
//
//	hash(s, seed) = splitmix64(fnv1a64(s) ^ seed)
//
// No per-process randomness is involved, so one config sends one client to
// the same pool and backend in every process, on every host and in every
// version. Changing any of this moves clients; the golden tests catch it.
//
// A hash h is mapped onto n slots as ⌊h·n / 2^64⌋ (reduce), except for
// Bucket, which is documented as mod 1000.
const (
	seedBucket     = 0                  // hash_range: Bucket
	seedMaglevKey  = 0x6d61676c65766b79 // "maglevky": key → table slot
	seedMaglevOff  = 0x6d61676c65766f66 // "maglevof": backend name → permutation offset
	seedMaglevSkip = 0x6d61676c65767370 // "maglevsp": backend name → permutation skip
	seedSourceHash = 0x7372636861736821 // "srchash!": key → source-hash slot
)

func hash64(s string, seed uint64) uint64 {
	h := uint64(14695981039346656037) // FNV-1a 64 offset basis
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211 // FNV-1a 64 prime
	}
	// SplitMix64 finalizer.
	h ^= seed
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// Bucket returns the hash_range bucket of a key, in [0, 1000):
// splitmix64(fnv1a64(key)) mod [config.HashRangeModulus]. A route with
// hash_range [lo, hi] matches the keys whose bucket is in [lo, hi]. The
// pool's policy hashes with other seeds, so the keys of one range still
// spread over all of a pool's backends (the two-level scheme).
func Bucket(key string) int {
	return int(hash64(key, seedBucket) % config.HashRangeModulus)
}

// reduce maps h uniformly onto [0, n) with a multiply instead of a division.
func reduce(h, n uint64) uint64 {
	hi, _ := bits.Mul64(h, n)
	return hi
}
