package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// TestIPTablesWrapper: the container's iptables wrapper picks, in the
// network namespace it runs in, the flavour that holds more rules
// (nf_tables when neither holds any), points the iptables links at it and
// runs the command it was called as; IPTABLES_MODE forces a flavour.
func TestIPTablesWrapper(t *testing.T) {
	nstest.RequireRoot(t)
	wrapper, err := filepath.Abs("iptables-wrapper")
	if err != nil {
		t.Fatal(err)
	}
	links := []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"}
	tests := []struct {
		desc  string
		setup []string // commands run in the namespace first
		env   string
		want  string // legacy | nft
	}{
		{"no rules anywhere", nil, "", "nft"},
		{"rules in legacy", []string{"iptables-legacy -A INPUT -s 198.18.0.9/32 -j ACCEPT", "iptables-legacy -t nat -A POSTROUTING -s 198.18.0.0/15 -j MASQUERADE"}, "", "legacy"},
		{"more rules in nf_tables", []string{"iptables-legacy -A INPUT -s 198.18.0.9/32 -j ACCEPT", "iptables-nft -A INPUT -s 198.18.0.9/32 -j ACCEPT", "iptables-nft -A FORWARD -s 198.18.0.9/32 -j ACCEPT"}, "", "nft"},
		{"forced", []string{"iptables-nft -A INPUT -s 198.18.0.9/32 -j ACCEPT"}, "IPTABLES_MODE=legacy", "legacy"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ns := nstest.New(t, "wrap")
			for _, c := range tt.setup {
				ns.Run(t, strings.Fields(c)...)
			}
			dir := t.TempDir()
			for _, l := range links {
				if err := os.Symlink(wrapper, filepath.Join(dir, l)); err != nil {
					t.Fatal(err)
				}
			}
			args := []string{"netns", "exec", ns.Name, "env"}
			if tt.env != "" {
				args = append(args, tt.env)
			}
			out, err := exec.Command("ip", append(args, filepath.Join(dir, "iptables-save"))...).CombinedOutput()
			if err != nil {
				t.Fatalf("iptables-save through the wrapper: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "iptables-wrapper: using iptables-"+tt.want) {
				t.Errorf("chose otherwise than %s:\n%s", tt.want, out)
			}
			for _, c := range tt.setup {
				if rule := strings.Join(strings.Fields(c)[1:], " "); strings.HasPrefix(c, "iptables-"+tt.want) && !strings.Contains(string(out), strings.TrimPrefix(rule, "-t nat ")) {
					t.Errorf("the %s rules are not in what it printed: %s\n%s", tt.want, rule, out)
				}
			}
			for _, l := range links {
				got, err := os.Readlink(filepath.Join(dir, l))
				base := strings.TrimSuffix(strings.TrimSuffix(l, "-save"), "-restore")
				want := "/usr/sbin/" + base + "-" + tt.want + strings.TrimPrefix(l, base)
				if err != nil || got != want {
					t.Errorf("%s -> %s (%v), want %s", l, got, err, want)
				}
			}
			// Later calls go straight to the chosen flavour.
			v, err := exec.Command("ip", "netns", "exec", ns.Name, filepath.Join(dir, "iptables"), "-V").CombinedOutput()
			flavour := map[string]string{"legacy": "(legacy)", "nft": "(nf_tables)"}[tt.want]
			if err != nil || !strings.Contains(string(v), flavour) || strings.Contains(string(v), "iptables-wrapper") {
				t.Errorf("iptables -V after the choice: %v %s", err, v)
			}
		})
	}
}
