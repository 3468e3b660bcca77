package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// pages returns README.md and every Markdown page under docs/, relative to
// the repository's root.
func pages(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.md")
	if err != nil || len(files) < 5 {
		t.Fatalf("docs/*.md: %v (%d pages)", err, len(files))
	}
	out := []string{"README.md"}
	for _, f := range files {
		out = append(out, filepath.Join("docs", f))
	}
	return out
}

// read returns a page's text with fenced code blocks and code spans
// blanked out (they show commands and addresses, not links).
func read(t *testing.T, page string) (raw, prose string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", page))
	if err != nil {
		t.Fatal(err)
	}
	raw = string(b)
	prose = regexp.MustCompile("(?ms)^```.*?^```").ReplaceAllString(raw, "")
	prose = regexp.MustCompile("`[^`\n]*`").ReplaceAllString(prose, "")
	return raw, prose
}

var (
	linkRE    = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	urlRE     = regexp.MustCompile(`(?i)\b(?:https?|ftp)://|\bwww\.[a-z0-9-]+\.[a-z]`)
	headingRE = regexp.MustCompile("(?m)^#{1,6} (.+)$")
)

// anchors returns the GitHub-style anchors of a page's headings.
func anchors(raw string) map[string]bool {
	noCode := regexp.MustCompile("(?ms)^```.*?^```").ReplaceAllString(raw, "")
	out := map[string]bool{}
	for _, m := range headingRE.FindAllStringSubmatch(noCode, -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(m[1]) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		a := b.String()
		for i := 1; out[a]; i++ {
			a = b.String() + "-" + strconv.Itoa(i)
		}
		out[a] = true
	}
	return out
}

// TestLinksStayInRepo: no page links outside the repository (no URL in
// prose, where a renderer would make it a link), and every relative link
// names a file of the repository and, with #, a heading of that page.
func TestLinksStayInRepo(t *testing.T) {
	for _, page := range pages(t) {
		_, prose := read(t, page)
		for i, line := range strings.Split(prose, "\n") {
			if m := urlRE.FindString(line); m != "" {
				t.Errorf("%s:%d: a URL (%s…) outside code: no link may leave the repository", page, i+1, m)
			}
		}
		for _, m := range linkRE.FindAllStringSubmatch(prose, -1) {
			target := m[1]
			if strings.Contains(target, ":") {
				t.Errorf("%s: link %s leaves the repository", page, target)
				continue
			}
			file, frag, _ := strings.Cut(target, "#")
			dest := page
			if file != "" {
				dest = filepath.Join(filepath.Dir(page), file)
				if _, err := os.Stat(filepath.Join("..", dest)); err != nil {
					t.Errorf("%s: link %s: %v", page, target, err)
					continue
				}
			}
			if frag == "" {
				continue
			}
			if !strings.HasSuffix(dest, ".md") {
				t.Errorf("%s: link %s: an anchor into a file that is no page", page, target)
				continue
			}
			b, err := os.ReadFile(filepath.Join("..", dest))
			if err != nil {
				t.Fatal(err)
			}
			if !anchors(string(b))[frag] {
				t.Errorf("%s: link %s: %s has no heading #%s", page, target, dest, frag)
			}
		}
	}
}

// TestREADME: the README is at most 250 lines, has a quickstart, and
// links every page of docs/.
func TestREADME(t *testing.T) {
	raw, prose := read(t, "README.md")
	if n := strings.Count(raw, "\n"); n > 250 {
		t.Errorf("README.md has %d lines; at most 250 (move the detail into docs/)", n)
	}
	if !anchors(raw)["quickstart"] {
		t.Error("README.md has no Quickstart section")
	}
	linked := map[string]bool{}
	for _, m := range linkRE.FindAllStringSubmatch(prose, -1) {
		file, _, _ := strings.Cut(m[1], "#")
		linked[filepath.Clean(file)] = true
	}
	for _, page := range pages(t)[1:] {
		if !linked[page] {
			t.Errorf("README.md does not link %s: its map of docs/ must name every page", page)
		}
	}
}
