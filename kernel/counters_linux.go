package kernel

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/handoff-lb/handoff/dataplane"
)

// Counters returns the counters of every backend in o.NetNS, keyed by
// {service, backend}, read with one iptables-save -c of every table (IPv4,
// and IPv6 where ip6tables is installed): the packets of its DNAT rule in
// nat, which sees the first packet of each connection (one a
// connection), and the bytes of its forward rule in filter, which sees
// every forwarded packet of its connections, both ways.
func Counters(ctx context.Context, o Options) (map[dataplane.BackendRef]Counter, error) {
	ns, err := openNS(o.NetNS)
	if err != nil {
		return nil, fmt.Errorf("kernel: counters: %w", err)
	}
	defer closeNS(ns)
	return counters(ctx, ns, []family{ipv4, ipv6})
}

// Counters is the package's Counters for the Dataplane's namespace and
// managed families. The counters may be up to a second old (countersMaxAge):
// callers within a second of each other share one iptables-save; a Sync
// makes the next call read them again.
func (d *Dataplane) Counters(ctx context.Context) (map[dataplane.BackendRef]Counter, error) {
	return d.counts.get(ctx, d.readCounters)
}

func (d *Dataplane) readCounters(ctx context.Context) (map[dataplane.BackendRef]Counter, error) {
	d.syncMu.Lock()
	fams := []family{ipv4}
	if d.v6 {
		fams = append(fams, ipv6)
	}
	d.syncMu.Unlock()
	d.mu.RLock()
	closed := d.closed
	d.mu.RUnlock()
	if closed {
		return nil, errClosed
	}
	out := map[dataplane.BackendRef]Counter{}
	for _, fam := range fams {
		b, err := d.ipt[fam].save(ctx, allTables, true)
		if err != nil {
			return nil, fmt.Errorf("kernel: counters: %w", err)
		}
		parseCounters(b, out)
	}
	return out, nil
}

func counters(ctx context.Context, ns netns.NsHandle, fams []family) (map[dataplane.BackendRef]Counter, error) {
	out := map[dataplane.BackendRef]Counter{}
	for _, fam := range fams {
		ipt := execTables{fam, ns}
		if _, err := exec.LookPath(ipt.bin("save")); err != nil && fam == ipv6 {
			continue
		}
		b, err := ipt.save(ctx, allTables, true)
		if err != nil {
			return nil, fmt.Errorf("kernel: counters: %w", err)
		}
		parseCounters(b, out)
	}
	return out, nil
}

// parseCounters reads iptables-save -c output and adds, under {service,
// backend}, the packets of each DNAT rule and the bytes of each forward
// rule to out.
func parseCounters(b []byte, out map[dataplane.BackendRef]Counter) {
	for line := range bytes.Lines(b) {
		l := strings.TrimSpace(string(line))
		if !strings.HasPrefix(l, "[") {
			continue
		}
		cnt, rest, ok := strings.Cut(l[1:], "] ")
		if !ok {
			continue
		}
		ps, bs, ok := strings.Cut(cnt, ":")
		if !ok {
			continue
		}
		svc, be, what := ruleTag(rest)
		if what != "dnat" && what != "forward" {
			continue
		}
		p, err1 := strconv.ParseUint(ps, 10, 64)
		n, err2 := strconv.ParseUint(bs, 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		k := dataplane.BackendRef{Service: svc, Backend: be}
		c := out[k]
		if what == "dnat" {
			c.Packets += p
		} else {
			c.Bytes += n
		}
		out[k] = c
	}
}
