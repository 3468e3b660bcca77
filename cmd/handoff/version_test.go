package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestVersion: a binary built as scripts/release.sh builds it reports the
// version given with -ldflags, the module path and the commit it was
// built from (the VCS revision Go stamps into the build info).
func TestVersion(t *testing.T) {
	top, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v (the tests run in a git checkout)", err)
	}
	dir := strings.TrimSpace(string(top))
	if fi, err := os.Stat(filepath.Join(dir, ".git")); err != nil || !fi.IsDir() {
		// A git worktree (.git is a file), where Go stamps no revision:
		// build a clone of its HEAD instead.
		clone := filepath.Join(t.TempDir(), "src")
		if out, err := exec.Command("git", "clone", "-q", "--no-hardlinks", dir, clone).CombinedOutput(); err != nil {
			t.Fatalf("git clone: %v\n%s", err, out)
		}
		dir = clone
	}
	head, err := exec.Command("git", "-C", dir, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7", "./cmd/handoff")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=true") // a go env file may turn it off
	bin, b := buildVersion(t, build)
	if b.Version != "v9.8.7" || b.Module != "github.com/handoff-lb/handoff" || b.Commit != strings.TrimSpace(string(head)) || b.Date == "" {
		t.Errorf("version --json: %+v; want v9.8.7, the module, commit %s and a date", b, head)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "handoff v9.8.7\n") || !strings.Contains(string(out), "commit   "+b.Commit) {
		t.Errorf("version: %v\n%s", err, out)
	}
}

// TestVersionCommitFlag: a build without VCS data (the container image's,
// whose context has no .git) reports the commit given with -ldflags.
func TestVersionCommitFlag(t *testing.T) {
	_, b := buildVersion(t, exec.Command("go", "build", "-buildvcs=false", "-ldflags", "-X main.version=v1.2.3 -X main.commit=0123abcd", "."))
	if b.Version != "v1.2.3" || b.Commit != "0123abcd" {
		t.Errorf("version --json: %+v; want v1.2.3 and commit 0123abcd", b)
	}
}

// buildVersion runs build, a "go build" without -o, writing the binary to
// a temporary directory, and returns the binary and what its "version --json" reports.
func buildVersion(t *testing.T, build *exec.Cmd) (string, buildInfo) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "handoff")
	build.Args = slices.Insert(build.Args, 2, "-o", bin) // after "go build"
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var b buildInfo
	if err := json.Unmarshal(out, &b); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return bin, b
}
