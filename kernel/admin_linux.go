package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
)

// Probe reports whether the kernel data plane can run with o: nil when it
// can, else an error whose message is one line giving the reason, such as
// "kernel mode unavailable: creating ipset ho-_probe-42: operation not
// permitted (need CAP_NET_ADMIN)".
//
// It creates and removes a scratch ipset (ho-_probe-<pid>) and a scratch
// nat chain (HANDOFF-PROBE) whose rules use the set, SET and DNAT targets,
// for IPv4 and, when o.IPv6 is set, IPv6: the chain is written with
// iptables-restore, as Sync writes, then checked (iptables -C) and
// removed with the iptables command through go-iptables, which so checks
// that iptables runs and sees what iptables-restore wrote. Its scratch
// objects are always removed.
func Probe(ctx context.Context, o Options) error {
	if err := probe(ctx, o); err != nil {
		return fmt.Errorf("kernel mode unavailable: %s", oneLine([]byte(err.Error())))
	}
	return nil
}

func probe(ctx context.Context, o Options) (err error) {
	ns, err := openNS(o.NetNS)
	if err != nil {
		return err
	}
	defer closeNS(ns)
	fams := []family{ipv4}
	if o.IPv6 {
		fams = append(fams, ipv6)
	}
	for _, fam := range fams {
		ipt := execTables{fam, ns}
		for _, tool := range []string{"restore", "save"} {
			if _, err := exec.LookPath(ipt.bin(tool)); err != nil {
				return fmt.Errorf("%s not found in $PATH", ipt.bin(tool))
			}
		}
	}
	s, err := newNLSets(ns)
	if err != nil {
		return err
	}
	defer s.close()

	// Undo in reverse order, whatever happens, and report what fails.
	var undo []func() error
	defer func() {
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil && err == nil {
				err = uerr
			}
		}
	}()
	for _, fam := range fams {
		set := probeSetName(fam, os.Getpid())
		if err := s.create(set, setSpec{family: fam, timeout: 1, maxelem: 16}); err != nil {
			return fmt.Errorf("creating ipset %s: %w%s", set, err, capHint(err))
		}
		undo = append(undo, func() error {
			if err := s.destroy(set); err != nil {
				return fmt.Errorf("removing ipset %s: %w", set, err)
			}
			return nil
		})

		ipt := execTables{fam, ns}
		gt, err := newGoTables(ns, fam)
		if err != nil {
			return err
		}
		to := "127.0.0.1:9"
		if fam == ipv6 {
			to = "[::1]:9"
		}
		in := "-A " + chainProbe + " -p tcp -m set --match-set " + set + " src " + comment(commentPrefix+" probe")
		rules := []string{
			in + " -j SET --add-set " + set + " src --exist --timeout 1",
			in + " -j DNAT --to-destination " + to,
		}
		create := "*nat\n:" + chainProbe + " - [0:0]\n" + strings.Join(rules, "\n") + "\nCOMMIT\n"
		if err := ipt.restore(ctx, []byte(create)); err != nil {
			return fmt.Errorf("creating nat chain %s with %w%s", chainProbe, err, capHint(err))
		}
		visible := false // whether iptables sees what iptables-restore wrote
		undo = append(undo, func() error {
			if !visible {
				// Remove the chain the way it came, in case iptables
				// looks elsewhere.
				remove := "*nat\n:" + chainProbe + " - [0:0]\n-X " + chainProbe + "\nCOMMIT\n"
				if err := ipt.restore(context.WithoutCancel(ctx), []byte(remove)); err != nil {
					return fmt.Errorf("removing nat chain %s with %w", chainProbe, err)
				}
			}
			if err := gt.do(func(t *goipt.IPTables) error { return t.ClearAndDeleteChain(string(natTable), chainProbe) }); err != nil {
				return fmt.Errorf("removing nat chain %s with %s: %s", chainProbe, gt.bin(), oneLine([]byte(err.Error())))
			}
			return nil
		})
		// What iptables-restore wrote, iptables must see: were they to use
		// different backends (nf_tables, legacy), `iptables -t nat -S`
		// would not show handoff's rules.
		for _, r := range rules {
			var ok bool
			err := gt.do(func(t *goipt.IPTables) (err error) {
				ok, err = t.Exists(string(natTable), chainProbe, splitArgs(r)[2:]...)
				return err
			})
			if err != nil {
				return fmt.Errorf("checking nat chain %s with %s: %s%s", chainProbe, gt.bin(), oneLine([]byte(err.Error())), capHint(err))
			}
			if !ok {
				return fmt.Errorf("%s does not see the rules %s wrote to nat chain %s (do they use different backends, nf_tables and legacy?)", gt.bin(), ipt.bin("restore"), chainProbe)
			}
		}
		visible = true
	}
	return nil
}

// goTables is go-iptables run in a network namespace: every command is
// started from a thread switched into ns, so the iptables child runs
// there.
type goTables struct {
	ipt *goipt.IPTables
	ns  netns.NsHandle // not open: the caller's namespace
}

// newGoTables finds the iptables (ip6tables) binary of fam and checks that
// it runs, by asking its version.
func newGoTables(ns netns.NsHandle, fam family) (goTables, error) {
	proto := goipt.ProtocolIPv4
	if fam == ipv6 {
		proto = goipt.ProtocolIPv6
	}
	g := goTables{ns: ns}
	bin := "iptables"
	if fam == ipv6 {
		bin = "ip6tables"
	}
	err := inNetNS(ns, func() (err error) {
		// Timeout: wait at most 5s for the xtables lock (iptables -w 5).
		g.ipt, err = goipt.New(goipt.IPFamily(proto), goipt.Timeout(5))
		return err
	})
	if err != nil {
		return g, fmt.Errorf("%s does not work: %w", bin, err)
	}
	return g, nil
}

// bin names the binary, for messages.
func (g goTables) bin() string {
	if g.ipt.Proto() == goipt.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// do runs fn, whose iptables commands then run in g's namespace.
func (g goTables) do(fn func(*goipt.IPTables) error) error {
	return inNetNS(g.ns, func() error { return fn(g.ipt) })
}

// capHint names the missing capability behind a permission error.
func capHint(err error) string {
	if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) ||
		strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "not permitted") {
		return " (need CAP_NET_ADMIN)"
	}
	return ""
}

func openNS(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.None(), nil
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("opening netns %s: %w", path, err)
	}
	return ns, nil
}

// Cleanup removes every kernel object handoff owns in o.NetNS: first the
// rules of other chains that jump into handoff's chains (the built-in
// jumps), then the chains HANDOFF-* and HO-SVC-* of the mangle, nat and
// filter tables, IPv4 and IPv6, then the ipsets ho-*, ho6-*, hoi-* and
// hoi6-*. Foreign rules,
// chains and sets are left alone. Cleanup is idempotent; run it while no
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
	return errors.Join(append(errs, cleanup(ctx, ipts, sets, o.logger()))...)
}

// cleanup removes handoff's rules and chains from each non-nil iptables,
// then its sets (unless sets is nil).
func cleanup(ctx context.Context, ipts [2]iptables, sets ipsets, log *logrus.Entry) error {
	var errs []error
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
			var gone []string
			for name := range cur.chains {
				if owned(name) {
					gone = append(gone, name)
				}
			}
			if len(gone) == 0 {
				continue
			}
			slices.Sort(gone)
			p := &restorePlan{table: t, flush: gone, unlink: unlinkLines(cur, gone), remove: gone}
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
	for _, name := range names {
		if !isHandoffSet(name) {
			continue
		}
		if err := sets.destroy(name); err != nil {
			errs = append(errs, fmt.Errorf("kernel: cleanup: ipset %q: destroy: %w", name, err))
			continue
		}
		log.WithField("set", name).Info("removed handoff ipset")
	}
	return errors.Join(errs...)
}

// Counters returns the packet and byte counters of every backend's DNAT
// rule in o.NetNS, keyed by {service, backend}, read with iptables-save -c
// (IPv4, and IPv6 where ip6tables is installed).
func Counters(ctx context.Context, o Options) (map[[2]string]Counter, error) {
	ns, err := openNS(o.NetNS)
	if err != nil {
		return nil, fmt.Errorf("kernel: counters: %w", err)
	}
	defer closeNS(ns)
	return counters(ctx, ns, []family{ipv4, ipv6})
}

func (o Options) logger() *logrus.Entry {
	if o.Logger != nil {
		return o.Logger.WithField("component", "kernel")
	}
	return logrus.WithField("component", "kernel")
}

// Counters is the package's Counters for the Dataplane's namespace and
// managed families. The counters may be up to a second old (countersMaxAge):
// callers within a second of each other share one iptables-save; a Sync
// makes the next call read them again.
func (d *Dataplane) Counters(ctx context.Context) (map[[2]string]Counter, error) {
	return d.counts.get(ctx, d.readCounters)
}

func (d *Dataplane) readCounters(ctx context.Context) (map[[2]string]Counter, error) {
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
	out := map[[2]string]Counter{}
	for _, fam := range fams {
		b, err := d.ipt[fam].save(ctx, natTable, true)
		if err != nil {
			return nil, fmt.Errorf("kernel: counters: %w", err)
		}
		parseCounters(b, out)
	}
	return out, nil
}

func counters(ctx context.Context, ns netns.NsHandle, fams []family) (map[[2]string]Counter, error) {
	out := map[[2]string]Counter{}
	for _, fam := range fams {
		ipt := execTables{fam, ns}
		if _, err := exec.LookPath(ipt.bin("save")); err != nil && fam == ipv6 {
			continue
		}
		b, err := ipt.save(ctx, natTable, true)
		if err != nil {
			return nil, fmt.Errorf("kernel: counters: %w", err)
		}
		parseCounters(b, out)
	}
	return out, nil
}
