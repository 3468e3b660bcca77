package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Batching limits. etcd refuses a transaction of more than 128 operations
// by default (--max-txn-ops), so a batch is cut into transactions of that
// size, a few of them in flight at once.
const (
	txnOps         = 128
	txnParallel    = 8
	requestTimeout = 5 * time.Second
	retryMin       = 250 * time.Millisecond
	retryMax       = 5 * time.Second
)

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// publishLoop writes the pending operations to etcd: BatchInterval after
// the first of a batch, in transactions of up to txnOps operations. A
// batch that fails is queued again (unless a newer write of the same key
// replaced it) and retried with backoff; the engine goes on serving.
func (n *Node) publishLoop(ctx context.Context, eng Engine) {
	retry := time.Duration(0)
	for {
		if retry == 0 {
			select {
			case <-ctx.Done():
				return
			case <-n.kick:
			}
			if !sleep(ctx, n.cfg.BatchInterval) {
				return
			}
		} else if !sleep(ctx, retry) {
			return
		}
		for {
			batch := n.take()
			if len(batch) == 0 {
				retry = 0
				break
			}
			err := n.write(ctx, batch)
			n.recycle(batch)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				n.health.failed(err, n.queued())
				retry = min(max(2*retry, retryMin), retryMax)
				break
			}
			n.health.succeeded(n.queued())
			retry = 0
		}
	}
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// take returns the pending operations and empties the queue; they are
// the batch being written until the write ends.
func (n *Node) take() map[string]op {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.pending) == 0 {
		return nil
	}
	b := n.pending
	for k := range b {
		n.held[k] = 0
	}
	n.inflight += len(b)
	n.pending, n.spare = n.spare, nil
	if n.pending == nil {
		n.pending = map[string]op{}
	}
	return b
}

// recycle keeps a written batch's map for the next queue.
func (n *Node) recycle(b map[string]op) {
	clear(b)
	n.mu.Lock()
	n.spare = b
	n.mu.Unlock()
}

// queuedLocked reports whether a write of key waits or is being written;
// mu is held.
func (n *Node) queuedLocked(key string) bool {
	if _, ok := n.pending[key]; ok {
		return true
	}
	_, ok := n.held[key]
	return ok
}

// writtenLocked records the revision of a write of keys, or forgets them
// when it failed or was dropped; mu is held.
func (n *Node) writtenLocked(keys []string, rev int64) {
	n.inflight -= len(keys)
	for _, k := range keys {
		if rev == 0 {
			delete(n.held, k)
		} else if r, ok := n.held[k]; ok && r == 0 {
			n.held[k] = rev
			n.heldQ = append(n.heldQ, heldKey{rev, k})
		}
	}
}

// heldKey is a written key waiting for the watch, in heldQ.
type heldKey struct {
	rev int64
	key string
}

// seenLocked releases the held keys the watch has delivered up to rev
// (a delete of an absent key has no event); mu is held.
// heldQ is in commit order, nearly the order of revisions: a key behind
// one of a later revision waits for it, which only delays its release.
func (n *Node) seenLocked(rev int64) {
	i := 0
	for ; i < len(n.heldQ) && n.heldQ[i].rev <= rev; i++ {
		h := n.heldQ[i]
		if n.held[h.key] == h.rev {
			delete(n.held, h.key)
		}
	}
	n.heldQ = n.heldQ[i:]
	if len(n.heldQ) == 0 {
		n.heldQ = nil
	}
}

// requeueLocked puts back the operation of key from a failed write,
// unless a newer operation on the same key replaced it; mu is held.
func (n *Node) requeueLocked(key string, o op) {
	if _, newer := n.pending[key]; !newer {
		n.pending[key] = o
	}
}

// queued returns how many writes wait.
func (n *Node) queued() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.pending)
}

// txnBytes bounds the size of a transaction: etcd refuses a request of
// more than 1.5 MiB by default (--max-request-bytes).
const txnBytes = 1 << 20

// unit is one etcd operation of a write and the queued keys it carries:
// one key, or the entries of a page.
type unit struct {
	op         clientv3.Op
	keys       []string
	size       int
	page       string // the page's key, for a page
	entries    []pageEntry
	puts, dels int
}

// write applies batch in transactions and returns the first error; the
// operations of a transaction that failed are queued again. Expired pins
// (and tombstones of expired pins) are dropped: etcd would only delete
// them again.
func (n *Node) write(ctx context.Context, batch map[string]op) error {
	now := n.now()
	keys := make([]string, 0, len(batch))
	var expired []string
	for k, o := range batch {
		if exp := o.expires(); exp != 0 && exp <= now.UnixMilli()+1000 {
			expired = append(expired, k) // expires before its lease could be granted
			continue
		}
		keys = append(keys, k)
	}
	n.mu.Lock()
	n.writtenLocked(expired, 0)
	for _, k := range expired {
		if d, ok := n.deferred[k]; ok {
			d.newer = true // nothing of this host's will be written over it
			n.deferred[k] = d
		}
	}
	n.mu.Unlock()
	sort.Strings(keys)
	units, err := n.units(ctx, now, batch, keys)
	if err != nil {
		n.committed([]unit{{keys: keys}}, batch, 0)
		return err
	}
	var txns [][]unit
	size := 0
	for _, u := range units {
		if last := len(txns) - 1; last < 0 || len(txns[last]) == txnOps || size+u.size > txnBytes {
			txns = append(txns, nil)
			size = 0
		}
		txns[len(txns)-1] = append(txns[len(txns)-1], u)
		size += u.size
	}
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, txnParallel)
	)
	for _, txn := range txns {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ops := make([]clientv3.Op, len(txn))
			for i, u := range txn {
				ops[i] = u.op
			}
			tctx, cancel := context.WithTimeout(ctx, requestTimeout)
			resp, err := n.cli.Txn(tctx).Then(ops...).Commit()
			cancel()
			if err != nil {
				n.committed(txn, batch, 0)
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
				return
			}
			n.committed(txn, batch, resp.Header.Revision)
			n.etcdRev.Store(max(n.etcdRev.Load(), resp.Header.Revision))
			for _, u := range txn {
				n.stats.published.Add(uint64(u.puts))
				n.stats.removed.Add(uint64(u.dels))
			}
			n.stats.writes.Add(uint64(len(txn)))
			n.stats.txns.Add(1)
		})
	}
	wg.Wait()
	if errors.Is(firstErr, rpctypes.ErrLeaseNotFound) {
		n.leases.reset() // etcd lost a lease (restored from a backup): grant new ones
	}
	return firstErr
}

// units turns the queued operations of keys into etcd operations: one for
// each key of its own, and pages for the pins that expire, one page per
// lease bucket and pageMax entries.
func (n *Node) units(ctx context.Context, now time.Time, batch map[string]op, keys []string) ([]unit, error) {
	var units []unit
	var buckets []int64
	paged := map[int64][]string{} // lease bucket → keys of its entries, sorted
	for _, k := range keys {
		o := batch[k]
		if o.entry != nil {
			b := bucketEnd(now, o.expires())
			if _, ok := paged[b]; !ok {
				buckets = append(buckets, b)
			}
			paged[b] = append(paged[b], k)
			continue
		}
		u := unit{keys: []string{k}, size: len(k) + len(o.value)}
		if o.del {
			u.op, u.dels = clientv3.OpDelete(k), 1
		} else {
			u.op, u.puts = clientv3.OpPut(k, string(o.value)), 1
		}
		units = append(units, u)
	}
	slices.Sort(buckets)
	for _, b := range buckets {
		ks := paged[b]
		id, err := n.leases.get(ctx, n.cli, now, batch[ks[0]].expires())
		if err != nil {
			return nil, err
		}
		for i := 0; i < len(ks); i += pageMax {
			u := unit{keys: ks[i:min(i+pageMax, len(ks))]}
			u.entries = make([]pageEntry, len(u.keys))
			for j, k := range u.keys {
				u.entries[j] = *batch[k].entry
				if u.entries[j].del {
					u.dels++
				} else {
					u.puts++
				}
			}
			u.page = n.k.page(n.cfg.Node, n.boot, n.pageSeq.Add(1))
			val := encodePage(u.entries)
			u.op, u.size = clientv3.OpPut(u.page, string(val), clientv3.WithLease(id)), len(u.page)+len(val)
			units = append(units, u)
		}
	}
	return units, nil
}

// committed records the end of a transaction of units, under one lock so
// that the watch never sees a key between two states. Written at rev:
// the keys wait for the watch to deliver rev, and a pin written into a
// page that is still this host's value of it lives in that page from now
// on (an older page's deletion no longer concerns it). Failed (rev 0):
// the operations are queued again, unless newer ones replaced them.
func (n *Node) committed(txn []unit, batch map[string]op, rev int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, u := range txn {
		n.writtenLocked(u.keys, rev)
		for _, k := range u.keys {
			if d, ok := n.deferred[k]; ok {
				if rev != 0 && d.pe.rev > rev {
					d.newer = true // applied by the watch's next response
					n.deferred[k] = d
				} else {
					delete(n.deferred, k) // this host's write is etcd's last, or will be
				}
			}
			if rev == 0 {
				n.requeueLocked(k, batch[k])
			}
		}
		if rev == 0 {
			continue
		}
		for _, e := range u.entries {
			if lp, ok := n.local[e.pk]; ok && !e.del && lp.backend == e.v.Backend && lp.expires == e.v.Expires {
				lp.page = u.page
				n.local[e.pk] = lp
			}
		}
	}
}

// leaseCache shares etcd leases between pins: a pin expiring at t goes
// under the lease of t's time bucket, which ends at or after t, so etcd
// deletes it at most one bucket late. Buckets are 1/32 of the time left
// (at least 1 s, at most 60 s): a 30-minute client_ttl needs about 30
// live leases per host, each granted once.
type leaseCache struct {
	mu  sync.Mutex
	ids map[int64]clientv3.LeaseID // bucket end, Unix seconds → lease
}

func bucketEnd(now time.Time, expires int64) int64 {
	left := time.Duration(expires-now.UnixMilli()) * time.Millisecond
	w := int64(min(max(left/32, time.Second), time.Minute) / time.Second)
	sec := (expires + 999) / 1000
	return (sec + w - 1) / w * w
}

// get returns the lease for a pin expiring at expires (Unix ms).
func (c *leaseCache) get(ctx context.Context, cli *clientv3.Client, now time.Time, expires int64) (clientv3.LeaseID, error) {
	end := bucketEnd(now, expires)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ids == nil {
		c.ids = map[int64]clientv3.LeaseID{}
	}
	if id, ok := c.ids[end]; ok {
		return id, nil
	}
	for e := range c.ids {
		if e <= now.Unix()+1 {
			delete(c.ids, e) // about to end: not to be used again
		}
	}
	ttl := end - now.Unix() + 1
	gctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := cli.Grant(gctx, ttl)
	if err != nil {
		return 0, err
	}
	c.ids[end] = resp.ID
	return resp.ID, nil
}

func (c *leaseCache) reset() {
	c.mu.Lock()
	c.ids = nil
	c.mu.Unlock()
}

func (c *leaseCache) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}
