package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPackages: scripts/release.sh builds a linux/amd64 binary with its
// checksums and the .deb and .rpm; the .deb installs with dpkg (into a
// scratch root, so the host keeps its own /etc and /usr) the binary, the
// unit, a default config that the packaged `handoff validate` accepts, and
// the docs; its maintainer scripts never start the service; purging it
// removes it all.
func TestPackages(t *testing.T) {
	dpkg := need(t, "dpkg", "dpkg")
	need(t, "go", "golang")
	dist := t.TempDir()
	rel := exec.Command("../scripts/release.sh", "v0.0.0-test")
	rel.Env = append(os.Environ(), "TARGETS=linux/amd64", "DIST="+dist)
	if out, err := rel.CombinedOutput(); err != nil {
		t.Fatalf("release.sh: %v\n%s", err, out)
	}
	deb := filepath.Join(dist, "handoff_0.0.0-test_amd64.deb")
	rpm := filepath.Join(dist, "handoff_0.0.0-test_amd64.rpm")
	for _, f := range []string{deb, rpm, filepath.Join(dist, "handoff_v0.0.0-test_linux_amd64"), filepath.Join(dist, "SHA256SUMS")} {
		if fi, err := os.Stat(f); err != nil || fi.Size() == 0 {
			t.Fatalf("release.sh made no %s: %v", f, err)
		}
	}
	if b, _ := os.ReadFile(rpm); !bytes.HasPrefix(b, []byte{0xed, 0xab, 0xee, 0xdb}) {
		t.Error("the .rpm has no RPM lead")
	}
	sums, _ := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	check := exec.Command("sha256sum", "-c", "SHA256SUMS")
	check.Dir = dist
	if out, err := check.CombinedOutput(); err != nil || strings.Count(string(sums), "\n") != 3 {
		t.Errorf("SHA256SUMS:\n%s\n%v %s", sums, err, out)
	}

	// The maintainer scripts neither enable nor start the service.
	ctl := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-e", deb, ctl).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -e: %v\n%s", err, out)
	}
	starts := regexp.MustCompile(`systemctl[^\n]*\b(start|enable|restart)\b|deb-systemd-invoke|invoke-rc\.d`)
	for _, s := range []string{"postinst", "preinst", "prerm", "postrm"} {
		b, err := os.ReadFile(filepath.Join(ctl, s))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "#") && starts.MatchString(l) && !strings.Contains(l, "disable --now") {
				t.Errorf("%s starts or enables the service: %s", s, l)
			}
		}
	}

	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644)
	dp := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(dpkg, append([]string{"--root=" + root, "--log=/dev/null", "--force-script-chrootless", "--force-depends", "--force-not-root"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	dp("-i", deb)
	bin := filepath.Join(root, "usr/bin/handoff")
	for _, f := range []string{"usr/bin/handoff", "lib/systemd/system/handoff.service", "etc/handoff/handoff.yaml",
		"usr/share/doc/handoff/README.md", "usr/share/doc/handoff/monitoring/handoff.rules.yaml",
		"usr/share/doc/handoff/docs/configuration.md", "usr/share/doc/handoff/docs/status-page.png",
		"usr/share/doc/handoff/docs/benchmarks/latest.svg"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("the package installs no %s: %v", f, err)
		}
	}
	if gos, _ := filepath.Glob(filepath.Join(root, "usr/share/doc/handoff/docs/*.go")); len(gos) > 0 {
		t.Errorf("the package installs docs/'s Go files: %v", gos)
	}
	if out, err := exec.Command(bin, "validate", "-c", filepath.Join(root, "etc/handoff/handoff.yaml")).CombinedOutput(); err != nil {
		t.Errorf("the packaged handoff validate of the packaged config: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "version").Output(); err != nil || !strings.HasPrefix(string(out), "handoff v0.0.0-test\n") {
		t.Errorf("the packaged handoff version: %v\n%s", err, out)
	}
	if st := dp("-s", "handoff"); !strings.Contains(st, "Status: install ok installed") || !strings.Contains(st, "/etc/handoff/handoff.yaml") {
		t.Errorf("dpkg -s:\n%s", st)
	}
	dp("-P", "handoff")
	for _, f := range []string{"usr/bin/handoff", "lib/systemd/system/handoff.service", "etc/handoff/handoff.yaml"} {
		if _, err := os.Stat(filepath.Join(root, f)); err == nil {
			t.Errorf("%s is left after purging", f)
		}
	}
}
