package kernel

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// fakeHost is a prober over a map of files and command outputs.
type fakeHost struct {
	files map[string]string
	dirs  map[string][]string
	cmds  map[string]string // "name args" → output; absent: not installed
}

func (f fakeHost) read(p string) (string, error) {
	if v, ok := f.files[p]; ok {
		return v, nil
	}
	return "", errors.New("no such file")
}

func (f fakeHost) list(d string) ([]string, error) { return f.dirs[d], nil }

func (f fakeHost) run(_ context.Context, name string, args ...string) (string, error) {
	out, ok := f.cmds[strings.TrimSpace(name+" "+strings.Join(args, " "))]
	if !ok {
		return "", errors.New("not found")
	}
	return out, nil
}

func goodHost() fakeHost {
	return fakeHost{
		files: map[string]string{
			"/proc/sys/net/ipv4/ip_forward":            "1",
			"/proc/sys/net/ipv6/conf/all/forwarding":   "0",
			"/sys/module/ip_set/parameters/max_sets":   "256",
			"/proc/net/ip_tables_targets":              "DNAT\nSNAT\nSET\nNFQUEUE\nCONNMARK\nMARK",
			"/proc/net/ip_tables_matches":              "conntrack\nconntrack\ncomment\nconnmark\nmark\naddrtype\naddrtype\nset\ntcp",
			"/proc/sys/net/netfilter/nf_conntrack_max": "262144",
			"/proc/net/netfilter/nfnetlink_queue":      "",
			"/proc/sys/net/ipv4/conf/all/rp_filter":    "0",
			"/proc/sys/net/ipv4/conf/eth0/rp_filter":   "0",
		},
		dirs: map[string][]string{"/proc/sys/net/ipv4/conf": {"all", "default", "eth0", "lo"}},
		cmds: map[string]string{"iptables -V": "iptables v1.8.9 (nf_tables)\n", "iptables-legacy-save": ""},
	}
}

// TestPreflightChecks: each check's verdict and fix from the host's state.
func TestPreflightChecks(t *testing.T) {
	opts := PreflightOptions{HoldSYNs: true, Transparent: true, PinCapacity: 1000}
	tests := []struct {
		desc   string
		change func(h fakeHost, o *PreflightOptions)
		check  string
		want   Severity
		fix    string // prefix of the fix
	}{
		{"all good", func(fakeHost, *PreflightOptions) {}, "ipv4 forwarding", SeverityOK, ""},
		{"forwarding off", func(h fakeHost, _ *PreflightOptions) { h.files["/proc/sys/net/ipv4/ip_forward"] = "0" }, "ipv4 forwarding", SeverityFatal, "sysctl -w net.ipv4.ip_forward=1"},
		{"IPv6 forwarding off, unused", func(fakeHost, *PreflightOptions) {}, "ipv6 forwarding", SeverityOK, ""},
		{"IPv6 forwarding off, used", func(_ fakeHost, o *PreflightOptions) { o.IPv6 = true }, "ipv6 forwarding", SeverityFatal, "sysctl -w net.ipv6.conf.all.forwarding=1"},
		{"xt_set missing", func(h fakeHost, _ *PreflightOptions) { h.files["/proc/net/ip_tables_targets"] = "DNAT\nNFQUEUE" }, "module xt_set", SeverityWarn, "modprobe xt_set"},
		{"xt_connmark missing", func(h fakeHost, o *PreflightOptions) {
			h.files["/proc/net/ip_tables_matches"] = "conntrack\ncomment\nmark\naddrtype\nset"
			o.HoldSYNs, o.Transparent = false, false // the reply jump needs it whatever the services
		}, "module xt_connmark", SeverityWarn, "modprobe xt_connmark"},
		{"xt_mark missing", func(h fakeHost, _ *PreflightOptions) {
			h.files["/proc/net/ip_tables_matches"] = "conntrack\ncomment\nconnmark\naddrtype\nset"
		}, "module xt_mark", SeverityWarn, "modprobe xt_mark"},
		{"xt_comment present", func(fakeHost, *PreflightOptions) {}, "module xt_comment", SeverityOK, ""},
		{"nfnetlink_queue missing", func(h fakeHost, _ *PreflightOptions) { delete(h.files, "/proc/net/netfilter/nfnetlink_queue") }, "module nfnetlink_queue", SeverityWarn, "modprobe nfnetlink_queue"},
		{"conntrack below capacity", func(_ fakeHost, o *PreflightOptions) { o.PinCapacity = 1 << 21 }, "conntrack table", SeverityWarn, "sysctl -w net.netfilter.nf_conntrack_max=2097152"},
		{"rp_filter strict with transparent dials", func(h fakeHost, _ *PreflightOptions) { h.files["/proc/sys/net/ipv4/conf/eth0/rp_filter"] = "1" }, "rp_filter", SeverityWarn, "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2"},
		{"rp_filter strict by all", func(h fakeHost, _ *PreflightOptions) { h.files["/proc/sys/net/ipv4/conf/all/rp_filter"] = "1" }, "rp_filter", SeverityWarn, "sysctl -w"},
		{"rp_filter strict without transparent dials", func(h fakeHost, o *PreflightOptions) {
			h.files["/proc/sys/net/ipv4/conf/eth0/rp_filter"] = "1"
			o.Transparent = false
		}, "rp_filter", SeverityOK, ""},
		{"legacy rules beside nf_tables", func(h fakeHost, _ *PreflightOptions) {
			h.cmds["iptables-legacy-save"] = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\n-A FORWARD -j DOCKER\nCOMMIT\n"
		}, "iptables legacy", SeverityWarn, "update-alternatives --set iptables /usr/sbin/iptables-legacy"},
		{"nf_tables rules beside legacy", func(h fakeHost, _ *PreflightOptions) {
			h.cmds["iptables -V"] = "iptables v1.8.9 (legacy)"
			h.cmds["iptables-nft-save"] = "-A INPUT -j DROP\n"
		}, "iptables nf_tables", SeverityWarn, "update-alternatives --set iptables /usr/sbin/iptables-nft"},
		{"no iptables", func(h fakeHost, _ *PreflightOptions) { delete(h.cmds, "iptables -V") }, "iptables flavour", SeverityFatal, "apt-get install iptables"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			h, o := goodHost(), opts
			tt.change(h, &o)
			var got *Finding
			fs := preflight(context.Background(), o, h)
			for i := range fs {
				if fs[i].Check == tt.check {
					got = &fs[i]
				}
			}
			if got == nil {
				t.Fatalf("no %q finding in %+v", tt.check, fs)
			}
			if got.Severity != tt.want || !strings.HasPrefix(got.Fix, tt.fix) || (tt.fix == "") != (got.Fix == "") {
				t.Errorf("%+v; want %s with fix %q", *got, tt.want, tt.fix)
			}
			if err := Fatal(fs); (err != nil) != (tt.want == SeverityFatal) {
				t.Errorf("Fatal = %v", err)
			}
		})
	}
}
