package kernel

import (
	"bytes"
	"fmt"
	"math/bits"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// Chains handoff owns. Every chain whose name starts with ownedPrefix or
// svcPrefix is handoff's; no other chain is ever flushed or deleted.
const (
	ownedPrefix      = "HANDOFF-"
	svcPrefix        = "HO-SVC-"
	chainPrerouting  = "HANDOFF-PREROUTING"
	chainOutput      = "HANDOFF-OUTPUT"
	chainPostrouting = "HANDOFF-POSTROUTING"
	chainForward     = "HANDOFF-FORWARD"
	chainMark        = "HANDOFF-MARK"  // mangle: a new connection's backend mark from the index
	chainDial        = "HANDOFF-DIAL"  // mangle: marks the connections the proxy dials transparently
	chainReply       = "HANDOFF-REPLY" // mangle: marks their replies, for the local route
	chainCanary      = "HANDOFF-CANARY"
	chainProbe       = "HANDOFF-PROBE" // Probe's scratch chain
	commentPrefix    = "handoff"
)

// maxTimeout is the longest ipset timeout, in seconds.
const maxTimeout = 2147483

// baseJump is a jump from a built-in chain into one of handoff's.
type baseJump struct {
	table   table
	builtin string
	target  string
	match   string // before the comment; "" for every packet
}

// newConns matches the packets that open a connection: the mangle jumps
// look up the index for those only, so established flows pass with one
// conntrack comparison.
const newConns = "-m conntrack --ctstate NEW"

// baseJumps are the jumps that hook handoff's chains into the kernel's.
// The mark of transparent dials (l.reserved) chooses which replies take
// HANDOFF-REPLY: one comparison of the connection's mark per packet.
func baseJumps(l markLayout) []baseJump {
	reply := "-m connmark --mark " + l.reservedMatch()
	return []baseJump{
		{mangleTable, "PREROUTING", chainMark, newConns},
		{mangleTable, "OUTPUT", chainMark, newConns},
		{mangleTable, "OUTPUT", chainDial, newConns + " -m addrtype ! --src-type LOCAL"},
		{mangleTable, "PREROUTING", chainReply, reply},
		{natTable, "PREROUTING", chainPrerouting, ""},
		{natTable, "OUTPUT", chainOutput, ""},
		{natTable, "POSTROUTING", chainPostrouting, ""},
		{filterTable, "FORWARD", chainForward, ""},
	}
}

// jumpLine is the restore line that inserts j at the top of its chain.
func (j baseJump) line() string {
	m := ""
	if j.match != "" {
		m = j.match + " "
	}
	return "-I " + j.builtin + " 1 " + m + comment(commentPrefix+" jump") + " -j " + j.target
}

// prefixed reports whether a chain's name is in handoff's namespace. Such
// a chain is handoff's only when it is one of the fixed chains or the
// registry of its table lists it (saved.ownsChain): another program's
// HANDOFF-LOCAL is not.
func prefixed(chain string) bool {
	return strings.HasPrefix(chain, ownedPrefix) || strings.HasPrefix(chain, svcPrefix)
}

// fixedChains are the chains of every handoff data plane.
var fixedChains = map[string]bool{
	chainPrerouting: true, chainOutput: true, chainPostrouting: true, chainForward: true,
	chainMark: true, chainDial: true, chainReply: true, chainCanary: true,
}

// The registry: the canary chain of each table lists, in rules that only
// carry a comment (the chain is never jumped to, so they do nothing), the
// chains handoff made in that table, and the IPv4 nat table's canary the
// ipsets it made. Objects whose names merely share handoff's prefixes
// are not in it, and are left alone.
const (
	ownsChain = "chain"
	ownsSet   = "set"
)

// registryRule is the canary rule that registers object name of kind.
func registryRule(kind, name string) string {
	return comment(commentPrefix + " owns " + kind + " " + name)
}

// registered returns the objects of kind that the canary chain of s
// lists.
func (s saved) registered(kind string) map[string]bool {
	out := map[string]bool{}
	prefix := commentPrefix + " owns " + kind + " "
	for _, r := range s.chains[chainCanary] {
		args := splitArgs(r)
		if i := slices.Index(args, "--comment"); i >= 0 && i+1 < len(args) {
			if name, ok := strings.CutPrefix(args[i+1], prefix); ok {
				out[name] = true
			}
		}
	}
	return out
}

// owner tells which chains of a table are handoff's.
type owner struct {
	registered map[string]bool
}

func (s saved) owner() owner { return owner{registered: s.registered(ownsChain)} }

// owns reports whether chain is handoff's: fixed, or registered.
func (o owner) owns(chain string) bool { return fixedChains[chain] || o.registered[chain] }

// service is a dataplane.Service checked and reduced to what the kernel
// needs.
type service struct {
	name     string
	fam      family
	vip      netip.AddrPort // address unmapped
	ttl      uint32         // seconds; 0: pins never expire
	snat     bool
	maxelem  uint32
	index    string // the dispatch index set: hoi-<svc> or hoi6-<svc>
	count    string // the counting set: hoc-<svc> or hoc6-<svc>
	hold     bool   // queue the SYNs of unpinned clients (Hold)
	cidr     uint8  // IPv6 services pinning networks: their prefix length (hash:net sets); 0 = addresses
	backends []backend
	byName   map[string]*backend
}

type backend struct {
	name string
	set  string
	addr netip.AddrPort // address unmapped
	// slot numbers the backend in the service's marks (1..maxSlot); set
	// by the Dataplane's slot table after compile, stable for the life
	// of the backend.
	slot uint32
}

func (s *service) spec() setSpec {
	return setSpec{family: s.fam, timeout: s.ttl, maxelem: s.maxelem, net: s.cidr != 0}
}

// indexMaxelem bounds an index set. Its entries are one per client of the
// service plus pins that expired since the last collection (see gcIndex),
// so its bound is not max_clients: a large fixed one keeps its spec, and
// the set, unchanged when backends come and go.
const indexMaxelem = 1 << 30

func (s *service) indexSpec() setSpec {
	return setSpec{family: s.fam, maxelem: indexMaxelem, index: true, net: s.cidr != 0}
}

// countSpec is the counting set's spec: hash:ip,port with counters, of
// the kernel's default maxelem (far above the backends a mark numbers).
func (s *service) countSpec() setSpec {
	return setSpec{family: s.fam, counters: true}
}

// countEntries is what the counting set of s holds: the address of each
// backend.
func (s *service) countEntries() map[netip.AddrPort]bool {
	out := make(map[netip.AddrPort]bool, len(s.backends))
	for _, b := range s.backends {
		out[b.addr] = true
	}
	return out
}

// validName matches the service and backend names the kernel objects can
// carry (config validation is stricter).
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// compile checks st and converts it. Services come out sorted by name.
func compile(st dataplane.State) ([]*service, error) {
	var out []*service
	seen := map[string]bool{}
	for _, ds := range st.Services {
		if !validName.MatchString(ds.Name) {
			return nil, fmt.Errorf("service %q: invalid name", ds.Name)
		}
		if seen[ds.Name] {
			return nil, fmt.Errorf("service %q: declared twice", ds.Name)
		}
		seen[ds.Name] = true
		if c := dataplane.ServiceChain(ds.Name); len(c) > dataplane.MaxChainNameLen {
			return nil, fmt.Errorf("service %q: chain name %q longer than %d", ds.Name, c, dataplane.MaxChainNameLen)
		}
		vip := netip.AddrPortFrom(ds.Listen.Addr().Unmap(), ds.Listen.Port())
		if !vip.Addr().IsValid() || vip.Port() == 0 {
			return nil, fmt.Errorf("service %q: listen address %s: want an address and a port", ds.Name, ds.Listen)
		}
		if ds.ClientTTL < 0 {
			return nil, fmt.Errorf("service %q: negative client TTL %s", ds.Name, ds.ClientTTL)
		}
		if ds.MaxClients < 0 || int64(ds.MaxClients) > int64(^uint32(0)) {
			return nil, fmt.Errorf("service %q: max clients %d out of range", ds.Name, ds.MaxClients)
		}
		if ds.IPv6PinPrefix < 0 || ds.IPv6PinPrefix > 128 {
			return nil, fmt.Errorf("service %q: IPv6 pin prefix %d out of range", ds.Name, ds.IPv6PinPrefix)
		}
		s := &service{
			name:    ds.Name,
			fam:     familyOf(vip.Addr()),
			vip:     vip,
			ttl:     seconds(ds.ClientTTL),
			snat:    ds.SNAT,
			maxelem: uint32(ds.MaxClients),
			index:   indexSetName(ds.Name, familyOf(vip.Addr())),
			count:   countSetName(ds.Name, familyOf(vip.Addr())),
			hold:    ds.HoldSYN,
			byName:  map[string]*backend{},
		}
		if s.fam == ipv6 && ds.IPv6PinPrefix > 0 && ds.IPv6PinPrefix < 128 {
			s.cidr = uint8(ds.IPv6PinPrefix)
			s.index = netIndexSetName(ds.Name)
		}
		for _, db := range ds.Backends {
			set := dataplane.SetName(ds.Name, db.Name, s.fam == ipv6)
			if s.cidr != 0 {
				set = netSetName(ds.Name, db.Name)
			}
			switch {
			case !validName.MatchString(db.Name):
				return nil, fmt.Errorf("service %q: backend %q: invalid name", ds.Name, db.Name)
			case slices.ContainsFunc(s.backends, func(b backend) bool { return b.name == db.Name }):
				return nil, fmt.Errorf("service %q: backend %q: declared twice", ds.Name, db.Name)
			case len(set) > dataplane.MaxSetNameLen:
				return nil, fmt.Errorf("service %q: backend %q: set name %q longer than %d", ds.Name, db.Name, set, dataplane.MaxSetNameLen)
			}
			addr := netip.AddrPortFrom(db.Address.Addr().Unmap(), db.Address.Port())
			if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() || addr.Port() == 0 {
				return nil, fmt.Errorf("service %q: backend %q: address %s: want an address and a port", ds.Name, db.Name, db.Address)
			}
			if familyOf(addr.Addr()) != s.fam {
				return nil, fmt.Errorf("service %q: backend %q: address %s is not %s like the service's %s", ds.Name, db.Name, addr, s.fam, vip)
			}
			s.backends = append(s.backends, backend{name: db.Name, set: set, addr: addr})
		}
		for i := range s.backends {
			s.byName[s.backends[i].name] = &s.backends[i]
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *service) int { return strings.Compare(a.name, b.name) })
	return out, nil
}

// seconds converts a TTL to whole ipset seconds, rounding up: 0 stays 0
// (no timeout), anything else is clamped to 1..maxTimeout.
func seconds(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	s := (d + time.Second - 1) / time.Second
	return uint32(min(s, maxTimeout))
}

// chain is the desired content of one chain handoff owns.
type chain struct {
	name  string
	rules []string // restore lines, each "-A <name> ..."
}

// text is what the chain cache remembers of c.
func (c chain) text() string { return strings.Join(c.rules, "\n") }

// rendered is handoff's desired rules for one family.
type rendered map[table][]chain

// render returns the chains of fam for the services of that family, with
// backend marks placed by l. Chains come in a fixed order: base chains,
// canary, then service chains.
//
// A new connection to a service takes two steps. In mangle, HANDOFF-MARK
// looks the client up in the service's index set and copies its
// backend's slot into the packet mark (SET --map-set … --map-mark). In
// nat, HO-SVC-<svc> returns unmarked packets (new clients, for the
// listener) at once, and walks marked ones down a tree of chains, one
// hexadecimal digit of the slot per level, to the leaf rules of the
// backend: refresh the pin's timeout in its set, then DNAT. Each step
// costs the same whatever the number of backends: one index lookup, at
// most 16 mark comparisons per level (three levels for 4,095 backends)
// and the two set lookups of one backend.
//
// Every later packet of the connection, both ways, takes the service's
// rule in filter's HANDOFF-FORWARD and its chain HO-SVC-<svc> in filter,
// whose rules match the service's counting set (hoc-<svc>, hash:ip,port
// with counters, one entry a backend) by destination (client to backend,
// after DNAT) and by source (the backend's replies, before the reverse
// NAT): the entry's counters are the backend's kernel-forwarded traffic,
// at the cost of one or two hash lookups a packet whatever the number of
// backends (see countChain).
func render(fam family, svcs []*service, l markLayout, queue uint16) rendered {
	pre := chain{name: chainPrerouting}
	out := chain{name: chainOutput}
	post := chain{name: chainPostrouting}
	fwd := chain{name: chainForward}
	mark := chain{name: chainMark}
	var svcChains, countChains []chain // nat's dispatch trees, filter's counting chains
	for _, s := range svcs {
		if s.fam != fam {
			continue
		}
		// match is the service's packets; syn its packets opening a
		// connection.
		match := "-p tcp -m tcp --dport " + strconv.Itoa(int(s.vip.Port()))
		syn := match + " --tcp-flags FIN,SYN,RST,ACK SYN"
		if s.vip.Addr().IsUnspecified() {
			match += " -m addrtype --dst-type LOCAL"
			syn += " -m addrtype --dst-type LOCAL"
		} else {
			match = "-d " + hostCIDR(s.vip.Addr()) + " " + match
			syn = "-d " + hostCIDR(s.vip.Addr()) + " " + syn
		}
		jump := match + " " + comment(commentPrefix+" "+s.name+" service") + " -j " + dataplane.ServiceChain(s.name)
		pre.add(jump)
		out.add(jump)
		mark.add(match + " " + comment(commentPrefix+" "+s.name+" mark") + " -j SET --map-set " + s.index + " src --map-mark")
		if s.hold {
			// A new client's SYN waits in the queue for its pin; with
			// nothing reading the queue it passes (--queue-bypass).
			mark.add(syn + " " + l.match(0, l.slotBits(0)) + " " + comment(commentPrefix+" "+s.name+" hold") +
				" -j NFQUEUE --queue-num " + strconv.Itoa(int(queue)) + " --queue-bypass")
		}
		svcChains = append(svcChains, s.dispatch(l)...)

		// Forwarded flows of this service: by VIP when it is one address,
		// else by the port and, in its chain, the backend the flow was
		// DNATed to.
		dnated := "-p tcp -m conntrack --ctstate DNAT --ctproto tcp"
		countChains = append(countChains, s.countChain())
		if !s.vip.Addr().IsUnspecified() {
			m := dnated + " --ctorigdst " + hostCIDR(s.vip.Addr()) + " --ctorigdstport " + strconv.Itoa(int(s.vip.Port()))
			fwd.add(m + " " + comment(commentPrefix+" "+s.name+" forward") + " -j " + dataplane.ServiceChain(s.name))
			if s.snat {
				post.add(m + " " + comment(commentPrefix+" "+s.name+" snat") + " -j MASQUERADE")
			}
			continue
		}
		fwd.add(dnated + " --ctorigdstport " + strconv.Itoa(int(s.vip.Port())) + " " + comment(commentPrefix+" "+s.name+" forward") + " -j " + dataplane.ServiceChain(s.name))
		if s.snat {
			for _, b := range s.backends {
				m := dnated + " --ctorigdstport " + strconv.Itoa(int(s.vip.Port())) +
					" --ctreplsrc " + hostCIDR(b.addr.Addr()) + " --ctreplsrcport " + strconv.Itoa(int(b.addr.Port()))
				post.add(m + " " + comment(commentPrefix+" "+s.name+"/"+b.name+" snat") + " -j MASQUERADE")
			}
		}
	}
	// Transparent dials: a connection the proxy opens from a client's
	// address (a source that is not the host's, in OUTPUT) gets the
	// reserved mark in its connection mark, and its replies get it as
	// their packet mark, which the routing rule of route table
	// Options.RouteTable delivers locally, to the proxy's socket.
	dial := chain{name: chainDial}
	dial.add(comment(commentPrefix+" transparent dial") + " -j CONNMARK --set-xmark " + l.reservedMatch())
	reply := chain{name: chainReply}
	reply.add(comment(commentPrefix+" transparent reply") + " -j MARK --set-xmark " + l.reservedMatch())
	// The registry of each table: its chains beyond the fixed ones, and
	// in the IPv4 nat table every set of every service.
	natCanary := chain{name: chainCanary}
	for _, c := range svcChains {
		natCanary.add(registryRule(ownsChain, c.name))
	}
	filterCanary := chain{name: chainCanary}
	for _, c := range countChains {
		filterCanary.add(registryRule(ownsChain, c.name))
	}
	if fam == ipv4 {
		for _, s := range svcs {
			natCanary.add(registryRule(ownsSet, s.index))
			natCanary.add(registryRule(ownsSet, s.count))
			for _, b := range s.backends {
				natCanary.add(registryRule(ownsSet, b.set))
			}
		}
	}
	return rendered{
		mangleTable: {mark, dial, reply, {name: chainCanary}},
		natTable:    append([]chain{pre, out, post, natCanary}, svcChains...),
		filterTable: append([]chain{fwd, filterCanary}, countChains...),
	}
}

// countChain is the chain of s in filter, which HANDOFF-FORWARD sends the
// service's forwarded packets to: it accepts a packet to a backend (its
// destination, after DNAT, is one of the counting set's entries) or from
// one (its source, before the reverse NAT), each lookup adding the packet
// to that backend's entry's counters. A service with one VIP accepts the
// rest too, as its rule in HANDOFF-FORWARD accepted every flow DNATed to
// the VIP before the counting: those of a backend removed or moved since.
// A service listening on every address is matched there by port only, so
// its chain accepts only the flows of its backends, as the rules of each
// backend did.
func (s *service) countChain() chain {
	c := chain{name: dataplane.ServiceChain(s.name)}
	c.add("-m set --match-set " + s.count + " dst,dst " + comment(commentPrefix+" "+s.name+" to backends") + " -j ACCEPT")
	c.add("-m set --match-set " + s.count + " src,src " + comment(commentPrefix+" "+s.name+" from backends") + " -j ACCEPT")
	if !s.vip.Addr().IsUnspecified() {
		c.add(comment(commentPrefix+" "+s.name+" other") + " -j ACCEPT")
	}
	return c
}

// dispatch returns the service chain and the tree below it. The tree has
// as many levels as the largest slot has hexadecimal digits; a chain of
// level k > 1 sends each group of slots that share their digits above
// level k-1 to a chain of its own (HO-SVC-<svc>.<those digits>, e.g.
// HO-SVC-web.3 and HO-SVC-web.3e for slot 0x3e8), and the
// chains of level 1 hold the leaf rules. Chains with no backend below
// them are not made.
func (s *service) dispatch(l markLayout) []chain {
	bes := slices.Clone(s.backends)
	slices.SortFunc(bes, func(a, b backend) int { return int(a.slot) - int(b.slot) })
	levels := 1
	if n := len(bes); n > 0 {
		for bes[n-1].slot>>(4*levels) > 0 {
			levels++
		}
	}
	root := chain{name: dataplane.ServiceChain(s.name)}
	root.add(l.match(0, l.slotBits(0)) + " " + comment(commentPrefix+" "+s.name+" new clients") + " -j RETURN")
	var out []chain
	var node func(c *chain, level int, bes []backend)
	node = func(c *chain, level int, bes []backend) {
		if level == 1 {
			for _, b := range bes {
				s.leaf(c, l, b)
			}
			return
		}
		shift := 4 * (level - 1)
		for len(bes) > 0 {
			prefix := bes[0].slot >> shift
			n := 1
			for n < len(bes) && bes[n].slot>>shift == prefix {
				n++
			}
			// The digits above the child's level, all of them, so that
			// chains of different levels never share a name.
			child := chain{name: fmt.Sprintf("%s.%0*x", dataplane.ServiceChain(s.name), levels-level+1, prefix)}
			c.add(l.match(prefix<<shift, l.slotBits(uint(shift))) + " " + comment(commentPrefix+" "+s.name+" dispatch") + " -g " + child.name)
			node(&child, level-1, bes[:n])
			out = append(out, child)
			bes = bes[n:]
		}
	}
	node(&root, levels, bes)
	return append([]chain{root}, out...)
}

// leaf adds the rules of backend b to c: refresh the client's pin (a new
// connection restarts its timeout) and DNAT. Both match the pin set, so
// a stale index entry (the pin expired or moved) falls through to the
// listener.
func (s *service) leaf(c *chain, l markLayout, b backend) {
	tag := commentPrefix + " " + s.name + "/" + b.name
	in := "-p tcp " + l.match(b.slot, l.slotBits(0)) + " -m set --match-set " + b.set + " src "
	if s.ttl > 0 {
		c.add(in + comment(tag+" refresh") + " -j SET --add-set " + b.set + " src --exist --timeout " + strconv.FormatUint(uint64(s.ttl), 10))
	}
	c.add(in + comment(tag+" dnat") + " -j DNAT --to-destination " + b.addr.String())
}

func (c *chain) add(rule string) { c.rules = append(c.rules, "-A "+c.name+" "+rule) }

func comment(s string) string { return `-m comment --comment "` + s + `"` }

func hostCIDR(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// saved is one table as iptables-save showed it.
type saved struct {
	exists bool                // the table was in the output
	chains map[string][]string // chain → its rules, as "-A chain ..." lines
}

// parseSave reads iptables-save output (with or without counters) of one
// table.
// parseTables parses the iptables-save text of several tables.
func parseTables(b []byte) map[table]saved {
	out := map[table]saved{}
	var name table
	start := -1
	flush := func(end int) {
		if start >= 0 {
			out[name] = parseSave(b[start:end])
		}
	}
	off := 0
	for line := range bytes.Lines(b) {
		if l := bytes.TrimSpace(line); len(l) > 1 && l[0] == '*' {
			flush(off)
			name, start = table(l[1:]), off
		}
		off += len(line)
	}
	flush(len(b))
	return out
}

func parseSave(b []byte) saved {
	s := saved{chains: map[string][]string{}}
	for line := range bytes.Lines(b) {
		l := strings.TrimSpace(string(line))
		switch {
		case strings.HasPrefix(l, "*"):
			s.exists = true
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			if _, ok := s.chains[name]; !ok {
				s.chains[name] = nil
			}
		default:
			if strings.HasPrefix(l, "[") {
				if _, rest, ok := strings.Cut(l, "] "); ok {
					l = rest
				}
			}
			if !strings.HasPrefix(l, "-A ") {
				continue
			}
			name, _, _ := strings.Cut(l[3:], " ")
			s.chains[name] = append(s.chains[name], l)
		}
	}
	return s
}

// ruleTarget returns the -j or -g target of a rule line.
func ruleTarget(rule string) string {
	args := splitArgs(rule)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-j" || args[i] == "-g" || args[i] == "--jump" || args[i] == "--goto" {
			return args[i+1]
		}
	}
	return ""
}

// splitArgs splits a rule line like a shell would for iptables-restore:
// on blanks, with double quotes grouping and backslash escaping.
func splitArgs(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			have = true
		case c == '"':
			inQuote = !inQuote
			have = true
		case (c == ' ' || c == '\t') && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// restorePlan is one table's part of one iptables-restore run.
type restorePlan struct {
	table   table
	write   []chain  // declared (created or flushed), then filled
	flush   []string // chains declared only: stale chains about to go
	unlink  []string // "-D" lines for rules of other chains jumping to stale ones
	unjump  []string // "-D" lines of edited base jumps
	foreign []string // chains with handoff's prefix that are not handoff's: left alone
	jumps   []string // "-I" lines of missing base jumps
	remove  []string // chains deleted at the end
	reasons []string // why each chain is written, for logs
}

func (p *restorePlan) empty() bool {
	return len(p.write) == 0 && len(p.flush) == 0 && len(p.unlink) == 0 && len(p.unjump) == 0 && len(p.jumps) == 0 && len(p.remove) == 0
}

// text renders the plan as iptables-restore --noflush input. Order
// matters: chains exist before rules jump to them, and chains are deleted
// only after every rule that referenced them is gone.
func (p *restorePlan) text() []byte {
	var b bytes.Buffer
	b.WriteString("*" + string(p.table) + "\n")
	for _, c := range p.write {
		b.WriteString(":" + c.name + " - [0:0]\n")
	}
	for _, c := range p.flush {
		b.WriteString(":" + c + " - [0:0]\n")
	}
	for _, l := range p.unlink {
		b.WriteString(l + "\n")
	}
	for _, c := range p.write {
		for _, r := range c.rules {
			b.WriteString(r + "\n")
		}
	}
	for _, l := range p.unjump {
		b.WriteString(l + "\n")
	}
	for _, l := range p.jumps {
		b.WriteString(l + "\n")
	}
	for _, c := range p.remove {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

// tableCache is what handoff knows of a table it wrote last: the text it
// rendered of each of its chains, and the chains and base jumps as the
// kernel showed them right after (iptables-save's spelling differs from
// the rendered text: "--ctproto 6", addresses without /32). A rule edited
// behind handoff's back differs from the kernel's form while the rule
// count stays; the canary's read of the table compares the two.
type tableCache struct {
	rendered map[string]string   // chain → its rendered text
	kernel   map[string][]string // chain → its rules after the write
	jumps    map[string]string   // baseJump.key() → the jump after the write
}

// readBack records in c what the kernel shows of want and of the base
// jumps of t.
func (c *tableCache) readBack(t table, want []chain, cur saved, jumps []baseJump) {
	c.rendered = make(map[string]string, len(want))
	c.kernel = make(map[string][]string, len(want))
	c.jumps = map[string]string{}
	for _, ch := range want {
		c.rendered[ch.name] = ch.text()
		c.kernel[ch.name] = cur.chains[ch.name]
	}
	for _, j := range jumps {
		if j.table != t {
			continue
		}
		if js := cur.jumpRules(j); len(js) == 1 {
			c.jumps[j.key()] = js[0]
		}
	}
}

// key names a base jump in a tableCache.
func (j baseJump) key() string { return j.builtin + ">" + j.target }

// jumpRules returns the rules of j's built-in chain that jump to j's
// target.
func (s saved) jumpRules(j baseJump) []string {
	var out []string
	for _, r := range s.chains[j.builtin] {
		if ruleTarget(r) == j.target {
			out = append(out, r)
		}
	}
	return out
}

// planTable works out what must change in table t: chains whose rendered
// text differs from the cache's, whose rule count differs from the
// kernel's, or whose rules differ from what the kernel showed after the
// last write (edited, replaced or reordered behind handoff's back) are
// rewritten; owned chains not wanted are removed (keep says which
// unwanted owned chains to leave alone); missing base jumps are inserted,
// and edited or repeated ones replaced. cache may be nil (nothing known).
func planTable(t table, want []chain, cache *tableCache, cur saved, jumps []baseJump, keep func(string) bool) *restorePlan {
	if cache == nil {
		cache = &tableCache{}
	}
	p := &restorePlan{table: t}
	wanted := map[string]bool{}
	for _, c := range want {
		wanted[c.name] = true
		rules, exists := cur.chains[c.name]
		kernel, known := cache.kernel[c.name]
		switch {
		case !exists:
			p.reasons = append(p.reasons, c.name+" missing")
		case len(rules) != len(c.rules):
			p.reasons = append(p.reasons, fmt.Sprintf("%s has %d rules, want %d", c.name, len(rules), len(c.rules)))
		case cache.rendered[c.name] != c.text():
			p.reasons = append(p.reasons, c.name+" changed")
		case known && !slices.Equal(rules, kernel):
			p.reasons = append(p.reasons, c.name+" edited: "+firstDiff(rules, kernel))
		default:
			continue
		}
		p.write = append(p.write, c)
	}
	var stale []string
	own := cur.owner()
	for name := range cur.chains {
		if wanted[name] || !prefixed(name) || (keep != nil && keep(name)) {
			continue
		}
		if own.owns(name) {
			stale = append(stale, name)
		} else {
			p.foreign = append(p.foreign, name)
		}
	}
	slices.Sort(stale)
	slices.Sort(p.foreign)
	p.flush, p.remove = stale, stale
	p.unlink = unlinkLines(cur, own, stale)
	for _, j := range jumps {
		if j.table != t {
			continue
		}
		js := cur.jumpRules(j)
		form, known := cache.jumps[j.key()]
		switch {
		case len(js) == 1 && (!known || js[0] == form):
			continue
		case len(js) == 0:
			p.reasons = append(p.reasons, "jump missing: "+j.builtin+" -> "+j.target)
		default:
			p.reasons = append(p.reasons, fmt.Sprintf("jump edited: %s -> %s: %s", j.builtin, j.target, strings.Join(js, " | ")))
			for _, r := range js {
				p.unjump = append(p.unjump, "-D"+strings.TrimPrefix(r, "-A"))
			}
		}
		p.jumps = append(p.jumps, j.line())
	}
	return p
}

// firstDiff describes where two rule lists first differ.
func firstDiff(got, want []string) string {
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			return fmt.Sprintf("rule %d is %q, was %q", i+1, got[i], want[i])
		}
	}
	return "rules differ"
}

// unlinkLines returns "-D" lines deleting every rule outside handoff's
// chains that jumps to one of the chains in gone. Rules inside handoff's
// chains go when those chains are flushed or rewritten.
func unlinkLines(cur saved, own owner, gone []string) []string {
	if len(gone) == 0 {
		return nil
	}
	var out []string
	names := make([]string, 0, len(cur.chains))
	for name := range cur.chains {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if own.owns(name) {
			continue
		}
		for _, r := range cur.chains[name] {
			if slices.Contains(gone, ruleTarget(r)) {
				out = append(out, "-D"+strings.TrimPrefix(r, "-A"))
			}
		}
	}
	return out
}

// linesAround returns the lines of data around line n (1-based), each
// prefixed with its number, for logging a failed restore.
func linesAround(data []byte, n, context int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	lo, hi := max(n-1-context, 0), min(n+context, len(lines))
	if n <= 0 || lo >= hi {
		lo, hi = 0, min(len(lines), 2*context+1)
	}
	var b strings.Builder
	for i := lo; i < hi; i++ {
		mark := "  "
		if i == n-1 {
			mark = "> "
		}
		fmt.Fprintf(&b, "%s%d: %s\n", mark, i+1, lines[i])
	}
	return b.String()
}

// markLayout returns the layout of o.MarkMask (DefaultMarkMask when 0).
func (o Options) markLayout() (markLayout, error) {
	if o.MarkMask == 0 {
		return newMarkLayout(DefaultMarkMask)
	}
	return newMarkLayout(o.MarkMask)
}

// markLayout places backend slots in a contiguous field of the skb mark,
// the bits of Options.MarkMask. Only those bits are ever read or changed
// (--map-mark applies the index entry's mask, --mark compares under a
// mask), so the rest of the mark stays free for other software.
type markLayout struct {
	mask  uint32 // the field, in mark bits
	shift uint   // the field's lowest bit
}

// newMarkLayout checks mask (dataplane.MarkSlots).
func newMarkLayout(mask uint32) (markLayout, error) {
	if _, err := dataplane.MarkSlots(mask); err != nil {
		return markLayout{}, err
	}
	return markLayout{mask: mask, shift: uint(bits.TrailingZeros32(mask))}, nil
}

// maxSlot is the largest slot: the field's all-ones value is reserved
// (for the transparent proxy's routing mark), and 0 means no backend.
func (l markLayout) maxSlot() uint32 { return l.mask>>l.shift - 1 }

// slotBits returns the slot bits from bit from up, in slot space.
func (l markLayout) slotBits(from uint) uint32 { return (l.mask >> l.shift) &^ (1<<from - 1) }

// match is the rule option matching slot bits v under mask m (slot space).
func (l markLayout) match(v, m uint32) string {
	return "-m mark --mark 0x" + strconv.FormatUint(uint64(v<<l.shift), 16) + "/0x" + strconv.FormatUint(uint64(m<<l.shift), 16)
}

// reserved is the field's all-ones value, which no slot takes: the mark
// of transparent dials and their replies.
func (l markLayout) reserved() uint32 { return l.mask }

// reservedMatch is "V/M" of the reserved mark, as mark options take it.
func (l markLayout) reservedMatch() string {
	return "0x" + strconv.FormatUint(uint64(l.mask), 16) + "/0x" + strconv.FormatUint(uint64(l.mask), 16)
}

// mark is the index entry's skbinfo mark of slot.
func (l markLayout) mark(slot uint32) skbMark { return skbMark{value: slot << l.shift, mask: l.mask} }

// slotOf returns the slot a mark option "V/M" (as iptables-save prints
// it) selects in full, or 0 when it does not (another mask, a tree
// node's partial match).
func (l markLayout) slotOf(opt string) uint32 {
	vs, ms, ok := strings.Cut(opt, "/")
	if !ok {
		return 0
	}
	v, err1 := strconv.ParseUint(vs, 0, 32)
	m, err2 := strconv.ParseUint(ms, 0, 32)
	if err1 != nil || err2 != nil || uint32(m) != l.mask || uint32(v)&^l.mask != 0 {
		return 0
	}
	return uint32(v) >> l.shift
}
