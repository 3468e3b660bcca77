package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netns"
)

// Probe reports whether the kernel data plane can run with o: nil when it
// can, else an error whose message is one line giving the reason, such as
// "kernel mode unavailable: creating ipset ho-_probe-42: operation not
// permitted (need CAP_NET_ADMIN)".
//
// It creates and removes three scratch ipsets (ho-_probe-<pid>, a pin set,
// ho-_probe-<pid>i, an index, and ho-_probe-<pid>c, a counting set), a
// scratch mangle chain (HANDOFF-PROBE)
// that maps the index's mark, and a scratch nat chain (HANDOFF-PROBE)
// whose rules match the mark and use the pin set, SET and DNAT targets,
// for IPv4 and, when o.IPv6 is set, IPv6: the chains are written with
// iptables-restore, as Sync writes, and the DNAT rule is checked with the
// iptables command through go-iptables (iptables -C), which so checks
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

		index := set + "i"
		if err := s.create(index, setSpec{family: fam, maxelem: 16, index: true}); err != nil {
			return fmt.Errorf("creating ipset %s (hash:ip skbinfo): %w%s", index, err, capHint(err))
		}
		undo = append(undo, func() error {
			if err := s.destroy(index); err != nil {
				return fmt.Errorf("removing ipset %s: %w", index, err)
			}
			return nil
		})

		count := set + "c"
		if err := s.create(count, setSpec{family: fam, counters: true}); err != nil {
			return fmt.Errorf("creating ipset %s (hash:ip,port counters): %w%s", count, err, capHint(err))
		}
		undo = append(undo, func() error {
			if err := s.destroy(count); err != nil {
				return fmt.Errorf("removing ipset %s: %w", count, err)
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
		in := "-A " + chainProbe + " -p tcp -m mark --mark 0x100000/0xfff00000 -m set --match-set " + set + " src " + comment(commentPrefix+" probe")
		dnat := in + " -j DNAT --to-destination " + to
		// One run of iptables-restore for both tables: each run costs
		// milliseconds, and a restart spends most of its time in them.
		create := "*mangle\n:" + chainProbe + " - [0:0]\n-A " + chainProbe + " -p tcp " + comment(commentPrefix+" probe") +
			" -j SET --map-set " + index + " src --map-mark\nCOMMIT\n" +
			"*nat\n:" + chainProbe + " - [0:0]\n" +
			in + " -j SET --add-set " + set + " src --exist --timeout 1\n" + dnat + "\nCOMMIT\n"
		undo = append(undo, func() error {
			// Declaring a chain creates it when missing (a failed
			// run may have committed the mangle table only).
			remove := "*mangle\n:" + chainProbe + " - [0:0]\n-X " + chainProbe + "\nCOMMIT\n" +
				"*nat\n:" + chainProbe + " - [0:0]\n-X " + chainProbe + "\nCOMMIT\n"
			if err := ipt.restore(context.WithoutCancel(ctx), []byte(remove)); err != nil {
				return fmt.Errorf("removing chains %s with %w", chainProbe, err)
			}
			return nil
		})
		if err := ipt.restore(ctx, []byte(create)); err != nil {
			return fmt.Errorf("creating chains %s with %w%s", chainProbe, err, capHint(err))
		}
		// What iptables-restore wrote, iptables must see: were they to use
		// different backends (nf_tables, legacy), `iptables -t nat -S`
		// would not show handoff's rules.
		var ok bool
		err = gt.do(func(t *goipt.IPTables) (err error) {
			ok, err = t.Exists(string(natTable), chainProbe, splitArgs(dnat)[2:]...)
			return err
		})
		if err != nil {
			return fmt.Errorf("checking nat chain %s with %s: %s%s", chainProbe, gt.bin(), oneLine([]byte(err.Error())), capHint(err))
		}
		if !ok {
			return fmt.Errorf("%s does not see the rules %s wrote to nat chain %s (do they use different backends, nf_tables and legacy?)", gt.bin(), ipt.bin("restore"), chainProbe)
		}
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
