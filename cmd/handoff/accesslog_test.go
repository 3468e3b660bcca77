package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// writes records each Write it is given.
type writes struct {
	mu  sync.Mutex
	got []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, string(p))
	return len(p), nil
}

func (w *writes) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.got...)
}

// TestBatchWriter: lines from many goroutines reach the output whole, in
// a few writes, within a flush interval; Close writes what waits, and a
// line written after Close goes out at once.
func TestBatchWriter(t *testing.T) {
	out := &writes{}
	bw := newBatchWriter(out)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 250 {
				fmt.Fprintf(bw, "g%d line %d\n", g, i)
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(strings.Join(out.all(), ""), "\n") < 1000 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	text := strings.Join(out.all(), "")
	for g := range 4 {
		for i := range 250 {
			if !strings.Contains(text, fmt.Sprintf("g%d line %d\n", g, i)) {
				t.Fatalf("line %d of goroutine %d missing or torn", i, g)
			}
		}
	}
	if n := len(out.all()); n > 10 {
		t.Errorf("1,000 lines took %d writes, want a few batches", n)
	}

	fmt.Fprintln(bw, "waits")
	if err := bw.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(strings.Join(out.all(), ""), "waits\n") {
		t.Errorf("Close did not write the waiting line")
	}
	before := len(out.all())
	fmt.Fprintln(bw, "late")
	if got := out.all(); len(got) != before+1 || got[len(got)-1] != "late\n" {
		t.Errorf("a line after Close was not written at once: %q", got[before:])
	}
}

// TestBatchWriterFlushesAlone: a lone line goes out by itself after the
// flush interval, with no further line or Close to push it.
func TestBatchWriterFlushesAlone(t *testing.T) {
	out := &writes{}
	bw := newBatchWriter(out)
	defer bw.Close()
	start := time.Now()
	fmt.Fprintln(bw, "alone")
	for len(out.all()) == 0 && time.Since(start) < 5*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	if got := out.all(); len(got) != 1 || got[0] != "alone\n" {
		t.Fatalf("writes %q, want one of the lone line", got)
	}
	if took < accessFlushEvery/2 {
		t.Errorf("the line went out after %v, before the flush interval %v: not batched", took, accessFlushEvery)
	}
}
