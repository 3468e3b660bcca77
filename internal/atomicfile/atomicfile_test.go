package atomicfile

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := Write(path, func(w *bufio.Writer) error { _, err := w.WriteString("one"); return err }); err != nil {
		t.Fatal(err)
	}
	// A failing writer leaves the old content and no temporary file.
	boom := errors.New("boom")
	if err := Write(path, func(w *bufio.Writer) error { w.WriteString("partial"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("Write with a failing writer: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "one" {
		t.Fatalf("after a failed write: %q, %v", b, err)
	}
	if err := Write(path, func(w *bufio.Writer) error { _, err := w.WriteString("two"); return err }); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "two" {
		t.Fatalf("content %q, want two", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 {
		t.Errorf("directory holds %d entries, want only the file", len(es))
	}
}

func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, n := range []string{"state.json", "state.json.tmp-1", "state.json.tmp-22", "state.json.tmpx", "other.json.tmp-1"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "state.json.tmp-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveStale(path)
	if err != nil || len(removed) != 2 {
		t.Fatalf("RemoveStale = %v, %v; want the two temporary files", removed, err)
	}
	ents, _ := os.ReadDir(dir)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if got := strings.Join(left, " "); got != "other.json.tmp-1 state.json state.json.tmp-dir state.json.tmpx" {
		t.Fatalf("left %s", got)
	}
	if removed, err := RemoveStale(filepath.Join(dir, "missing", "state.json")); err != nil || removed != nil {
		t.Fatalf("in a missing directory: %v, %v", removed, err)
	}
}
