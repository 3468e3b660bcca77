package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// stProcKB reads a "Name:   123 kB" field of /proc/PID/status.
func stProcKB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestClientsStreamMillion: GET …/clients streams 1,000,000 pins of real
// sets without the daemon buffering them: its peak RSS grows ≤ 50 MB.
//
// Filling the sets takes the kernel about a minute for a million IPv6
// entries (hash resizes), so by default the test streams 100,000 pins as a
// smoke test (a bound of 12 MiB; kernel's TestNSPinsStreams is the one that
// catches buffering at that size) and HANDOFF_PERF=1 runs the full million
// against the 50 MB bound, which buffering the sets fails (+66 MiB).
func TestClientsStreamMillion(t *testing.T) {
	const backends = 4
	perBackend, boundMiB := 25_000, 12.0
	if os.Getenv("HANDOFF_PERF") == "1" {
		perBackend, boundMiB = 250_000, 50
	}
	nstest.RequireRoot(t)
	tp := nstest.NewTopology(t, 1)
	vip := "[2001:2:0:1::1]:90"
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "mode: kernel\nlog: {level: info}\nadmin: {listen: \"127.0.0.1:9900\"}\nstate_dir: STATE_DIR\nservices:\n  - name: big\n    listen: %q\n    health: {check: none}\n    client_ttl: 1h\n    backends:\n", vip)
	for i := range backends {
		fmt.Fprintf(&cfg, "      - {name: be%d, address: \"[2001:2:0:2::11]:%d\"}\n", i+1, 8000+i)
	}
	d := startDaemon(t, tp.LB, writeConfig(t, cfg.String()), netip.MustParseAddrPort(vip))

	// Fill the daemon's sets through ipset restore: 1,000,000 clients from
	// 2001:2:1::/64, each with a timeout and a comment as pins have.
	start := time.Now()
	var in strings.Builder
	for i := range backends * perBackend {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 0, 1, 14: byte(i >> 8), 15: byte(i), 13: byte(i >> 16)})
		fmt.Fprintf(&in, "add ho6-big-be%d %s timeout 3600 comment \"src=%s\"\n", i%backends+1, a, a)
	}
	cmd := exec.Command("ip", "netns", "exec", tp.LB.Name, "ipset", "restore")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipset restore: %v\n%s", err, out)
	}
	in.Reset()
	t.Logf("%d pins restored in %v", backends*perBackend, time.Since(start).Round(time.Millisecond))

	pid := d.cmd.Process.Pid // ip netns exec execs handoff in place
	before := stProcKB(t, pid, "VmRSS")
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("resetting the peak RSS: %v", err)
	}

	api := newAdmClient(t, tp.LB, "127.0.0.1:9900", "")
	start = time.Now()
	req, _ := http.NewRequest("GET", api.base+"/api/v1/services/big/clients", nil)
	resp, err := api.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	dec := json.NewDecoder(resp.Body)
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		t.Fatalf("stream does not start with [: %v %v", tok, err)
	}
	n := 0
	seen := map[string]int{}
	for dec.More() {
		var p struct {
			Client, Backend, Key string
			ExpiresIn            float64 `json:"expires_in"`
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("pin %d: %v", n, err)
		}
		if n%997 == 0 && (p.Key != "src="+p.Client || p.ExpiresIn <= 0) {
			t.Fatalf("pin %d: %+v", n, p)
		}
		seen[p.Backend]++
		n++
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim(']') {
		t.Fatalf("stream cut after %d pins: %v %v", n, tok, err)
	}
	took := time.Since(start)
	peak := stProcKB(t, pid, "VmHWM")
	growth := float64(peak-before) / 1024
	t.Logf("streamed %d pins in %v; daemon RSS %d MiB before, peak %d MiB: +%.1f MiB", n, took.Round(time.Millisecond), before/1024, peak/1024, growth)
	if n != backends*perBackend {
		t.Fatalf("streamed %d pins, want %d (per backend %v)", n, backends*perBackend, seen)
	}
	if growth > boundMiB {
		t.Errorf("daemon RSS grew %.1f MiB while streaming %d pins, want ≤ %.0f MiB", growth, n, boundMiB)
	}
}
