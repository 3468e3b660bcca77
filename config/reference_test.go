package config

import (
	"fmt"
	"go/ast"
	goparser "go/parser"
	"go/token"
	"os"
	"regexp"
	"strings"
	"testing"
)

// sections says where each key list of parse.go sits in a config file.
// The shorthand keys (balance, backends, failback directly under a
// service) are documented as rows of their own; the backend fields once,
// under pools.
var sections = map[string]string{
	"topKeys":      "",
	"logKeys":      "log.",
	"adminKeys":    "admin.",
	"metricsKeys":  "metrics.",
	"kernelKeys":   "kernel.",
	"serviceKeys":  "services[].",
	"payloadKeys":  "services[].payload.",
	"timeoutsKeys": "services[].timeouts.",
	"healthKeys":   "services[].health.",
	"httpKeys":     "services[].health.http.",
	"routeKeys":    "services[].routes[].",
	"matchKeys":    "services[].routes[].match.",
	"poolKeys":     "services[].pools[].",
	"backendKeys":  "services[].pools[].backends[].",
	"budgetKeys":   "services[].pin_budget.",
	"clusterKeys":  "cluster.",
	"etcdKeys":     "cluster.etcd.",
	"tlsKeys":      "cluster.etcd.tls.",
}

// keyLists reads the key lists (package-level []string vars named *Keys)
// from the parser's source (parse.go and cluster.go), so that a new list cannot escape the test.
func keyLists(t *testing.T) map[string][]string {
	t.Helper()
	lists := map[string][]string{}
	for _, file := range []string{"parse.go", "cluster.go"} {
		f, err := goparser.ParseFile(token.NewFileSet(), file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		inspectKeyLists(f, lists)
	}
	return lists
}

// inspectKeyLists adds f's key lists to lists.
func inspectKeyLists(f *ast.File, lists map[string][]string) {
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok {
			return true
		}
		for i, name := range vs.Names {
			if !strings.HasSuffix(name.Name, "Keys") || i >= len(vs.Values) {
				continue
			}
			cl, ok := vs.Values[i].(*ast.CompositeLit)
			if !ok {
				continue
			}
			for _, e := range cl.Elts {
				if bl, ok := e.(*ast.BasicLit); ok && bl.Kind == token.STRING {
					lists[name.Name] = append(lists[name.Name], strings.Trim(bl.Value, `"`))
				}
			}
		}
		return true
	})
}

// TestReferenceCoversEveryField: docs/configuration.md has a table row
// for every field the parser accepts (sections excepted: they have rows
// for their fields), and each row gives a default, an example and a
// meaning; it has no row for a field the parser refuses.
func TestReferenceCoversEveryField(t *testing.T) {
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{} // field → its cells
	row := regexp.MustCompile("^\\| `([a-z0-9_.\\[\\]]+)` \\|(.*)\\|$")
	for _, line := range strings.Split(string(b), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			rows[m[1]] = strings.Split(m[2], "|")
		}
	}
	lists := keyLists(t)
	if len(lists) < len(sections) {
		t.Fatalf("found %d key lists in parse.go and cluster.go, want at least %d", len(lists), len(sections))
	}
	prefixes := map[string]bool{}
	for name := range lists {
		p, ok := sections[name]
		if !ok {
			t.Fatalf("parse.go has a key list %s that this test does not place: add it to sections", name)
		}
		prefixes[p] = true
	}
	fields := map[string]bool{}
	for name, keys := range lists {
		for _, k := range keys {
			path := sections[name] + k
			if prefixes[path+"."] || prefixes[path+"[]."] {
				continue // a section: its fields have the rows
			}
			fields[path] = true
			cells, ok := rows[path]
			switch {
			case !ok:
				t.Errorf("docs/configuration.md has no row for %s", path)
			case len(cells) != 3:
				t.Errorf("docs/configuration.md: the row of %s has %d cells after the field, want default | example | meaning", path, len(cells))
			default:
				for i, c := range cells {
					if strings.TrimSpace(c) == "" {
						t.Errorf("docs/configuration.md: the row of %s has an empty %s", path, []string{"default", "example", "meaning"}[i])
					}
				}
			}
		}
	}
	for path := range rows {
		if !fields[path] {
			t.Errorf("docs/configuration.md documents %s, which the parser does not accept", path)
		}
	}
}

// TestReferenceExamples: every complete config in docs/configuration.md
// (a yaml block with services) is valid.
func TestReferenceExamples(t *testing.T) {
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1)
	n := 0
	for i, m := range blocks {
		if !regexp.MustCompile(`(?m)^services:`).MatchString(m[1]) {
			continue
		}
		n++
		if _, err := Parse(fmt.Sprintf("configuration.md block %d", i), []byte(m[1])); err != nil {
			t.Errorf("the example config %d of docs/configuration.md is invalid:\n%v\n%s", i, err, m[1])
		}
	}
	if n == 0 {
		t.Fatal("docs/configuration.md has no complete example config")
	}
}
