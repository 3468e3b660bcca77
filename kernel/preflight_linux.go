package kernel

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Preflight checks what the kernel data plane needs of the host and
// returns one Finding per check, in a fixed order: IPv4 (and IPv6)
// forwarding, the netfilter features it uses (ip_set, xt_set,
// nf_conntrack, nf_nat, and as used nfnetlink_queue/xt_NFQUEUE and
// xt_connmark/xt_mark), the conntrack table's size against the pin
// capacity, rp_filter, and the iptables flavour with rules of the other
// flavour. Forwarding off is fatal; the rest warn. It changes nothing.
//
// Sysctls are read inside o.NetNS (they are per namespace); a feature
// counts as present when the kernel has registered it (built in or loaded),
// as /proc/net/ip_tables_{matches,targets} and /proc/net/netfilter list.
func Preflight(ctx context.Context, o PreflightOptions) []Finding {
	ns, err := openNS(o.NetNS)
	if err != nil {
		return []Finding{{Check: "namespace", Severity: SeverityFatal, Message: err.Error()}}
	}
	defer closeNS(ns)
	var fs []Finding
	_ = inNetNS(ns, func() error {
		fs = preflight(ctx, o, hostFS{})
		return nil
	})
	return fs
}

// hostFS reads the kernel's files and runs the iptables tools; tests of
// the checks' logic replace it.
type prober interface {
	read(path string) (string, error)
	list(dir string) ([]string, error)
	run(ctx context.Context, name string, args ...string) (string, error)
}

type hostFS struct{}

func (hostFS) read(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

func (hostFS) list(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, err
}

func (hostFS) run(ctx context.Context, name string, args ...string) (string, error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func preflight(ctx context.Context, o PreflightOptions, p prober) []Finding {
	var fs []Finding
	fs = append(fs, forwarding(p, "ipv4 forwarding", "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward", true))
	fs = append(fs, forwarding(p, "ipv6 forwarding", "/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding", o.IPv6))
	fs = append(fs, features(p, o)...)
	fs = append(fs, conntrackSize(p, o))
	fs = append(fs, rpFilter(p, o))
	fs = append(fs, flavour(ctx, p)...)
	return fs
}

// persist is how a sysctl fix is kept across reboots.
func persist(key, value string) string {
	return fmt.Sprintf("sysctl -w %s=%s && echo '%s = %s' > /etc/sysctl.d/90-handoff-%s.conf", key, value, key, value, strings.ReplaceAll(key, ".", "-"))
}

// forwarding checks a forwarding sysctl, fatal when off and required.
func forwarding(p prober, check, path, key string, required bool) Finding {
	v, err := p.read(path)
	switch {
	case err != nil && !required:
		return Finding{Check: check, Severity: SeverityOK, Message: "not needed (no service of this family)"}
	case err != nil:
		return Finding{Check: check, Severity: SeverityFatal, Message: fmt.Sprintf("%s: %v", key, err)}
	case v == "1":
		return Finding{Check: check, Severity: SeverityOK, Message: key + " = 1"}
	case !required:
		return Finding{Check: check, Severity: SeverityOK, Message: key + " = " + v + ": not needed (no service of this family)"}
	}
	return Finding{Check: check, Severity: SeverityFatal,
		Message: key + " = " + v + ": the kernel would drop every DNATed connection (the client is pinned, its connections never reach the backend)",
		Fix:     persist(key, "1")}
}

// feature is a kernel feature the data plane uses, and how to see that
// the kernel has it.
type feature struct {
	module string // what modprobe loads
	why    string
	file   string // a registry file that lists it (one name a line) or exists
	name   string // the name listed there; "" when the file's existence says it
}

func features(p prober, o PreflightOptions) []Finding {
	fts := []feature{
		{"ip_set", "the pin sets", "/sys/module/ip_set/parameters/max_sets", ""},
		{"xt_set", "the set match and SET target of the rules", "/proc/net/ip_tables_targets", "SET"},
		{"nf_conntrack", "connection tracking", "/proc/sys/net/netfilter/nf_conntrack_max", ""},
		{"nf_nat", "the DNAT target", "/proc/net/ip_tables_targets", "DNAT"},
		{"xt_conntrack", "the new-connection match of the jumps", "/proc/net/ip_tables_matches", "conntrack"},
		// Each xt_ module registers its match and its target together.
		{"xt_connmark", "the connection-mark match of the reply jump, the CONNMARK target of transparent dials", "/proc/net/ip_tables_matches", "connmark"},
		{"xt_mark", "the mark match of the dispatch tree, the MARK target", "/proc/net/ip_tables_matches", "mark"},
		{"xt_addrtype", "the local-address match of the jumps", "/proc/net/ip_tables_matches", "addrtype"},
		{"xt_comment", "the comments that name each rule", "/proc/net/ip_tables_matches", "comment"},
	}
	if o.HoldSYNs {
		fts = append(fts,
			feature{"nfnetlink_queue", "holding new clients' SYNs (classify: source)", "/proc/net/netfilter/nfnetlink_queue", ""},
			feature{"xt_NFQUEUE", "the NFQUEUE target (classify: source)", "/proc/net/ip_tables_targets", "NFQUEUE"})
	}
	var out []Finding
	for _, f := range fts {
		check := "module " + f.module
		got, err := p.read(f.file)
		if err == nil && f.name != "" {
			err = fmt.Errorf("not registered")
			if slices.Contains(strings.Fields(got), f.name) {
				err = nil
			}
		}
		if err == nil {
			out = append(out, Finding{Check: check, Severity: SeverityOK, Message: "present (" + f.why + ")"})
			continue
		}
		out = append(out, Finding{Check: check, Severity: SeverityWarn,
			Message: "not loaded (" + f.why + "); the kernel loads it on first use where it may, a container cannot",
			Fix:     "modprobe " + f.module + " && echo " + f.module + " >> /etc/modules-load.d/handoff.conf"})
	}
	return out
}

// conntrackSize compares nf_conntrack_max with the pin capacity.
func conntrackSize(p prober, o PreflightOptions) Finding {
	const check = "conntrack table"
	v, err := p.read("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		return Finding{Check: check, Severity: SeverityWarn, Message: "nf_conntrack_max unreadable: " + err.Error(), Fix: "modprobe nf_conntrack"}
	}
	max, err := strconv.Atoi(v)
	if err != nil {
		return Finding{Check: check, Severity: SeverityWarn, Message: "nf_conntrack_max = " + v}
	}
	if o.PinCapacity <= max {
		return Finding{Check: check, Severity: SeverityOK, Message: fmt.Sprintf("nf_conntrack_max = %d, at least the pin capacity %d", max, o.PinCapacity)}
	}
	return Finding{Check: check, Severity: SeverityWarn,
		Message: fmt.Sprintf("nf_conntrack_max = %d is below the pin capacity %d (max_clients times backends): with that many clients connecting, new flows are dropped when the table is full (\"nf_conntrack: table full\" in dmesg); raise it or lower max_clients", max, o.PinCapacity),
		Fix:     persist("net.netfilter.nf_conntrack_max", strconv.Itoa(o.PinCapacity))}
}

// rpFilter reports interfaces whose reverse-path filter is strict.
func rpFilter(p prober, o PreflightOptions) Finding {
	const check = "rp_filter"
	all, _ := p.read("/proc/sys/net/ipv4/conf/all/rp_filter")
	ifs, err := p.list("/proc/sys/net/ipv4/conf")
	if err != nil {
		return Finding{Check: check, Severity: SeverityWarn, Message: err.Error()}
	}
	var strict []string
	for _, i := range ifs {
		if i == "all" || i == "default" || i == "lo" {
			continue
		}
		v, _ := p.read(filepath.Join("/proc/sys/net/ipv4/conf", i, "rp_filter"))
		if max(v, all) == "1" { // the effective value is the larger one
			strict = append(strict, i)
		}
	}
	if len(strict) == 0 {
		return Finding{Check: check, Severity: SeverityOK, Message: "no interface filters strictly (rp_filter 0 or 2)"}
	}
	slices.Sort(strict)
	msg := "strict (1) on " + strings.Join(strict, ", ") + ": a DNATed reply that comes back through another interface than the route to its backend is dropped"
	if !o.Transparent {
		return Finding{Check: check, Severity: SeverityOK, Message: msg + "; fine while each backend's replies come the way its route goes"}
	}
	keys := []string{"net.ipv4.conf.all.rp_filter=2"}
	for _, i := range strict {
		keys = append(keys, "net.ipv4.conf."+i+".rp_filter=2")
	}
	return Finding{Check: check, Severity: SeverityWarn,
		Message: msg + ", and so are the replies of transparent dials (first connections from the client's address) where routing is asymmetric; loose mode (2) keeps the check",
		Fix:     "sysctl -w " + strings.Join(keys, " ")}
}

// flavour reports the iptables flavour in use (nf_tables or legacy) and
// rules of the other flavour, which packets also pass through.
func flavour(ctx context.Context, p prober) []Finding {
	const check = "iptables flavour"
	v, err := p.run(ctx, "iptables", "-V")
	if err != nil {
		return []Finding{{Check: check, Severity: SeverityFatal, Message: "iptables does not run: " + strings.TrimSpace(v+" "+err.Error()), Fix: "apt-get install iptables"}}
	}
	use, other := "nf_tables", "legacy"
	if strings.Contains(v, "(legacy)") {
		use, other = "legacy", "nf_tables"
	}
	out := []Finding{{Check: check, Severity: SeverityOK, Message: "iptables is " + strings.TrimSpace(v) + ": handoff's rules go to " + use}}
	tool := map[string]string{"legacy": "iptables-legacy-save", "nf_tables": "iptables-nft-save"}[other]
	save, err := p.run(ctx, tool)
	if err != nil {
		out = append(out, Finding{Check: "iptables " + other, Severity: SeverityOK, Message: tool + " not installed or not usable: no " + other + " rules to clash with"})
		return out
	}
	n := bytes.Count([]byte(save), []byte("\n-A "))
	if strings.HasPrefix(save, "-A ") {
		n++
	}
	if n == 0 {
		out = append(out, Finding{Check: "iptables " + other, Severity: SeverityOK, Message: "no rules in " + other})
		return out
	}
	fix := "update-alternatives --set iptables /usr/sbin/iptables-" + map[string]string{"legacy": "legacy", "nf_tables": "nft"}[other] +
		" && update-alternatives --set ip6tables /usr/sbin/ip6tables-" + map[string]string{"legacy": "legacy", "nf_tables": "nft"}[other]
	out = append(out, Finding{Check: "iptables " + other, Severity: SeverityWarn,
		Message: fmt.Sprintf("%d rules in %s beside handoff's %s ones: packets pass both, and the host's firewall (Docker's, kube-proxy's) may live there; run handoff with the flavour the host uses", n, other, use),
		Fix:     fix})
	return out
}
