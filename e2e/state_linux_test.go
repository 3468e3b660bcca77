package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// ipsets is what `ipset list` shows in a namespace: each pin set (an empty
// one too) with its entries. The dispatch index sets (hoi-, hoi6-) and
// the counting sets (hoc-, hoc6-) are left out.
type ipsets map[string][]ipsetEntry

// ipsetEntry is one member of a set and its comment (a pin's key).
type ipsetEntry struct{ member, comment string }

var ipsetComment = regexp.MustCompile(`\bcomment "((?:[^"\\]|\\.)*)"`)

// readSets reads every set of ns.
func readSets(t *testing.T, ns *nstest.NS) ipsets {
	t.Helper()
	sets := ipsets{}
	var cur string
	inMembers := false
	for _, l := range strings.Split(ns.Run(t, "ipset", "list"), "\n") {
		switch {
		case strings.HasPrefix(l, "Name: "):
			cur, inMembers = strings.TrimPrefix(l, "Name: "), false
			if !notPins(cur) {
				sets[cur] = nil
			}
		case strings.HasPrefix(l, "Members:"):
			inMembers = !notPins(cur)
		case inMembers && strings.TrimSpace(l) != "":
			e := ipsetEntry{member: strings.Fields(l)[0]}
			if m := ipsetComment.FindStringSubmatch(l); m != nil {
				e.comment = m[1]
			}
			sets[cur] = append(sets[cur], e)
		}
	}
	return sets
}

// notPins reports whether set is an index or a counting set.
func notPins(set string) bool { return strings.HasPrefix(set, "hoi") || strings.HasPrefix(set, "hoc") }

// members returns the members of set.
func (s ipsets) members(set string) []string {
	var ms []string
	for _, e := range s[set] {
		ms = append(ms, e.member)
	}
	return ms
}

// setsOf returns the sets that hold client, in name order.
func (s ipsets) setsOf(client netip.Addr) []string {
	var in []string
	for name, es := range s {
		for _, e := range es {
			if e.member == client.String() {
				in = append(in, name)
			}
		}
	}
	slices.Sort(in)
	return in
}

// pins returns "SET COMMENT" for each set that holds client, in name order.
func (s ipsets) pins(client netip.Addr) []string {
	var out []string
	for _, name := range s.setsOf(client) {
		for _, e := range s[name] {
			if e.member == client.String() {
				out = append(out, name+" "+e.comment)
			}
		}
	}
	return out
}

// flowsTo returns the conntrack entries in ns of flows to vip that were
// DNATed to be.
func flowsTo(t *testing.T, ns *nstest.NS, vip, be netip.AddrPort) []string {
	t.Helper()
	out, err := ns.RunErr("conntrack", "-L", "-p", "tcp",
		"--orig-dst", vip.Addr().String(), "--orig-port-dst", strconv.Itoa(int(vip.Port())),
		"--reply-src", be.Addr().String(), "--reply-port-src", strconv.Itoa(int(be.Port())))
	if err != nil {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	var flows []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "tcp") {
			flows = append(flows, l)
		}
	}
	return flows
}

// dnatPackets reads the packet counters of the DNAT rules of chain in ns's
// nat table, keyed by destination, from iptables -L -v -x.
func dnatPackets(t *testing.T, ns *nstest.NS, chain string) map[string]uint64 {
	t.Helper()
	out := ns.Run(t, "iptables", "-t", "nat", "-L", chain, "-v", "-x", "-n")
	re := regexp.MustCompile(`^\s*(\d+)\s+\d+\s+DNAT\b.*to:(\S+)`)
	m := map[string]uint64{}
	for _, l := range strings.Split(out, "\n") {
		if s := re.FindStringSubmatch(l); s != nil {
			n, _ := strconv.ParseUint(s[1], 10, 64)
			m[s[2]] += n
		}
	}
	return m
}

// forwardBytes reads the byte counters of the entries of set (a
// service's counting set) in ns, keyed by backend address (ip:port), from
// ipset list.
func forwardBytes(t *testing.T, ns *nstest.NS, set string) map[string]uint64 {
	t.Helper()
	out := ns.Run(t, "ipset", "list", set)
	re := regexp.MustCompile(`^(\S+),tcp:(\d+) packets \d+ bytes (\d+)`)
	m := map[string]uint64{}
	for _, l := range strings.Split(out, "\n") {
		if s := re.FindStringSubmatch(l); s != nil {
			n, _ := strconv.ParseUint(s[3], 10, 64)
			p, _ := strconv.ParseUint(s[2], 10, 16)
			m[netip.AddrPortFrom(netip.MustParseAddr(s[1]), uint16(p)).String()] += n
		}
	}
	return m
}

// tables is what ns's kernel holds that handoff could touch: the ipset
// names and every iptables and ip6tables table, without the dumps'
// timestamp comments.
func tables(t *testing.T, ns *nstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"ipset", "list", "-n"}, {"iptables-save"}, {"ip6tables-save"}} {
		fmt.Fprintf(&b, "$ %s\n", strings.Join(cmd, " "))
		for _, l := range strings.Split(ns.Run(t, cmd...), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// handoffObject matches anything of handoff's in tables' dump: its chains,
// rules (their comments), pin sets and dispatch index sets.
var handoffObject = regexp.MustCompile(`(?i)handoff|HO-SVC|\bhoi?6?-`)
