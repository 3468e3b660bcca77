// Package kernel is handoff's Linux data plane: pinned clients live in
// ipsets (one hash:ip set per service and backend, managed over netlink),
// and iptables DNAT rules forward every later connection of a pinned client
// to its backend without leaving the kernel.
//
// The objects are those of DESIGN.md section 5: sets ho-<svc>-<be> (ho6-…
// for IPv6 services, hash:net sets hn6-… for those pinning networks), nat
// chains HANDOFF-PREROUTING, HANDOFF-OUTPUT, HANDOFF-POSTROUTING and
// HO-SVC-<svc>, the filter chain HANDOFF-FORWARD, and a canary chain
// HANDOFF-CANARY in both tables. Rule changes go through
// one iptables-restore --noflush per table and family, so they apply
// atomically, and only chains handoff owns are ever flushed.
//
// On platforms other than Linux, New, Probe and Cleanup return
// dataplane.ErrUnsupported.
package kernel

import (
	"time"

	"github.com/sirupsen/logrus"
)

// DefaultCanaryInterval is how often a Dataplane checks, by default, that
// its chains and rules are still in place.
const DefaultCanaryInterval = 10 * time.Second

// Options configures New, Probe, Cleanup and Counters.
type Options struct {
	// NetNS is the path of the network namespace to operate in (for
	// example /run/netns/lab). Empty means the caller's namespace.
	NetNS string
	// Logger receives the data plane's logs. Nil means logrus's standard
	// logger.
	Logger *logrus.Entry
	// IPv6 makes the data plane manage ip6tables even while no service is
	// IPv6. ip6tables is always managed once any synced service is IPv6, so
	// false is the right value unless the ip6tables chains should exist
	// ahead of the first IPv6 service. Probe checks ip6tables only when set.
	IPv6 bool
	// CanaryInterval is how often the Dataplane checks that its sets,
	// chains, rules and jumps are intact (the canary chain HANDOFF-CANARY
	// among them) and re-applies the last State when they are not, or when
	// the last Sync failed. Zero means DefaultCanaryInterval; negative
	// disables the check. Sync trusts its tables to hold what it wrote
	// last, so without the check rules changed outside handoff stay so.
	CanaryInterval time.Duration
	// MarkMask is the bits of the packet mark that carry a new
	// connection's backend from mangle to nat (see DefaultMarkMask);
	// one contiguous run of at least 4 bits, which bounds the backends of
	// one service to 2^bits-2. Zero means DefaultMarkMask.
	MarkMask uint32
	// Queue is the NFQUEUE number of the held SYNs of services that hold
	// them (dataplane.Service.HoldSYN). Zero means DefaultQueue.
	Queue uint16
	// RouteTable and RulePriority place the policy routing of
	// transparent dials (dataplane.State.Transparent): the route table
	// handoff owns, and the priority of the rule that looks it up. Zero
	// means DefaultRouteTable and DefaultRulePriority.
	RouteTable, RulePriority int
	// CleanupPrefixed makes Cleanup also remove the chains and sets that
	// only carry handoff's name prefixes, which its registry does not
	// list (an older handoff's, or whose registry was lost).
	CleanupPrefixed bool
}

// DefaultQueue is the NFQUEUE number handoff holds SYNs in by default.
const DefaultQueue = 18511

// The policy routing of transparent dials, by default: the route table
// handoff owns and the priority of its rule (before the main table's
// 32766).
const (
	DefaultRouteTable   = 18511
	DefaultRulePriority = 18511
)

func (o Options) routeTable() int {
	if o.RouteTable == 0 {
		return DefaultRouteTable
	}
	return o.RouteTable
}

func (o Options) rulePriority() int {
	if o.RulePriority == 0 {
		return DefaultRulePriority
	}
	return o.RulePriority
}

func (o Options) queue() uint16 {
	if o.Queue == 0 {
		return DefaultQueue
	}
	return o.Queue
}

// DefaultMarkMask is the mark field handoff uses unless told otherwise:
// 12 bits (4,094 backends per service), above the bits kube-proxy (0xc000)
// and Tailscale (0xff0000) use.
const DefaultMarkMask = 0xfff00000

// Counter is what the kernel forwarded to a backend.
type Counter struct {
	// Packets is what its DNAT rule matched: the first packet of each
	// kernel-forwarded connection (nat sees no other), so the connections.
	Packets uint64
	// Bytes is the traffic of its kernel-forwarded connections, both
	// ways: the bytes of its address's entry in the service's counting
	// set, which the service's rules in filter, seeing every forwarded
	// packet, count each packet against. Connections to the VIP from the
	// host itself are not forwarded, and not counted.
	Bytes uint64
}
