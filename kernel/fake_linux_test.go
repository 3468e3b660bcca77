package kernel

// A fake kernel for unit tests: ipsets and iptables tables that reject what
// the real ones reject (a jump to a missing chain, a rule using a missing
// set, flushing an undeclared chain, deleting a referenced chain or set),
// and a small packet walker to check where a SYN lands.

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/handoff-lb/handoff/dataplane"
)

// builtinChains are the kernel's chains of each table.
var builtinChains = map[table][]string{
	mangleTable: {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	natTable:    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	filterTable: {"INPUT", "FORWARD", "OUTPUT"},
}

// standardTargets are targets that are not chains.
var standardTargets = map[string]bool{
	"ACCEPT": true, "DROP": true, "RETURN": true, "REJECT": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "SET": true, "LOG": true, "MARK": true, "CONNMARK": true, "NFQUEUE": true,
}

type fakeSet struct {
	spec    setSpec
	members map[netip.Addr]member
	ports   map[netip.AddrPort]member // hash:ip,port sets (counting sets)
}

// fakeTable is one table: chains in creation order and their rules.
type fakeTable struct {
	order []string
	rules map[string][]string
}

func newFakeTable(t table) *fakeTable {
	ft := &fakeTable{rules: map[string][]string{}}
	for _, c := range builtinChains[t] {
		ft.order = append(ft.order, c)
		ft.rules[c] = nil
	}
	return ft
}

func (ft *fakeTable) clone() *fakeTable {
	c := &fakeTable{order: slices.Clone(ft.order), rules: map[string][]string{}}
	for k, v := range ft.rules {
		c.rules[k] = slices.Clone(v)
	}
	return c
}

type fakeKernel struct {
	mu      sync.Mutex
	sets    map[string]*fakeSet
	tables  [2]map[table]*fakeTable
	local   map[netip.Addr]bool // addresses of the host, for addrtype LOCAL
	log     []string            // operations that changed something, in order
	failOn  string              // restore input containing this fails at that line
	onList  func()              // called (unlocked) before a list returns, once: the list takes it
	flows   []flow
	restore int // restore calls
	saves   int // save calls
	// lastWalk is the cost of the last synLands: rules looked at and set
	// lookups made.
	lastWalk struct {
		rules, lookups int
		held           bool // the SYN went to the held-SYN queue
	}
	creates int // create calls
	batches int // addBatch calls
}

func newFakeKernel() *fakeKernel {
	k := &fakeKernel{sets: map[string]*fakeSet{}, local: map[netip.Addr]bool{}}
	for f := range k.tables {
		k.tables[f] = map[table]*fakeTable{}
		for t := range builtinChains {
			k.tables[f][t] = newFakeTable(t)
		}
	}
	return k
}

// newFakeDataplane is a Dataplane on a fresh fake kernel, without canary.
func newFakeDataplane(o Options) (*Dataplane, *fakeKernel) {
	k := newFakeKernel()
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	d := newDataplane(o, fakeSets{k}, fakeFlows{k}, [2]iptables{fakeTables{k, ipv4}, fakeTables{k, ipv6}})
	return d, k
}

// syncedFake is a Dataplane on a fresh fake kernel, without canary, synced
// to st.
func syncedFake(t testing.TB, st dataplane.State) (*Dataplane, *fakeKernel) {
	t.Helper()
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, st)
	return d, k
}

func (k *fakeKernel) logf(format string, args ...any) {
	k.log = append(k.log, fmt.Sprintf(format, args...))
}

// referenced reports whether any rule of any table uses set.
func (k *fakeKernel) setReferenced(set string) bool {
	for _, ts := range k.tables {
		for _, ft := range ts {
			for _, rules := range ft.rules {
				for _, r := range rules {
					if slices.Contains(ruleSets(r), set) {
						return true
					}
				}
			}
		}
	}
	return false
}

// ruleSets returns the sets a rule uses.
func ruleSets(rule string) []string {
	var out []string
	args := splitArgs(rule)
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--match-set" || args[i] == "--add-set" || args[i] == "--del-set" || args[i] == "--map-set" {
			out = append(out, args[i+1])
		}
	}
	return out
}

// fakeSets is the ipsets seam on a fakeKernel.
type fakeSets struct{ k *fakeKernel }

func (f fakeSets) create(name string, s setSpec) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	f.k.creates++
	if cur, ok := f.k.sets[name]; ok {
		if cur.spec != s {
			return errSetDiffers
		}
		return nil
	}
	f.k.sets[name] = &fakeSet{spec: s, members: map[netip.Addr]member{}, ports: map[netip.AddrPort]member{}}
	f.k.logf("create %s", name)
	return nil
}

func (f fakeSets) destroy(name string) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if _, ok := f.k.sets[name]; !ok {
		return nil
	}
	if f.k.setReferenced(name) {
		return errSetInUse
	}
	delete(f.k.sets, name)
	f.k.logf("destroy %s", name)
	return nil
}

func (f fakeSets) swap(a, b string) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	sa, sb := f.k.sets[a], f.k.sets[b]
	if sa == nil || sb == nil {
		return errNoSet
	}
	if sa.spec.family != sb.spec.family {
		return fmt.Errorf("type mismatch")
	}
	f.k.sets[a], f.k.sets[b] = sb, sa
	f.k.logf("swap %s %s", a, b)
	return nil
}

func (f fakeSets) names() ([]string, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	return slices.Sorted(maps.Keys(f.k.sets)), nil
}

func (f fakeSets) headers() ([]setHeader, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	var out []setHeader
	for _, name := range slices.Sorted(maps.Keys(f.k.sets)) {
		spec := f.k.sets[name].spec
		if spec.maxelem == 0 {
			spec.maxelem = defaultMaxelem
		}
		out = append(out, setHeader{name: name, spec: spec, exact: true, entries: len(f.k.sets[name].members) + len(f.k.sets[name].ports)})
	}
	return out, nil
}

func (f fakeSets) add(name string, ip netip.Addr, cidr uint8, timeout uint32, comment string, replace bool) error {
	return f.addEntry(setAdd{set: name, ip: ip, cidr: cidr, timeout: timeout, comment: comment}, replace)
}

// fakeEntry is the member key of ip/cidr in s, as the kernel stores it: a
// hash:net set masks the address to the network (cidr 0 is a host), and a
// hash:ip set takes no cidr but the host's.
func fakeEntry(s *fakeSet, ip netip.Addr, cidr uint8) (netip.Addr, error) {
	bits := uint8(ip.BitLen())
	if cidr == 0 || cidr == bits {
		return ip, nil
	}
	if !s.spec.net || cidr > bits {
		return ip, fmt.Errorf("invalid cidr %d for %s", cidr, s.spec.typeName())
	}
	return netip.PrefixFrom(ip, int(cidr)).Masked().Addr(), nil
}

// addEntry adds e as the kernel does: a comment needs a set with comments,
// a mark one with skbinfo.
func (f fakeSets) addEntry(e setAdd, replace bool) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	name, ip, timeout, comment := e.set, e.ip, e.timeout, e.comment
	s := f.k.sets[name]
	if s == nil {
		return errNoSet
	}
	if (ip.Is4() != (s.spec.family == ipv4)) || ip.Is4In6() {
		return fmt.Errorf("invalid family")
	}
	if s.spec.counters {
		return fmt.Errorf("missing port in a hash:ip,port set")
	}
	ip, err := fakeEntry(s, ip, e.cidr)
	if err != nil {
		return err
	}
	if len(comment) > maxComment || strings.ContainsAny(comment, "\"\n") {
		return fmt.Errorf("invalid comment")
	}
	if s.spec.timeout == 0 && timeout > 0 {
		return fmt.Errorf("timeout extension missing")
	}
	if comment != "" && s.spec.index {
		return fmt.Errorf("comment extension missing")
	}
	if e.mark.mask != 0 && !s.spec.index {
		return fmt.Errorf("skbinfo extension missing")
	}
	_, present := s.members[ip]
	if present && !replace {
		return errExists
	}
	maxelem := s.spec.maxelem
	if maxelem == 0 {
		maxelem = 65536
	}
	if !present && len(s.members) >= int(maxelem) {
		return fmt.Errorf("%w (fake)", dataplane.ErrFull)
	}
	if timeout == 0 {
		timeout = s.spec.timeout
	}
	s.members[ip] = member{ip: ip, cidr: e.cidr, timeout: timeout, comment: comment, mark: e.mark}
	return nil
}

func (f fakeSets) addBatch(es []setAdd, replace bool, errs []error) {
	f.k.mu.Lock()
	f.k.batches++
	f.k.mu.Unlock()
	for i, e := range es {
		errs[i] = f.addEntry(e, replace)
	}
}

func (f fakeSets) flush(name string) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	s := f.k.sets[name]
	if s == nil {
		return nil
	}
	clear(s.members)
	clear(s.ports)
	f.k.logf("flush %s", name)
	return nil
}

func (f fakeSets) count(name string) (int, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	s := f.k.sets[name]
	if s == nil {
		return 0, errNoSet
	}
	return len(s.members) + len(s.ports), nil
}

func (f fakeSets) del(name string, ip netip.Addr, cidr uint8) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	s := f.k.sets[name]
	if s == nil {
		return errNoSet
	}
	ip, err := fakeEntry(s, ip, cidr)
	if err != nil {
		return err
	}
	delete(s.members, ip)
	return nil
}

func (f fakeSets) test(name string, ip netip.Addr, cidr uint8) (bool, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	s := f.k.sets[name]
	if s == nil {
		return false, errNoSet
	}
	ip, err := fakeEntry(s, ip, cidr)
	if err != nil {
		return false, err
	}
	_, ok := s.members[ip]
	return ok, nil
}

func (f fakeSets) list(name string, fn func(member) error) error {
	f.k.mu.Lock()
	s := f.k.sets[name]
	if s == nil {
		f.k.mu.Unlock()
		return errNoSet
	}
	ms := slices.Collect(maps.Values(s.members))
	ms = slices.AppendSeq(ms, maps.Values(s.ports))
	hook := f.k.onList
	f.k.onList = nil
	f.k.mu.Unlock()
	slices.SortFunc(ms, func(a, b member) int {
		return netip.AddrPortFrom(a.ip, a.port).Compare(netip.AddrPortFrom(b.ip, b.port))
	})
	if hook != nil {
		hook()
	}
	for _, m := range ms {
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// portSet returns the hash:ip,port set name for an entry of ap, checking
// ap as the kernel does. The caller holds f.k.mu.
func (f fakeSets) portSet(name string, ap netip.AddrPort) (*fakeSet, error) {
	s := f.k.sets[name]
	switch {
	case s == nil:
		return nil, errNoSet
	case !s.spec.counters:
		return nil, fmt.Errorf("a port in a %s set", s.spec.typeName())
	case ap.Addr().Is4() != (s.spec.family == ipv4) || ap.Addr().Is4In6():
		return nil, fmt.Errorf("invalid family")
	}
	return s, nil
}

func (f fakeSets) addPort(name string, ap netip.AddrPort) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	s, err := f.portSet(name, ap)
	if err != nil {
		return err
	}
	if _, ok := s.ports[ap]; !ok {
		s.ports[ap] = member{ip: ap.Addr(), port: ap.Port()}
		f.k.logf("add %s %s", name, ap)
	}
	return nil
}

func (f fakeSets) delPort(name string, ap netip.AddrPort) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	s, err := f.portSet(name, ap)
	if err != nil {
		return err
	}
	if _, ok := s.ports[ap]; ok {
		delete(s.ports, ap)
		f.k.logf("del %s %s", name, ap)
	}
	return nil
}

// fakeFlows is the conntrack seam on a fakeKernel.
type fakeFlows struct{ k *fakeKernel }

func (f fakeFlows) deleteFlows(fam family, match func(flow) bool) (int, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	n := 0
	f.k.flows = slices.DeleteFunc(f.k.flows, func(fl flow) bool {
		if fl.dst.Addr().Is6() != (fam == ipv6) || !match(fl) {
			return false
		}
		n++
		return true
	})
	return n, nil
}

// fakeTables is the iptables seam of one family on a fakeKernel.
type fakeTables struct {
	k   *fakeKernel
	fam family
}

func (f fakeTables) save(_ context.Context, t table, counters bool) ([]byte, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	f.k.saves++
	if t != allTables {
		return f.saveTable(t, counters), nil
	}
	var b bytes.Buffer
	for _, t := range tables {
		b.Write(f.saveTable(t, counters))
	}
	return b.Bytes(), nil
}

// saveTable is the iptables-save text of t. The caller holds f.k.mu.
func (f fakeTables) saveTable(t table, counters bool) []byte {
	ft := f.k.tables[f.fam][t]
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Generated by fake\n*%s\n", t)
	for _, c := range ft.order {
		policy := "-"
		if slices.Contains(builtinChains[t], c) {
			policy = "ACCEPT"
		}
		fmt.Fprintf(&b, ":%s %s [0:0]\n", c, policy)
	}
	for _, c := range ft.order {
		for _, r := range ft.rules[c] {
			if counters {
				b.WriteString("[0:0] ")
			}
			b.WriteString(r + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

func (f fakeTables) restore(_ context.Context, data []byte) error {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	f.k.restore++
	var (
		t    table
		work *fakeTable
	)
	fail := func(n int, format string, args ...any) error {
		return &restoreError{bin: "fake-restore", line: n, msg: fmt.Sprintf(format, args...)}
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	for i, l := range lines {
		n := i + 1
		if f.k.failOn != "" && strings.Contains(l, f.k.failOn) {
			return fail(n, "injected failure")
		}
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "*"):
			if work != nil {
				return fail(n, "table %s not committed", t)
			}
			t = table(l[1:])
			if f.k.tables[f.fam][t] == nil {
				return fail(n, "no table %s", t)
			}
			work = f.k.tables[f.fam][t].clone()
		case l == "COMMIT":
			if work == nil {
				return fail(n, "COMMIT outside a table")
			}
			f.k.tables[f.fam][t] = work
			f.k.logf("restore %s %s", f.fam, t)
			work = nil
		case work == nil:
			return fail(n, "line outside a table")
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			if slices.Contains(builtinChains[t], name) {
				continue // policy only; --noflush keeps the rules
			}
			if _, ok := work.rules[name]; !ok {
				work.order = append(work.order, name)
			}
			work.rules[name] = nil
		default:
			args := splitArgs(l)
			if len(args) < 2 {
				return fail(n, "bad line %q", l)
			}
			op, name := args[0], args[1]
			rules, exists := work.rules[name]
			if !exists {
				return fail(n, "chain %s does not exist", name)
			}
			switch op {
			case "-A", "-I":
				rest := strings.TrimSpace(strings.TrimPrefix(l, op+" "+name))
				spec := args[2:]
				pos := 0
				if op == "-I" && len(spec) > 0 {
					if p, err := strconv.Atoi(spec[0]); err == nil {
						pos, spec = p-1, spec[1:]
						_, rest, _ = strings.Cut(rest, " ")
					}
				}
				if err := f.checkRule(work, t, spec); err != nil {
					return fail(n, "%v", err)
				}
				rule := "-A " + name + " " + rest
				if op == "-A" {
					work.rules[name] = append(rules, rule)
				} else {
					work.rules[name] = slices.Insert(rules, min(max(pos, 0), len(rules)), rule)
				}
			case "-D":
				want := "-A " + strings.TrimPrefix(l, "-D ")
				i := slices.IndexFunc(rules, func(r string) bool { return slices.Equal(splitArgs(r), splitArgs(want)) })
				if i < 0 {
					return fail(n, "no such rule in %s", name)
				}
				work.rules[name] = slices.Delete(rules, i, i+1)
			case "-F":
				work.rules[name] = nil
			case "-X":
				if slices.Contains(builtinChains[t], name) {
					return fail(n, "cannot delete built-in chain %s", name)
				}
				if len(rules) > 0 {
					return fail(n, "chain %s not empty", name)
				}
				for c, rs := range work.rules {
					for _, r := range rs {
						if ruleTarget(r) == name {
							return fail(n, "chain %s is referenced by %s", name, c)
						}
					}
				}
				delete(work.rules, name)
				work.order = slices.DeleteFunc(work.order, func(c string) bool { return c == name })
			default:
				return fail(n, "unknown command %s", op)
			}
		}
	}
	if work != nil {
		return fail(len(lines), "missing COMMIT")
	}
	return nil
}

// checkRule rejects a rule jumping to a missing chain or using a missing
// set, as the kernel does.
func (f fakeTables) checkRule(work *fakeTable, t table, spec []string) error {
	for i := 0; i+1 < len(spec); i++ {
		switch spec[i] {
		case "-j", "-g":
			target := spec[i+1]
			if !standardTargets[target] {
				if _, ok := work.rules[target]; !ok {
					return fmt.Errorf("chain '%s' does not exist", target)
				}
			}
			if (target == "DNAT" || target == "MASQUERADE") && t != natTable {
				return fmt.Errorf("%s only in the nat table", target)
			}
			if target == "SET" && slices.Contains(spec, "--map-set") && t != mangleTable {
				return fmt.Errorf("--map-set only usable from mangle table")
			}
		case "--match-set", "--add-set", "--map-set":
			if _, ok := f.k.sets[spec[i+1]]; !ok {
				return fmt.Errorf("set %s doesn't exist", spec[i+1])
			}
		}
	}
	return nil
}

// synLands walks a TCP SYN from src to dst:dport through mangle and nat
// PREROUTING, as a new connection, and returns its DNAT destination, if
// any. It interprets the options handoff renders; any other option fails
// the walk. As the kernel does, SET --add-set on an existing entry keeps
// its comment and clears its skbinfo mark.
func (k *fakeKernel) synLands(src netip.Addr, dst netip.AddrPort) (netip.AddrPort, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fam := familyOf(dst.Addr())
	w := &synWalk{k: k, src: src, dst: dst, states: map[string]bool{"NEW": true}}
	_, verdict, err := w.walk(k.tables[fam][mangleTable], "PREROUTING", 0)
	k.lastWalk.held = verdict == "NFQUEUE"
	if err != nil || k.lastWalk.held {
		return netip.AddrPort{}, false, err
	}
	to, verdict, err := w.walk(k.tables[fam][natTable], "PREROUTING", 0)
	k.lastWalk.rules, k.lastWalk.lookups = w.rules, w.lookups
	return to, verdict == "DNAT", err
}

// forwardLands walks a packet of size bytes of a connection from client
// (port clientPort) to vip, DNATed to be, through filter FORWARD, as the
// kernel does every packet of a forwarded flow: from the client to be
// or, with reply set, be's reply. A counting set entry it matches counts
// it. It returns the verdict ("" when the packet fell off to the chain's
// policy) and the comment of the rule that gave it; lastWalk counts the
// rules looked at and the set lookups.
func (k *fakeKernel) forwardLands(client netip.AddrPort, vip, be netip.AddrPort, reply bool, size int) (verdict, by string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	w := &synWalk{k: k, src: client.Addr(), sport: client.Port(), dst: be, size: size,
		states: map[string]bool{"DNAT": true, "ESTABLISHED": true}, orig: vip, reply: be}
	if reply {
		w.src, w.sport, w.dst = be.Addr(), be.Port(), client
	}
	_, verdict, err = w.walk(k.tables[familyOf(vip.Addr())][filterTable], "FORWARD", 0)
	k.lastWalk.rules, k.lastWalk.lookups = w.rules, w.lookups
	return verdict, w.by, err
}

// synWalk is one packet on its way through the tables: a SYN, or a
// packet of a forwarded connection (forwardLands).
type synWalk struct {
	k      *fakeKernel
	src    netip.Addr
	sport  uint16 // forwarded packets only
	dst    netip.AddrPort
	size   int // bytes, for the counters of counting sets
	mark   uint32
	states map[string]bool // the conntrack states the packet is in
	orig   netip.AddrPort  // the connection's original destination (forwarded packets)
	reply  netip.AddrPort  // its reply source: where it was DNATed to

	rules, lookups int    // the walk's cost so far
	by             string // the comment of the rule that ended the walk
}

// walk runs the packet through chain and returns the verdict that ended
// it: "" when it fell off the end or returned (the caller goes on), else
// the terminal target (DNAT with its destination, ACCEPT).
func (w *synWalk) walk(ft *fakeTable, chain string, depth int) (netip.AddrPort, string, error) {
	if depth > 10 {
		return netip.AddrPort{}, "", fmt.Errorf("loop at %s", chain)
	}
	fail := func(format string, args ...any) (netip.AddrPort, string, error) {
		return netip.AddrPort{}, "", fmt.Errorf(format, args...)
	}
rules:
	for _, r := range ft.rules[chain] {
		w.rules++
		args := splitArgs(r)[2:]
		module, note := "", ""
		for i := 0; i < len(args); i++ {
			a := args[i]
			next := func() string { i++; return args[i] }
			// The next argument as a prefix holding a's address (a zero
			// a is in none), or as a's port.
			inPrefix := func(a netip.AddrPort) bool { return netip.MustParsePrefix(next()).Contains(a.Addr()) }
			onPort := func(a netip.AddrPort) bool { return next() == strconv.Itoa(int(a.Port())) }
			switch a {
			case "-p":
				if next() != "tcp" {
					continue rules
				}
			case "-m":
				module = next()
			case "--tcp-flags":
				if next() != "FIN,SYN,RST,ACK" || next() != "SYN" {
					return fail("fake cannot interpret the flags of %q", r)
				}
			case "!":
				// Only "! --src-type LOCAL": a client's SYN comes from
				// elsewhere, so the negation holds.
				if next() != "--src-type" || next() != "LOCAL" {
					return fail("fake cannot interpret a negation in %q", r)
				}
			case "--comment":
				note = next()
			case "--ctstate":
				if !w.states[next()] {
					continue rules
				}
			case "--ctproto":
				if next() != "tcp" {
					continue rules
				}
			case "--ctorigdst":
				if !inPrefix(w.orig) {
					continue rules
				}
			case "--ctorigdstport":
				if !onPort(w.orig) {
					continue rules
				}
			case "--ctreplsrc":
				if !inPrefix(w.reply) {
					continue rules
				}
			case "--ctreplsrcport":
				if !onPort(w.reply) {
					continue rules
				}
			case "-d":
				if !inPrefix(w.dst) {
					continue rules
				}
			case "--dport":
				if !onPort(w.dst) {
					continue rules
				}
			case "--dst-type":
				if next() != "LOCAL" || !w.k.local[w.dst.Addr()] {
					continue rules
				}
			case "--mark":
				vs, ms, _ := strings.Cut(next(), "/")
				v, _ := strconv.ParseUint(vs, 0, 32)
				m, _ := strconv.ParseUint(ms, 0, 32)
				mark := w.mark
				if module == "connmark" {
					mark = 0 // a new connection's
				}
				if mark&uint32(m) != uint32(v) {
					continue rules
				}
			case "--match-set":
				s, dir := w.k.sets[next()], next()
				if s == nil {
					return fail("bad match-set in %q", r)
				}
				w.lookups++
				if dir == "src" && !s.spec.counters {
					if _, ok := s.members[w.src]; !ok {
						continue rules
					}
					break
				}
				// A counting set, by destination or by source; a match
				// counts the packet against the entry.
				var key netip.AddrPort
				switch {
				case dir == "dst,dst" && s.spec.counters:
					key = w.dst
				case dir == "src,src" && s.spec.counters:
					key = netip.AddrPortFrom(w.src, w.sport)
				default:
					return fail("bad match-set in %q", r)
				}
				m, ok := s.ports[key]
				if !ok {
					continue rules
				}
				m.packets++
				m.bytes += uint64(w.size)
				s.ports[key] = m
			case "-g", "-j":
				target := next()
				switch target {
				case "DNAT":
					if next() != "--to-destination" {
						return fail("bad DNAT in %q", r)
					}
					return netip.MustParseAddrPort(next()), "DNAT", nil
				case "SET":
					if err := w.set(args[i+1:]); err != nil {
						return fail("%v in %q", err, r)
					}
					continue rules
				case "NFQUEUE":
					return netip.AddrPort{}, "NFQUEUE", nil
				case "RETURN":
					return netip.AddrPort{}, "", nil
				case "ACCEPT":
					w.by = note
					return netip.AddrPort{}, "ACCEPT", nil
				default:
					to, verdict, err := w.walk(ft, target, depth+1)
					if verdict != "" || err != nil || a == "-g" {
						return to, verdict, err
					}
					continue rules
				}
			default:
				return fail("fake cannot interpret %q in %q", a, r)
			}
		}
	}
	return netip.AddrPort{}, "", nil
}

// set runs the SET target's options: --add-set S src --exist --timeout T
// (refresh) or --map-set S src --map-mark.
func (w *synWalk) set(opts []string) error {
	switch {
	case len(opts) == 6 && opts[0] == "--add-set" && opts[2] == "src" && opts[3] == "--exist" && opts[4] == "--timeout":
		w.lookups++
		t, _ := strconv.Atoi(opts[5])
		s := w.k.sets[opts[1]]
		m := s.members[w.src]
		m.timeout = uint32(t)
		m.mark = skbMark{}
		s.members[w.src] = m
	case len(opts) == 4 && opts[0] == "--map-set" && opts[2] == "src" && opts[3] == "--map-mark":
		w.lookups++
		if m, ok := w.k.sets[opts[1]].members[w.src]; ok {
			w.mark = w.mark&^m.mark.mask | m.mark.value
		}
	default:
		return fmt.Errorf("bad SET")
	}
	return nil
}

// tableText is the rules of a table as save shows them, for assertions.
func (k *fakeKernel) tableText(fam family, t table) string {
	b, _ := fakeTables{k, fam}.save(context.Background(), t, false)
	return string(b)
}

// defaultLayout is the mark layout of DefaultMarkMask.
var defaultLayout, _ = newMarkLayout(DefaultMarkMask)
