package kernel

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"
)

// Cleanup removes every kernel object handoff owns in o.NetNS: first the
// rules of other chains that jump into handoff's chains (the built-in
// jumps), then the chains HANDOFF-* and HO-SVC-* of the mangle, nat and
// filter tables, IPv4 and IPv6, then the ipsets ho-*, ho6-*, hoi-*,
// hoi6-*, hn6-* and hni6-*, and last the policy routing of transparent dials (the rules
// that look up Options.RouteTable, and its routes). Foreign rules, chains
// and sets are left alone. Cleanup is idempotent; run it while no
// handoff daemon runs in the namespace (its canary would restore them).
func Cleanup(ctx context.Context, o Options) error {
	ns, err := openNS(o.NetNS)
	if err != nil {
		return fmt.Errorf("kernel: cleanup: %w", err)
	}
	defer closeNS(ns)
	var errs []error
	var ipts [2]iptables
	for _, fam := range []family{ipv4, ipv6} {
		ipt := execTables{fam, ns}
		if _, err := exec.LookPath(ipt.bin("restore")); err != nil {
			if fam == ipv4 {
				errs = append(errs, fmt.Errorf("kernel: cleanup: %w", err))
			}
			continue // no ip6tables, no IPv6 rules
		}
		ipts[fam] = ipt
	}
	var sets ipsets
	s, err := newNLSets(ns)
	if err != nil {
		errs = append(errs, fmt.Errorf("kernel: cleanup: %w", err))
	} else {
		defer s.close()
		sets = s
	}
	errs = append(errs, cleanup(ctx, ipts, sets, o.CleanupPrefixed, o.logger()))
	if r, err := newNLRouting(ns); err != nil {
		errs = append(errs, fmt.Errorf("kernel: cleanup: %w", err))
	} else {
		defer r.close()
		errs = append(errs, cleanupRouting(o, r))
	}
	return errors.Join(errs...)
}

// cleanupRouting removes the rules and routes of transparent dials.
func cleanupRouting(o Options, r routing) error {
	layout, err := o.markLayout()
	if err != nil {
		return fmt.Errorf("kernel: cleanup: %w", err)
	}
	d := &Dataplane{o: o, log: o.logger(), layout: layout, routing: r}
	changes, err := d.syncRouting([]family{ipv4, ipv6}, false)
	for _, c := range changes {
		d.log.WithField("change", c).Info("removed handoff routing")
	}
	if err != nil {
		return fmt.Errorf("kernel: cleanup: %w", err)
	}
	return nil
}

// cleanup removes handoff's rules and chains from each non-nil iptables,
// then its sets (unless sets is nil): the fixed chains and those the
// registry lists, and the sets it lists, and with all also the chains
// and sets that merely carry handoff's prefixes (an older handoff's, or
// whose registry was lost). Others are reported and left alone.
func cleanup(ctx context.Context, ipts [2]iptables, sets ipsets, all bool, log *logrus.Entry) error {
	var errs []error
	ownedSets := map[string]bool{}
	for fam, ipt := range ipts {
		if ipt == nil {
			continue
		}
		for _, t := range tables {
			out, err := ipt.save(ctx, t, false)
			if err != nil {
				errs = append(errs, fmt.Errorf("kernel: cleanup: %w", err))
				continue
			}
			cur := parseSave(out)
			if family(fam) == ipv4 && t == natTable {
				ownedSets = cur.registered(ownsSet)
			}
			own := cur.owner()
			var gone, left []string
			for name := range cur.chains {
				switch {
				case own.owns(name) || (all && prefixed(name)):
					gone = append(gone, name)
				case prefixed(name):
					left = append(left, name)
				}
			}
			if len(left) > 0 {
				slices.Sort(left)
				log.WithFields(logrus.Fields{"family": family(fam).String(), "table": string(t), "chains": strings.Join(left, ",")}).
					Warn("chains named like handoff's are not in its registry: left alone (--prefixed removes them)")
			}
			if len(gone) == 0 {
				continue
			}
			slices.Sort(gone)
			p := &restorePlan{table: t, flush: gone, unlink: unlinkLines(cur, owner{registered: setOf(gone)}, gone), remove: gone}
			if err := ipt.restore(ctx, p.text()); err != nil {
				errs = append(errs, fmt.Errorf("kernel: cleanup: %s %s table: %w", family(fam), t, err))
				continue
			}
			log.WithFields(logrus.Fields{"family": family(fam).String(), "table": string(t), "chains": strings.Join(gone, ",")}).Info("removed handoff chains")
		}
	}
	if sets == nil {
		return errors.Join(errs...)
	}
	names, err := sets.names()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("kernel: cleanup: listing ipsets: %w", err))...)
	}
	var left []string
	for _, name := range names {
		if !isHandoffSet(name) {
			continue
		}
		if !ownedSets[name] && !isTempSet(name) && !isProbeSet(name) && !all {
			left = append(left, name)
			continue
		}
		if err := sets.destroy(name); err != nil {
			errs = append(errs, fmt.Errorf("kernel: cleanup: ipset %q: destroy: %w", name, err))
			continue
		}
		log.WithField("set", name).Info("removed handoff ipset")
	}
	if len(left) > 0 {
		log.WithField("sets", strings.Join(left, ",")).Warn("ipsets named like handoff's are not in its registry: left alone (--prefixed removes them)")
	}
	return errors.Join(errs...)
}

func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}
