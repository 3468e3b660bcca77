package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/handoff-lb/handoff/dataplane"
)

// Counters returns the counters of every backend in o.NetNS, keyed by
// {service, backend} (IPv4, and IPv6 where ip6tables is installed): the
// packets of its DNAT rule in nat, read with iptables-save -c, which sees
// the first packet of each connection (one a connection), and the bytes
// of its entry in the service's counting set, which the service's rules in
// filter count every forwarded packet of its connections against, both
// ways.
func Counters(ctx context.Context, o Options) (map[dataplane.BackendRef]Counter, error) {
	ns, err := openNS(o.NetNS)
	if err != nil {
		return nil, fmt.Errorf("kernel: counters: %w", err)
	}
	defer closeNS(ns)
	sets, err := newNLSets(ns)
	if err != nil {
		return nil, fmt.Errorf("kernel: counters: %w", err)
	}
	defer sets.close()
	var ipt [2]iptables
	fams := []family{ipv4}
	for _, fam := range []family{ipv4, ipv6} {
		e := execTables{fam, ns}
		ipt[fam] = e
		if _, err := exec.LookPath(e.bin("save")); err == nil && fam == ipv6 {
			fams = append(fams, ipv6)
		}
	}
	return counters(ctx, ipt, sets, fams)
}

// Counters is the package's Counters for the Dataplane's namespace and
// managed families. The counters may be up to a second old (countersMaxAge):
// callers within a second of each other share one read; a Sync makes the
// next call read them again.
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
	return counters(ctx, d.ipt, d.sets, fams)
}

// counters reads the counters of fams: the DNAT rules of each family's
// nat table, which name every backend and its address, then the counting
// set of each service they name.
func counters(ctx context.Context, ipt [2]iptables, sets ipsets, fams []family) (map[dataplane.BackendRef]Counter, error) {
	out := map[dataplane.BackendRef]Counter{}
	for _, fam := range fams {
		b, err := ipt[fam].save(ctx, natTable, true)
		if err != nil {
			return nil, fmt.Errorf("kernel: counters: %w", err)
		}
		dnats := parseCounters(b)
		for _, svc := range sortedServices(dnats) {
			name := countSetName(svc, fam)
			entries := map[netip.AddrPort]uint64{}
			err := sets.list(name, func(m member) error {
				entries[netip.AddrPortFrom(m.ip.Unmap(), m.port)] += m.bytes
				return nil
			})
			if err != nil && !errors.Is(err, errNoSet) {
				return nil, fmt.Errorf("kernel: counters: ipset %q: %w", name, err)
			}
			addBytes(dnats, svc, entries)
		}
		for _, d := range dnats {
			c := out[d.ref]
			c.Packets += d.packets
			c.Bytes += d.bytes
			out[d.ref] = c
		}
	}
	return out, nil
}

// dnatCounter is a backend's DNAT rule as iptables-save -c shows it, and
// the bytes of its counting set entry.
type dnatCounter struct {
	ref     dataplane.BackendRef
	to      netip.AddrPort // the rule's --to-destination
	packets uint64
	bytes   uint64
}

// parseCounters reads iptables-save -c output of a nat table and returns
// its DNAT rules, one per backend (a backend with more, which handoff
// never renders, has their packets summed).
func parseCounters(b []byte) []dnatCounter {
	var out []dnatCounter
	for line := range bytes.Lines(b) {
		l := strings.TrimSpace(string(line))
		if !strings.HasPrefix(l, "[") {
			continue
		}
		cnt, rest, ok := strings.Cut(l[1:], "] ")
		if !ok {
			continue
		}
		ps, _, ok := strings.Cut(cnt, ":")
		if !ok {
			continue
		}
		svc, be, what := ruleTag(rest)
		if what != "dnat" {
			continue
		}
		p, err := strconv.ParseUint(ps, 10, 64)
		if err != nil {
			continue
		}
		args := splitArgs(rest)
		var to netip.AddrPort
		if i := slices.Index(args, "--to-destination"); i >= 0 && i+1 < len(args) {
			to, _ = netip.ParseAddrPort(args[i+1])
			to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
		}
		ref := dataplane.BackendRef{Service: svc, Backend: be}
		if i := slices.IndexFunc(out, func(d dnatCounter) bool { return d.ref == ref }); i >= 0 {
			out[i].packets += p
			continue
		}
		out = append(out, dnatCounter{ref: ref, to: to, packets: p})
	}
	return out
}

// sortedServices returns the services dnats name, once each.
func sortedServices(dnats []dnatCounter) []string {
	var out []string
	for _, d := range dnats {
		out = append(out, d.ref.Service)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// addBytes gives each backend of svc in dnats the bytes of the counting
// set entry of its address. Backends of one service that share an address
// share its entry: its bytes go to the first of them by name, so that no
// byte is counted twice.
func addBytes(dnats []dnatCounter, svc string, entries map[netip.AddrPort]uint64) {
	idx := make([]int, 0, len(dnats))
	for i, d := range dnats {
		if d.ref.Service == svc {
			idx = append(idx, i)
		}
	}
	slices.SortFunc(idx, func(a, b int) int { return strings.Compare(dnats[a].ref.Backend, dnats[b].ref.Backend) })
	for _, i := range idx {
		if n, ok := entries[dnats[i].to]; ok {
			dnats[i].bytes = n
			delete(entries, dnats[i].to)
		}
	}
}
