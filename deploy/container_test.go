package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestContainerImage reads deploy/Dockerfile as docker would (no daemon
// runs in CI): the final stage runs as an unprivileged user in userspace
// mode, carries the OCI labels, links the iptables commands to the
// wrapper that TestIPTablesWrapper checks, and copies only files that
// exist and that .dockerignore leaves in the context.
func TestContainerImage(t *testing.T) {
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continued lines and drop comments, as the Dockerfile parser does.
	text := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(raw), " ")
	var stages [][]string // instructions per stage
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) > 0 {
			stages[len(stages)-1] = append(stages[len(stages)-1], line)
		}
	}
	if len(stages) < 2 {
		t.Fatalf("want a build stage and a runtime stage, got %d stages", len(stages))
	}
	final := stages[len(stages)-1]
	last := func(instr string) string {
		v := ""
		for _, l := range final {
			if strings.HasPrefix(l, instr+" ") {
				v = strings.TrimSpace(strings.TrimPrefix(l, instr+" "))
			}
		}
		return v
	}
	if u := last("USER"); u == "" || strings.HasPrefix(u, "0") || strings.HasPrefix(u, "root") {
		t.Errorf("the image runs as %q; want an unprivileged user", u)
	}
	if c := last("CMD"); c != `["run", "--mode", "userspace"]` {
		t.Errorf("CMD %s; want userspace mode by default", c)
	}
	labels := strings.Join(final, "\n")
	for _, l := range []string{"title", "description", "licenses", "version", "revision", "created"} {
		if !strings.Contains(labels, "org.opencontainers.image."+l+"=") {
			t.Errorf("no OCI label org.opencontainers.image.%s", l)
		}
	}
	for _, c := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if !strings.Contains(labels, "ln -sf /usr/sbin/iptables-wrapper /usr/sbin/$c") || !strings.Contains(labels, " "+c+" ") && !strings.Contains(labels, " "+c+";") {
			t.Errorf("%s is not linked to the iptables wrapper", c)
		}
	}

	ignore, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	var patterns []string
	for _, l := range strings.Split(string(ignore), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			patterns = append(patterns, strings.TrimPrefix(l, "/"))
		}
	}
	if !contains(patterns, ".git") {
		t.Errorf(".dockerignore does not leave out .git")
	}
	ignored := func(p string) bool {
		for _, pat := range patterns {
			if ok, _ := filepath.Match(pat, p); ok || p == pat || strings.HasPrefix(p, pat+"/") {
				return true
			}
		}
		return false
	}
	for _, st := range stages {
		for _, l := range st {
			f := strings.Fields(l)
			if f[0] != "COPY" || strings.HasPrefix(f[1], "--from") {
				continue
			}
			for _, src := range f[1 : len(f)-1] {
				if src == "." {
					continue
				}
				if _, err := os.Stat(filepath.Join("..", src)); err != nil {
					t.Errorf("COPY %s: %v", src, err)
				}
				if ignored(src) {
					t.Errorf("COPY %s: .dockerignore leaves it out of the context", src)
				}
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
