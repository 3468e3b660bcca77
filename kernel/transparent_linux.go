package kernel

// Transparent dials: in kernel mode the proxy dials a first connection's
// backend from the client's own address and port (IP_TRANSPARENT), so the
// backend sees the client on every connection. The backend's replies are
// addressed to the client; to reach the proxy's socket instead of being
// forwarded they need policy routing, as HAProxy's "usesrc clientip" does:
//
//   mangle HANDOFF-DIAL   connections opened from a non-local source get
//                         the reserved mark in their connection mark
//   mangle HANDOFF-REPLY  their replies get it as their packet mark
//   ip rule               fwmark <reserved>/<mask> lookup <RouteTable>
//   route table           local default dev lo
//
// The chains are rendered with the others (render); the rule and the
// route, in both families, are synced here while a State asks for
// transparent dials, and removed otherwise. Table RouteTable is handoff's:
// any other route in it is removed, as is any other rule that looks it up.

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// routing is the data plane's view of the policy routing of transparent
// dials. Implementations are safe for concurrent use.
type routing interface {
	// rules lists the rules of fam that look up table.
	rules(fam family, table int) ([]netlink.Rule, error)
	// setRule adds (present) or deletes r.
	setRule(r netlink.Rule, present bool) error
	// routes lists the routes of fam in table.
	routes(fam family, table int) ([]netlink.Route, error)
	// setRoute replaces (present) or deletes r.
	setRoute(r netlink.Route, present bool) error
}

// nlRouting is routing over a NETLINK_ROUTE socket of the namespace.
type nlRouting struct {
	h  *netlink.Handle
	lo int // the loopback's index
}

func newNLRouting(ns netns.NsHandle) (*nlRouting, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink route socket: %w", err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("loopback: %w", err)
	}
	return &nlRouting{h: h, lo: lo.Attrs().Index}, nil
}

func (r *nlRouting) close() { r.h.Close() }

func nlFamily(fam family) int {
	if fam == ipv6 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

func (r *nlRouting) rules(fam family, table int) ([]netlink.Rule, error) {
	return r.h.RuleListFiltered(nlFamily(fam), &netlink.Rule{Table: table}, netlink.RT_FILTER_TABLE)
}

func (r *nlRouting) setRule(rule netlink.Rule, present bool) error {
	if present {
		return r.h.RuleAdd(&rule)
	}
	err := r.h.RuleDel(&rule)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

func (r *nlRouting) routes(fam family, table int) ([]netlink.Route, error) {
	return r.h.RouteListFiltered(nlFamily(fam), &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
}

func (r *nlRouting) setRoute(rt netlink.Route, present bool) error {
	if present {
		rt.LinkIndex = r.lo
		return r.h.RouteReplace(&rt)
	}
	err := r.h.RouteDel(&rt)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// transparentRule is the rule of fam that sends marked replies to the
// route table.
func (d *Dataplane) transparentRule(fam family) netlink.Rule {
	mask := d.layout.reserved()
	r := *netlink.NewRule()
	r.Family = nlFamily(fam)
	r.Table = d.o.routeTable()
	r.Priority = d.o.rulePriority()
	r.Mark = mask
	r.Mask = &mask
	return r
}

// transparentRoute is the route of fam that delivers everything locally.
func (d *Dataplane) transparentRoute(fam family) netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if fam == ipv6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return netlink.Route{
		Family: nlFamily(fam),
		Table:  d.o.routeTable(),
		Type:   unix.RTN_LOCAL,
		Scope:  unix.RT_SCOPE_HOST,
		Dst:    dst,
	}
}

// syncRouting makes the rule and route of transparent dials present (want)
// or absent in every family of fams, and returns what it changed.
func (d *Dataplane) syncRouting(fams []family, want bool) ([]string, error) {
	if d.routing == nil {
		if want {
			return nil, errors.New("kernel: transparent dials: no routing socket")
		}
		return nil, nil
	}
	var changes []string
	for _, fam := range fams {
		wantRule := d.transparentRule(fam)
		rules, err := d.routing.rules(fam, wantRule.Table)
		if err != nil {
			return changes, fmt.Errorf("kernel: %s rules of table %d: %w", fam, wantRule.Table, err)
		}
		found := false
		for _, r := range rules {
			if want && !found && sameRule(r, wantRule) {
				found = true
				continue
			}
			if err := d.routing.setRule(r, false); err != nil {
				return changes, fmt.Errorf("kernel: %s: deleting rule %s: %w", fam, r, err)
			}
			changes = append(changes, fmt.Sprintf("%s: removed rule %s", fam, r))
		}
		if want && !found {
			if err := d.routing.setRule(wantRule, true); err != nil {
				return changes, fmt.Errorf("kernel: %s: adding rule fwmark %#x lookup %d: %w", fam, wantRule.Mark, wantRule.Table, err)
			}
			changes = append(changes, fmt.Sprintf("%s: rule fwmark %#x/%#x lookup %d missing", fam, wantRule.Mark, *wantRule.Mask, wantRule.Table))
		}

		wantRoute := d.transparentRoute(fam)
		routes, err := d.routing.routes(fam, wantRoute.Table)
		if err != nil {
			return changes, fmt.Errorf("kernel: %s routes of table %d: %w", fam, wantRoute.Table, err)
		}
		found = false
		for _, r := range routes {
			if want && !found && sameRoute(r, wantRoute) {
				found = true
				continue
			}
			if err := d.routing.setRoute(r, false); err != nil {
				return changes, fmt.Errorf("kernel: %s: deleting route %s: %w", fam, r, err)
			}
			changes = append(changes, fmt.Sprintf("%s: removed route %s from table %d", fam, r, wantRoute.Table))
		}
		if want && !found {
			if err := d.routing.setRoute(wantRoute, true); err != nil {
				return changes, fmt.Errorf("kernel: %s: adding local route to table %d: %w", fam, wantRoute.Table, err)
			}
			changes = append(changes, fmt.Sprintf("%s: local route of table %d missing", fam, wantRoute.Table))
		}
	}
	return changes, nil
}

func sameRule(a, b netlink.Rule) bool {
	return a.Priority == b.Priority && a.Table == b.Table && a.Mark == b.Mark &&
		a.Mask != nil && b.Mask != nil && *a.Mask == *b.Mask &&
		a.Src == nil && a.Dst == nil && a.IifName == "" && a.OifName == "" && !a.Invert && a.Goto <= 0
}

func sameRoute(a, b netlink.Route) bool {
	return a.Type == b.Type && a.Table == b.Table && a.Dst != nil && b.Dst != nil &&
		a.Dst.IP.Equal(b.Dst.IP) && slices.Equal(a.Dst.Mask, b.Dst.Mask)
}
