package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/dataplane"
)

// family is an address family of sets and of iptables.
type family int

const (
	ipv4 family = iota
	ipv6
)

func (f family) String() string {
	if f == ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

func familyOf(a netip.Addr) family {
	if a.Unmap().Is4() {
		return ipv4
	}
	return ipv6
}

// setSpec is what a set is created with: a pin set (hash:ip with
// comments) or, with index set, a service's dispatch index (hash:ip with
// skbinfo, whose entries carry the skb mark of the client's backend). With
// net set, either is a hash:net set: the service pins client networks.
// With counters set, it is a service's counting set (hash:ip,port with
// counters, entries of its backends' addresses, no timeout).
type setSpec struct {
	family   family
	timeout  uint32 // default timeout in seconds; 0 = the set has no timeouts
	maxelem  uint32 // 0 = the kernel's default
	index    bool
	net      bool
	counters bool
}

// typeName is the ipset type of sets of s.
func (s setSpec) typeName() string {
	switch {
	case s.counters:
		return "hash:ip,port"
	case s.net:
		return "hash:net"
	}
	return "hash:ip"
}

// setAdd is one entry of a batched add.
type setAdd struct {
	set     string
	ip      netip.Addr
	cidr    uint8  // hash:net sets: the network's prefix length; 0 = a host
	timeout uint32 // seconds; 0 = the set's default
	comment string
	mark    skbMark // index sets only
}

// skbMark is the skbinfo mark of an index entry: the value and the mask
// that SET --map-mark applies to a packet (mark = mark&^mask | value).
type skbMark struct{ value, mask uint32 }

// defaultMaxelem is the kernel's maxelem of a set created without one.
const defaultMaxelem = 65536

// setHeader is a set as the kernel lists its header.
type setHeader struct {
	name string
	spec setSpec
	// exact says that spec describes the set fully: a hash:ip (hash:net)
	// set with comments (or, for an index, skbinfo), or a hash:ip,port set
	// with counters, and no option that create does not give.
	exact bool
	// entries is the number of entries, -1 where the kernel does not say.
	entries int
}

// is reports whether h is a set that create(name, s) would leave alone.
// false means perhaps not: only the kernel's create can tell.
func (h setHeader) is(s setSpec) bool {
	if s.maxelem == 0 {
		s.maxelem = defaultMaxelem
	}
	return h.exact && h.spec == s
}

// member is one entry of a set, as listed.
type member struct {
	ip      netip.Addr
	cidr    uint8  // hash:net sets: the network's prefix length
	timeout uint32 // remaining seconds; 0 = permanent
	comment string
	mark    skbMark // index sets only
	// Counting sets only: the entry's TCP port, and the packets and
	// bytes the set's rules counted against it.
	port           uint16
	packets, bytes uint64
}

var (
	// errSetDiffers says that a set exists with another type, family,
	// timeout or maxelem than asked for.
	errSetDiffers = errors.New("set exists with different parameters")
	// errNoSet says that a set does not exist.
	errNoSet = errors.New("set does not exist")
	// errSetInUse says that a set is still referenced by a rule.
	errSetInUse = errors.New("set is referenced by a rule")
	// errExists says that an entry is already in the set.
	errExists = errors.New("entry already in the set")
)

// ipsets is the data plane's view of the kernel's ipsets. Implementations
// are safe for concurrent use. Errors wrap errSetDiffers, errNoSet,
// errSetInUse or dataplane.ErrFull where they apply.
type ipsets interface {
	// create makes a set as s says. A set of that name with
	// the same spec is left alone (nil); one with another spec is
	// reported with errSetDiffers.
	create(name string, s setSpec) error
	// destroy removes a set; an absent set is not an error.
	destroy(name string) error
	// swap exchanges the contents and parameters of two sets.
	swap(a, b string) error
	// names lists every set of the namespace, handoff's or not.
	names() ([]string, error)
	// headers lists every set of the namespace, handoff's or not, with
	// what its header says.
	headers() ([]setHeader, error)
	// add adds ip (the network ip/cidr in a hash:net set; cidr 0 is a
	// host) with the given timeout (0: the set's default, or none in a
	// set without timeouts) and comment. An entry already there is
	// replaced when replace is set, else reported with errExists.
	add(name string, ip netip.Addr, cidr uint8, timeout uint32, comment string, replace bool) error
	// addBatch adds every entry of es as add does, in as few round trips
	// as it can, and stores the outcome of es[i] in errs[i] (len(errs) ==
	// len(es)). Entries are added in order.
	addBatch(es []setAdd, replace bool, errs []error)
	// del removes ip (ip/cidr, as add); absent is not an error.
	del(name string, ip netip.Addr, cidr uint8) error
	// flush removes every entry of a set; an absent set is not an error.
	flush(name string) error
	// count returns the number of entries of a set.
	count(name string) (int, error)
	// test reports whether ip (ip/cidr, as add) is in the set.
	test(name string, ip netip.Addr, cidr uint8) (bool, error)
	// list calls fn for each member, stopping at fn's first error.
	list(name string, fn func(member) error) error
	// addPort adds ap (its address, tcp and its port) to a hash:ip,port
	// set, its counters from zero; an entry already there is kept, with
	// its counters.
	addPort(name string, ap netip.AddrPort) error
	// delPort removes ap from a hash:ip,port set; absent is not an error.
	delPort(name string, ap netip.AddrPort) error
}

// ipset command-level flags of IPSET_CMD_LIST (linux/netfilter/ipset/ip_set.h).
const (
	ipsetFlagListSetname = 1 << 1
	ipsetFlagListHeader  = 1 << 2
	ipsetErrHashFull     = nl.IPSET_ERR_TYPE_SPECIFIC // IPSET_ERR_HASH_FULL
)

// nlSets is ipsets over netlink. Commands go through a netlink.Handle bound
// to the namespace (one NETLINK_NETFILTER socket); adds, the hot path, go
// through a small pool of lean sockets (pinSocket); listings go through
// dump sockets (dumpSocket), one per listing in progress, read
// incrementally and parsed here without the per-attribute goroutines of
// the netlink package's decoder.
type nlSets struct {
	h     *netlink.Handle
	pins  pinSockets
	dumps *dumpSockets
}

// newNLSets opens the netlink sockets in ns (the caller's namespace when ns
// is not open). ns must stay open until close.
func newNLSets(ns netns.NsHandle) (*nlSets, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(30 * time.Second); err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	pins, err := newPinSockets(ns, min(runtime.GOMAXPROCS(0), 4))
	if err != nil {
		h.Close()
		return nil, err
	}
	return &nlSets{h: h, pins: pins, dumps: &dumpSockets{ns: ns}}, nil
}

// close releases the sockets and interrupts the listings in progress,
// which fail with errClosed; no other call may be in flight.
func (s *nlSets) close() {
	s.h.Close()
	s.pins.close()
	s.dumps.close()
}

func (s *nlSets) create(name string, spec setSpec) (err error) {
	defer recoverNetlink(&err)
	o := netlink.IpsetCreateOptions{
		Comments:    !spec.index && !spec.counters,
		Skbinfo:     spec.index,
		Counters:    spec.counters,
		Family:      unix.AF_INET,
		MaxElements: spec.maxelem,
	}
	if spec.family == ipv6 {
		o.Family = unix.AF_INET6
	}
	if spec.timeout > 0 {
		t := spec.timeout
		o.Timeout = &t
	}
	// Replace clears NLM_F_EXCL: the kernel then accepts an existing set
	// with identical parameters and returns EEXIST for a different one.
	o.Replace = true
	err = s.h.IpsetCreate(name, spec.typeName(), o)
	if errors.Is(err, syscall.EEXIST) {
		return errSetDiffers
	}
	return mapIpsetErr(err)
}

// destroy destroys a set. The kernel refuses while the set is being
// listed; listings of this nlSets (Pins walks) are then interrupted and
// the destroy retried.
func (s *nlSets) destroy(name string) error {
	err := s.retryListed(func() (err error) {
		defer recoverNetlink(&err)
		return mapIpsetErr(s.h.IpsetDestroy(name))
	}, name)
	if errors.Is(err, errNoSet) {
		return nil
	}
	return err
}

// swap swaps two sets, interrupting their listings as destroy does.
func (s *nlSets) swap(a, b string) error {
	return s.retryListed(func() (err error) {
		defer recoverNetlink(&err)
		return mapIpsetErr(s.h.IpsetSwap(a, b))
	}, a, b)
}

// retryListed runs op, a swap or destroy of sets, and while it fails with
// errSetInUse (the kernel's answer to either while a set is being
// listed, as well as to destroying a set a rule uses) interrupts this
// nlSets's listings of sets and runs op again. A listing that starts in
// between makes op fail again; after a few tries op's error is returned.
func (s *nlSets) retryListed(op func() error, sets ...string) error {
	for try := 0; ; try++ {
		err := op()
		if !errors.Is(err, errSetInUse) || try == 3 {
			return err
		}
		n := 0
		for _, set := range sets {
			n += s.dumps.interrupt(set)
		}
		if n == 0 {
			return err
		}
	}
}

func (s *nlSets) add(name string, ip netip.Addr, cidr uint8, timeout uint32, comment string, replace bool) error {
	return s.pins.add(setAdd{set: name, ip: ip, cidr: cidr, timeout: timeout, comment: comment}, replace)
}

func (s *nlSets) addBatch(es []setAdd, replace bool, errs []error) {
	s.pins.addBatch(es, replace, errs)
}

func (s *nlSets) flush(name string) (err error) {
	defer recoverNetlink(&err)
	err = mapIpsetErr(s.h.IpsetFlush(name))
	if errors.Is(err, errNoSet) {
		return nil
	}
	return err
}

// count reads the element count from the set's header
// (IPSET_ATTR_ELEMENTS), one round trip whatever the set's size; where the
// kernel's header lacks it, it counts the listed entries.
func (s *nlSets) count(name string) (int, error) {
	n := -1
	err := s.dumpSets(name, ipsetFlagListHeader, func(attrs []byte) error {
		for typ, val := range attributes(attrs) {
			if typ != nl.IPSET_ATTR_DATA {
				continue
			}
			for typ, val := range attributes(val) {
				if typ == nl.IPSET_ATTR_ELEMENTS && len(val) == 4 {
					n = int(binary.BigEndian.Uint32(val))
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n >= 0 {
		return n, nil
	}
	n = 0
	err = s.list(name, func(member) error { n++; return nil })
	return n, err
}

func (s *nlSets) del(name string, ip netip.Addr, cidr uint8) (err error) {
	defer recoverNetlink(&err)
	// Replace clears NLM_F_EXCL, so deleting an absent entry succeeds.
	err = s.h.IpsetDel(name, &netlink.IPSetEntry{IP: ipSlice(ip), CIDR: cidr, Replace: true})
	if err == nl.IPSetError(nl.IPSET_ERR_EXIST) {
		return nil
	}
	return mapIpsetErr(err)
}

// tcpProto is IPPROTO_TCP, the protocol of every counting set entry.
const tcpProto = unix.IPPROTO_TCP

func (s *nlSets) addPort(name string, ap netip.AddrPort) (err error) {
	defer recoverNetlink(&err)
	proto, port := uint8(tcpProto), ap.Port()
	err = mapIpsetErr(s.h.IpsetAdd(name, &netlink.IPSetEntry{IP: ipSlice(ap.Addr()), Protocol: &proto, Port: &port}))
	if errors.Is(err, errExists) {
		return nil
	}
	return err
}

func (s *nlSets) delPort(name string, ap netip.AddrPort) (err error) {
	defer recoverNetlink(&err)
	proto, port := uint8(tcpProto), ap.Port()
	// Replace clears NLM_F_EXCL, so deleting an absent entry succeeds.
	err = s.h.IpsetDel(name, &netlink.IPSetEntry{IP: ipSlice(ap.Addr()), Protocol: &proto, Port: &port, Replace: true})
	if err == nl.IPSetError(nl.IPSET_ERR_EXIST) {
		return nil
	}
	return mapIpsetErr(err)
}

func (s *nlSets) test(name string, ip netip.Addr, cidr uint8) (ok bool, err error) {
	defer recoverNetlink(&err)
	ok, err = s.h.IpsetTest(name, &netlink.IPSetEntry{IP: ipSlice(ip), CIDR: cidr})
	return ok, mapIpsetErr(err)
}

// ipSlice returns ip in the 4- or 16-byte form the kernel expects.
func ipSlice(ip netip.Addr) net.IP {
	if ip.Is4() {
		a := ip.As4()
		return a[:]
	}
	a := ip.As16()
	return a[:]
}

func (s *nlSets) names() ([]string, error) {
	var out []string
	err := s.dumpSets("", ipsetFlagListSetname, func(attrs []byte) error {
		for typ, val := range attributes(attrs) {
			if typ == nl.IPSET_ATTR_SETNAME {
				out = append(out, cString(val))
			}
		}
		return nil
	})
	return out, err
}

func (s *nlSets) headers() ([]setHeader, error) {
	var out []setHeader
	err := s.dumpSets("", ipsetFlagListHeader, func(attrs []byte) error {
		if h, ok := parseHeader(attrs); ok {
			out = append(out, h)
		}
		return nil
	})
	return out, err
}

// parseHeader decodes the header of a set from the attributes of a
// listing's message; ok is false for a message without a set name.
func parseHeader(attrs []byte) (h setHeader, ok bool) {
	typ, fam := "", byte(0)
	exact, timeout, flags := true, false, uint32(0)
	h.entries = -1
	for t, val := range attributes(attrs) {
		switch t {
		case nl.IPSET_ATTR_SETNAME:
			h.name, ok = cString(val), true
		case nl.IPSET_ATTR_TYPENAME:
			typ = cString(val)
		case nl.IPSET_ATTR_FAMILY:
			if len(val) == 1 {
				fam = val[0]
			}
		case nl.IPSET_ATTR_DATA:
			for t, val := range attributes(val) {
				switch {
				case t == nl.IPSET_ATTR_MAXELEM && len(val) == 4:
					h.spec.maxelem = binary.BigEndian.Uint32(val)
				case t == nl.IPSET_ATTR_TIMEOUT && len(val) == 4:
					h.spec.timeout = binary.BigEndian.Uint32(val)
					timeout = true
				case t == nl.IPSET_ATTR_CADT_FLAGS && len(val) == 4:
					flags = binary.BigEndian.Uint32(val)
				case t == nl.IPSET_ATTR_ELEMENTS && len(val) == 4:
					h.entries = int(binary.BigEndian.Uint32(val))
				case t == nl.IPSET_ATTR_HASHSIZE, t == nl.IPSET_ATTR_REFERENCES, t == nl.IPSET_ATTR_MEMSIZE:
				default:
					exact = false // netmask, bucketsize, markmask...
				}
			}
		}
	}
	switch fam {
	case unix.AF_INET:
		h.spec.family = ipv4
	case unix.AF_INET6:
		h.spec.family = ipv6
	default:
		exact = false
	}
	switch flags {
	case nl.IPSET_FLAG_WITH_COMMENT:
	case nl.IPSET_FLAG_WITH_SKBINFO:
		h.spec.index = true
	case nl.IPSET_FLAG_WITH_COUNTERS:
		h.spec.counters = true
	default:
		exact = false
	}
	// A timeout of 0 is a set with timeouts whose entries default to
	// none, not a set without timeouts. Counting sets are hash:ip,port,
	// and no other set is.
	h.spec.net = typ == "hash:net"
	wantType := "hash:ip"
	switch {
	case h.spec.counters:
		wantType = "hash:ip,port"
	case h.spec.net:
		wantType = "hash:net"
	}
	h.exact = exact && typ == wantType && timeout == (h.spec.timeout > 0)
	return h, ok
}

// list streams the members of a set to fn as the kernel's dump arrives,
// in constant memory. fn runs while the listing is in progress: it may
// take its time and call any method of s.
func (s *nlSets) list(name string, fn func(member) error) error {
	var ferr error
	err := s.dumpSets(name, 0, func(attrs []byte) error {
		for typ, val := range attributes(attrs) {
			if typ != nl.IPSET_ATTR_ADT {
				continue
			}
			for typ, data := range attributes(val) {
				if typ != nl.IPSET_ATTR_DATA {
					continue
				}
				if ferr = fn(parseMember(data)); ferr != nil {
					return ferr
				}
			}
		}
		return nil
	})
	if ferr != nil {
		return ferr
	}
	return err
}

// dumpSets runs IPSET_CMD_LIST (of one set, or of all when name is "")
// on a dump socket of its own and calls fn with the attributes of each
// reply message as it arrives, stopping at fn's first error. The
// attributes alias a buffer reused for the next message.
func (s *nlSets) dumpSets(name string, flags uint32, fn func(attrs []byte) error) error {
	ds, err := s.dumps.get(name)
	if err != nil {
		return err
	}
	reusable, err := ds.dump(name, flags, fn)
	if err != nil && ds.interrupted.Load() {
		err = errListInterrupted
		if s.dumps.isClosed() {
			err = errClosed
		}
	}
	s.dumps.put(ds, reusable)
	return mapIpsetErr(err)
}

// parseMember decodes one IPSET_ATTR_DATA of a hash:ip, hash:net or
// hash:ip,port listing.
func parseMember(data []byte) member {
	var m member
	for typ, val := range attributes(data) {
		switch typ {
		case nl.IPSET_ATTR_IP:
			for _, a := range attributes(val) {
				if ip, ok := netip.AddrFromSlice(a); ok {
					m.ip = ip
				}
			}
		case nl.IPSET_ATTR_CIDR:
			if len(val) >= 1 {
				m.cidr = val[0]
			}
		case nl.IPSET_ATTR_TIMEOUT:
			if len(val) == 4 {
				m.timeout = binary.BigEndian.Uint32(val)
			}
		case nl.IPSET_ATTR_COMMENT:
			m.comment = cString(val)
		case nl.IPSET_ATTR_SKBMARK:
			if len(val) == 8 {
				m.mark = skbMark{value: binary.BigEndian.Uint32(val[:4]), mask: binary.BigEndian.Uint32(val[4:])}
			}
		case nl.IPSET_ATTR_PORT:
			if len(val) == 2 {
				m.port = binary.BigEndian.Uint16(val)
			}
		case nl.IPSET_ATTR_PACKETS:
			if len(val) == 8 {
				m.packets = binary.BigEndian.Uint64(val)
			}
		case nl.IPSET_ATTR_BYTES:
			if len(val) == 8 {
				m.bytes = binary.BigEndian.Uint64(val)
			}
		}
	}
	return m
}

// attributes iterates over the netlink attributes in b, yielding each
// type (flags masked off) and value.
func attributes(b []byte) func(yield func(uint16, []byte) bool) {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= unix.SizeofRtAttr {
			l := int(binary.NativeEndian.Uint16(b[0:2]))
			typ := binary.NativeEndian.Uint16(b[2:4]) & 0x3fff // drop NLA_F_NESTED, NLA_F_NET_BYTEORDER
			if l < unix.SizeofRtAttr || l > len(b) {
				return
			}
			if !yield(typ, b[unix.SizeofRtAttr:l]) {
				return
			}
			l = (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
			if l > len(b) {
				return
			}
			b = b[l:]
		}
	}
}

// cString returns b up to its first NUL.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// mapIpsetErr turns kernel errors into the sentinels of ipsets.
func mapIpsetErr(err error) error {
	if err == nil {
		return nil
	}
	var ie nl.IPSetError
	if errors.As(err, &ie) {
		switch int(ie) {
		case ipsetErrHashFull:
			return fmt.Errorf("%w (maxelem reached)", dataplane.ErrFull)
		case nl.IPSET_ERR_REFERENCED, nl.IPSET_ERR_BUSY:
			return errSetInUse
		case nl.IPSET_ERR_EXIST:
			return errExists
		case nl.IPSET_ERR_EXIST_SETNAME2:
			return fmt.Errorf("%w: the other set", errNoSet)
		}
		return err
	}
	if errors.Is(err, syscall.ENOENT) {
		return errNoSet
	}
	if errors.Is(err, syscall.EBUSY) {
		return errSetInUse
	}
	return err
}

// recoverNetlink turns a panic of the netlink package (it asserts that
// every kernel error is a syscall.Errno) into an error.
func recoverNetlink(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("netlink: %v", r)
	}
}
