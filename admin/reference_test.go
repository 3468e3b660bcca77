package admin

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestAPIReference: docs/admin-api.md documents every endpoint of the
// admin API (as a "### `METHOD PATH`" heading) and every metric of the
// exposition, and names no endpoint the server does not serve.
func TestAPIReference(t *testing.T) {
	b, err := os.ReadFile("../docs/admin-api.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	s, _ := newTestServer(t, false, Options{})
	var served []string
	for _, rt := range s.endpoints() {
		h := "### `" + rt.method + " " + rt.path + "`"
		served = append(served, h)
		if !strings.Contains(doc, h+"\n") {
			t.Errorf("docs/admin-api.md has no heading %s", h)
		}
	}
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "### `") && strings.Contains(line, " /") && !slices.Contains(served, line) {
			t.Errorf("docs/admin-api.md documents %s, which the admin API does not serve", line)
		}
	}
	// Every metric the collector can emit, whether or not a series exists.
	ch := make(chan *prometheus.Desc, 100)
	newStatusCollector(nil, "", nil).Describe(ch)
	close(ch)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	n := 0
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in %s", d)
		}
		n++
		if !strings.Contains(doc, "`"+m[1]+"`") {
			t.Errorf("docs/admin-api.md does not describe the metric %s", m[1])
		}
	}
	if n < 30 {
		t.Fatalf("only %d metrics described", n)
	}
}
