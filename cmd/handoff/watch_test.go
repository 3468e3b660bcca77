package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// TestWatchConfig saves the config file three times in each way docs/operations.md
// promises to notice, and wants one reload per save that reads what was
// saved: written in place, an editor's rename-on-save, and a Kubernetes
// ConfigMap's swap of the ..data symlink. A watcher of the file itself
// loses it at the first rename or swap (the file it watched is gone), so
// it would miss the second save. A file beside it that changes reloads
// nothing.
func TestWatchConfig(t *testing.T) {
	for _, tc := range []struct {
		desc string
		// setup writes the first version under dir and returns the path
		// the daemon is given.
		setup func(t *testing.T, dir, body string) string
		save  func(t *testing.T, dir, body string)
	}{
		{"write in place", writeFlat, func(t *testing.T, dir, body string) {
			write(t, filepath.Join(dir, "handoff.yaml"), body)
		}},
		{"editor rename-on-save", writeFlat, func(t *testing.T, dir, body string) {
			tmp := filepath.Join(dir, ".handoff.yaml.swp")
			write(t, tmp, body)
			rename(t, tmp, filepath.Join(dir, "handoff.yaml"))
		}},
		{"ConfigMap ..data swap", func(t *testing.T, dir, body string) string {
			// What the kubelet lays out: the file is a link through ..data
			// to a timestamped directory.
			writeVersion(t, dir, body)
			symlink(t, filepath.Join("..data", "handoff.yaml"), filepath.Join(dir, "handoff.yaml"))
			return filepath.Join(dir, "handoff.yaml")
		}, func(t *testing.T, dir, body string) {
			old, err := os.Readlink(filepath.Join(dir, "..data"))
			if err != nil {
				t.Fatal(err)
			}
			writeVersion(t, dir, body)
			if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := tc.setup(t, dir, "version: 0\n")
			reloads := make(chan string, 16)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			log := logrus.New()
			log.SetOutput(io.Discard)
			err := watchConfig(ctx, path, logrus.NewEntry(log), func() {
				b, err := os.ReadFile(path)
				if err != nil {
					reloads <- err.Error()
					return
				}
				reloads <- string(b)
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 3; i++ {
				want := fmt.Sprintf("version: %d\n", i)
				tc.save(t, dir, want)
				select {
				case got := <-reloads:
					if got != want {
						t.Fatalf("save %d: the reload read %q, want %q", i, got, want)
					}
				case <-time.After(3 * time.Second):
					t.Fatalf("save %d: no reload within 3s", i)
				}
			}
			write(t, filepath.Join(dir, "other.yaml"), "not the config\n")
			select {
			case got := <-reloads:
				t.Errorf("a reload after the last save (%q): once per save, and none for other files", got)
			case <-time.After(3 * reloadDebounce):
			}
		})
	}
}

// writeFlat writes body to dir/handoff.yaml and returns its path.
func writeFlat(t *testing.T, dir, body string) string {
	p := filepath.Join(dir, "handoff.yaml")
	write(t, p, body)
	return p
}

// writeVersion writes body into a new timestamped directory under dir and
// points dir/..data at it the way the kubelet does: a new link beside the
// old one, renamed over it.
func writeVersion(t *testing.T, dir, body string) {
	t.Helper()
	ts, err := os.MkdirTemp(dir, "..2026_")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(ts, "handoff.yaml"), body)
	symlink(t, filepath.Base(ts), filepath.Join(dir, "..data_tmp"))
	rename(t, filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data"))
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func rename(t *testing.T, from, to string) {
	t.Helper()
	if err := os.Rename(from, to); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}
