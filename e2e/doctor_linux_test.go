package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/kernel"
)

// TestPreflightForwardingOff: in a balancer namespace whose IPv4
// forwarding is off (sysctls are per namespace), --mode kernel refuses to
// start with the reason and its fix, and auto mode runs in userspace and
// serves.
func TestPreflightForwardingOff(t *testing.T) {
	off := []string{"sh", "-c", `sysctl -qw net.ipv4.ip_forward=0 && exec "$@"`, "sh"}
	checkFallback(t, ipv4, off, "with IPv4 forwarding off")
}

// TestDoctor: handoff doctor reports forwarding off as fatal, with the
// command that fixes it (exit 1), and passes once that command ran; an
// IPv6 service needs IPv6 forwarding as well.
func TestDoctor(t *testing.T) {
	l := newLab(t, 1, 1)
	cfg, _, _ := kernelConfig(ipv4, "reset")
	path := writeConfig(t, cfg)
	findings := func(cfgPath string) (map[string]kernel.Finding, result) {
		t.Helper()
		r := handoff(t, l.LB, "doctor", "--json", "-c", cfgPath)
		var fs []kernel.Finding
		if err := json.Unmarshal([]byte(r.stdout), &fs); err != nil {
			t.Fatalf("doctor --json: %v\n%s%s", err, r.stdout, r.stderr)
		}
		m := map[string]kernel.Finding{}
		for _, f := range fs {
			m[f.Check] = f
		}
		return m, r
	}

	l.LB.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=0")
	fs, r := findings(path)
	f := fs["ipv4 forwarding"]
	if r.code != 1 || f.Severity != kernel.SeverityFatal || !strings.HasPrefix(f.Fix, "sysctl -w net.ipv4.ip_forward=1") {
		t.Fatalf("forwarding off: exit %d, %+v\n%s", r.code, f, r.stderr)
	}
	for _, check := range []string{"module ip_set", "module xt_set", "module nf_conntrack", "module xt_connmark", "module xt_mark", "module xt_conntrack", "module xt_addrtype", "module xt_comment", "module nfnetlink_queue", "conntrack table", "rp_filter", "iptables flavour"} {
		if _, ok := fs[check]; !ok {
			t.Errorf("no %q finding", check)
		}
	}
	if text := handoff(t, l.LB, "doctor", "-c", path); !strings.Contains(text.stdout, "fix: sysctl -w net.ipv4.ip_forward=1") || text.code != 1 {
		t.Errorf("doctor's table: exit %d\n%s", text.code, text.stdout)
	}

	l.LB.Run(t, "sh", "-c", strings.Split(f.Fix, " && ")[0]) // the fix, in the namespace
	if fs, r := findings(path); r.code != 0 || fs["ipv4 forwarding"].Severity != kernel.SeverityOK {
		t.Errorf("after the fix: exit %d, %+v\n%s", r.code, fs["ipv4 forwarding"], r.stderr)
	}

	// An IPv6 service needs IPv6 forwarding.
	cfg6, _, _ := kernelConfig(ipv6, "reset")
	path6 := writeConfig(t, cfg6)
	l.LB.Run(t, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
	if fs, r := findings(path6); r.code != 1 || fs["ipv6 forwarding"].Severity != kernel.SeverityFatal {
		t.Errorf("IPv6 forwarding off with an IPv6 service: exit %d, %+v", r.code, fs["ipv6 forwarding"])
	}
	if fs, r := findings(path); r.code != 0 || fs["ipv6 forwarding"].Severity != kernel.SeverityOK {
		t.Errorf("IPv6 forwarding off without an IPv6 service: exit %d, %+v", r.code, fs["ipv6 forwarding"])
	}
}
