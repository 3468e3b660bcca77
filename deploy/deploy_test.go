package deploy

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// need returns the path of a tool the test needs, or skips (fails under CI).
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		testenv.Skipf(t, "%s not installed (Debian package %s; scripts/test.sh installs it)", tool, pkg)
	}
	return p
}

// TestAlertRules: promtool accepts the rules and their unit tests pass.
func TestAlertRules(t *testing.T) {
	promtool := need(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "monitoring/handoff.rules.yaml"},
		{"test", "rules", "monitoring/handoff.rules.test.yaml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestUnitSecurity: systemd-analyze rates the unit's exposure at 2.5 or
// less, and the unit's comment states the rating it gets.
func TestUnitSecurity(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	out, err := exec.Command(analyze, "security", "--offline=true", "--no-pager", "handoff.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for handoff.service: (\d+\.\d)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	if score > 2.5 {
		t.Errorf("exposure %.1f, want at most 2.5:\n%s", score, out)
	}
	unit, err := os.ReadFile("handoff.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "rates this unit "+string(m[1])+",") {
		t.Errorf("the unit's comment does not say it rates %s", m[1])
	}
}

// TestUnitReload: the unit is Type=notify with a watchdog, and its reload
// validates the config before it signals the daemon, with the config the
// daemon runs.
func TestUnitReload(t *testing.T) {
	b, err := os.ReadFile("handoff.service")
	if err != nil {
		t.Fatal(err)
	}
	var reload []string
	keys := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || strings.HasPrefix(l, "#") {
			continue
		}
		if k == "ExecReload" {
			reload = append(reload, v)
		}
		keys[k] = v
	}
	if keys["Type"] != "notify" || keys["WatchdogSec"] == "" || keys["NotifyAccess"] != "main" {
		t.Errorf("Type=%s WatchdogSec=%s NotifyAccess=%s", keys["Type"], keys["WatchdogSec"], keys["NotifyAccess"])
	}
	cfg := strings.Fields(keys["ExecStart"])
	if len(reload) != 2 || !strings.HasSuffix(reload[0], "handoff validate -q -c "+cfg[len(cfg)-1]) || reload[1] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload %q: want validate of %s, then kill -HUP", reload, cfg[len(cfg)-1])
	}
}
