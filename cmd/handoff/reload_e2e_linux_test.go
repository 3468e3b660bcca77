package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
)

const rlConfig = `
mode: kernel
log: {level: info}
admin: {listen: "127.0.0.1:9900"}
state_dir: STATE_DIR
services:
  - name: api
    listen: "198.18.0.1:81"
    first_connection: proxy
    health: {check: none}
    backends:
      - {name: be1, address: "198.19.1.11:81"}
      - {name: be2, address: "198.19.1.12:81"}
  - name: web
    listen: "198.18.0.1:80"
    first_connection: proxy
    timeouts: {connect: CONNECT}
    health: {check: none}
    backends:
WEB_BACKENDS
`

func rlWrite(t *testing.T, path, connect string, backends ...int) {
	t.Helper()
	var b strings.Builder
	for _, i := range backends {
		fmt.Fprintf(&b, "      - {name: be%d, address: %q}\n", i+1, netip.AddrPortFrom(nstest.Backend4(i), 80))
	}
	body := strings.NewReplacer("STATE_DIR", t.TempDir(), "CONNECT", connect, "WEB_BACKENDS\n", b.String()).Replace(rlConfig)
	// Write in place, as an editor that truncates would; the daemon
	// debounces the events.
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// rlLoad connects to vip from each client in turn until stop closes, and
// counts the connections that failed.
func rlLoad(tp *nstest.Topology, clients []netip.Addr, vip netip.AddrPort, stop <-chan struct{}, ok, failed *atomic.Int64, errs chan<- string) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		src := clients[i%len(clients)]
		if _, err := greet(tp.Client, src, vip); err != nil {
			failed.Add(1)
			select {
			case errs <- fmt.Sprintf("%s → %s: %v", src, vip, err):
			default:
			}
		} else {
			ok.Add(1)
		}
	}
}

func rlWaitBackends(t *testing.T, api *admClient, svc string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var got []string
		for _, s := range api.status().Services {
			if s.Name == svc {
				for _, b := range s.Backends {
					got = append(got, b.Name)
				}
			}
		}
		if strings.Join(got, ",") == strings.Join(want, ",") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("service %s has backends %v, want %v", svc, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReloadUnderLoad reloads three ways (file change, SIGHUP, the API)
// while clients connect in a loop: a backend is added, one removed, a
// timeout changed. The unchanged service sees no failed connection; a
// broken config is rejected whole and the old one keeps serving.
func TestReloadUnderLoad(t *testing.T) {
	tp, clients, _ := lab3(t, 16)
	for i := range 3 {
		greeter(t, tp.Backends[i], fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(nstest.Backend4(i), 80))
		greeter(t, tp.Backends[i], fmt.Sprintf("api-be%d", i+1), netip.AddrPortFrom(nstest.Backend4(i), 81))
	}
	path := writeConfig(t, "")
	rlWrite(t, path, "3s", 0, 1)
	apiVIP, webVIP := netip.MustParseAddrPort("198.18.0.1:81"), netip.MustParseAddrPort("198.18.0.1:80")
	d := startDaemon(t, tp.LB, path, webVIP)
	api := newAdmClient(t, tp.LB, "127.0.0.1:9900", "")
	rlWaitBackends(t, api, "web", "be1", "be2")

	stop := make(chan struct{})
	var apiOK, apiFailed, webOK, webFailed atomic.Int64
	errs := make(chan string, 16)
	var wg sync.WaitGroup
	for w := range 4 {
		mine := clients[w*4 : w*4+4]
		wg.Add(2)
		go func() { defer wg.Done(); rlLoad(tp, mine, apiVIP, stop, &apiOK, &apiFailed, errs) }()
		go func() { defer wg.Done(); rlLoad(tp, mine, webVIP, stop, &webOK, &webFailed, errs) }()
	}
	time.Sleep(300 * time.Millisecond)

	// 1. The file changes: be3 joins web (fsnotify).
	rlWrite(t, path, "3s", 0, 1, 2)
	rlWaitBackends(t, api, "web", "be1", "be2", "be3")
	time.Sleep(300 * time.Millisecond)
	// 2. SIGHUP after be2 left the file. Write first, then signal at once:
	// the watcher's reload may win; both apply the same file.
	rlWrite(t, path, "3s", 0, 2)
	d.cmd.Process.Signal(syscall.SIGHUP)
	rlWaitBackends(t, api, "web", "be1", "be3")
	time.Sleep(300 * time.Millisecond)
	// 3. The API, after a timeout changed.
	rlWrite(t, path, "2s", 0, 2)
	api.must(200, "POST", "/api/v1/reload", nil, nil)
	time.Sleep(300 * time.Millisecond)

	// 4. A broken file is rejected whole; the old config keeps serving.
	if err := os.WriteFile(path, []byte("services:\n  - name: web\n    listen: nowhere\n    bogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body := api.do("POST", "/api/v1/reload", nil)
	if code != 400 || !strings.Contains(string(body), "handoff.yaml:3:") || !strings.Contains(string(body), "bogus") {
		t.Errorf("broken reload: %d %s, want 400 listing every error with FILE:LINE:COL", code, body)
	}
	time.Sleep(500 * time.Millisecond) // the watcher's attempt, debounced, fails the same way
	rlWaitBackends(t, api, "web", "be1", "be3")
	close(stop)
	wg.Wait()

	if n := apiFailed.Load(); n != 0 || apiOK.Load() < 20 {
		var sample []string
		for len(errs) > 0 {
			sample = append(sample, <-errs)
		}
		t.Errorf("unchanged service: %d failed connections, %d served; e.g. %v", n, apiOK.Load(), sample)
	}
	t.Logf("during 3 reloads and a rejected one: api %d served, %d failed; web %d served, %d failed",
		apiOK.Load(), apiFailed.Load(), webOK.Load(), webFailed.Load())
	if webOK.Load() < 20 {
		t.Errorf("changed service served only %d connections", webOK.Load())
	}
	fams := api.metrics()
	if v := admValue(t, fams, "handoff_config_reloads_total", map[string]string{"result": "invalid"}); v < 1 {
		t.Errorf("handoff_config_reloads_total{result=invalid} = %v", v)
	}
	if v := admValue(t, fams, "handoff_config_reloads_total", map[string]string{"result": "ok"}); v < 3 {
		t.Errorf("handoff_config_reloads_total{result=ok} = %v, want ≥ 3", v)
	}
	if !strings.Contains(d.log(), "reload rejected") {
		t.Errorf("the rejected reload is not logged:\n%s", d.log())
	}
	// Removed be2's set and rules are gone; the others remain.
	sets := members(t, tp.LB)
	if _, ok := sets["ho-web-be2"]; ok {
		t.Error("removed backend's set remains")
	}
	for _, s := range []string{"ho-web-be1", "ho-web-be3", "ho-api-be1", "ho-api-be2"} {
		if _, ok := sets[s]; !ok {
			t.Errorf("set %s missing", s)
		}
	}
}

// TestReloadLarge: with 100 services of 10 backends each, a reload that
// adds, removes and changes backends and timeouts takes ≤ 1 s and cuts
// neither a kernel-forwarded flow nor a userspace-proxied one.
func TestReloadLarge(t *testing.T) {
	tp, clients, _ := lab3(t, 2)
	for j := range 10 {
		greeter(t, tp.Backends[j%3], fmt.Sprintf("be%d", j), netip.AddrPortFrom(nstest.Backend4(j%3), uint16(3000+j)))
	}
	render := func(change bool) string {
		var b strings.Builder
		fmt.Fprintf(&b, "mode: kernel\nlog: {level: info}\nadmin: {listen: \"127.0.0.1:9900\"}\nstate_dir: %s\nservices:\n", t.TempDir())
		for i := range 100 {
			idle := "10m"
			if change {
				idle = "5m"
			}
			fmt.Fprintf(&b, "  - name: s%03d\n    listen: \"198.18.0.1:%d\"\n    first_connection: proxy\n    timeouts: {idle: %s}\n    health: {check: none}\n    backends:\n", i, 1000+i, idle)
			for j := range 10 {
				if change && i%10 == 1 && j == 9 {
					continue // removed
				}
				fmt.Fprintf(&b, "      - {name: be%d, address: %q}\n", j, netip.AddrPortFrom(nstest.Backend4(j%3), uint16(3000+j)))
			}
			if change && i%10 == 2 {
				fmt.Fprintf(&b, "      - {name: be10, address: %q}\n", netip.AddrPortFrom(nstest.Backend4(0), 3000))
			}
		}
		return b.String()
	}
	path := writeConfig(t, render(false))
	d := startDaemon(t, tp.LB, path, netip.MustParseAddrPort("198.18.0.1:1099"))
	api := newAdmClient(t, tp.LB, "127.0.0.1:9900", "")

	// A userspace-proxied first connection and, for a second client, a
	// kernel-forwarded one (its retry after the proxied first) stay open
	// across the reload.
	vip := netip.MustParseAddrPort("198.18.0.1:1000")
	open := func(src netip.Addr) *bufio.ReadWriter {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := tp.Client.DialFrom(ctx, src, "tcp", vip.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
		if _, err := rw.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		return rw
	}
	proxied := open(clients[0])
	if _, err := greet(tp.Client, clients[1], vip); err != nil { // pins clients[1]
		t.Fatal(err)
	}
	forwarded := open(clients[1])
	echo := func(rw *bufio.ReadWriter, what string) {
		t.Helper()
		msg := "still here " + what + "\n"
		rw.WriteString(msg)
		rw.Flush()
		got, err := rw.ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("%s flow after the reload: %q, %v", what, got, err)
		}
	}

	if err := os.WriteFile(path, []byte(render(true)), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, body := api.do("POST", "/api/v1/reload", nil)
	took := time.Since(start)
	if code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	t.Logf("reload of 100 services / 1000 backends (10 added, 10 removed, every idle timeout changed): %v", took.Round(time.Millisecond))
	if took > time.Second {
		log := d.log()
		t.Errorf("reload took %v, want ≤ 1s; the daemon's account:\n%s", took, log[max(0, len(log)-1500):])
	}
	echo(proxied, "proxied")
	echo(forwarded, "kernel-forwarded")
	sets := members(t, tp.LB)
	if _, ok := sets["ho-s001-be9"]; ok {
		t.Error("removed backend's set remains")
	}
	if _, ok := sets["ho-s002-be10"]; !ok {
		t.Error("added backend has no set")
	}
	if n := len(sets); n != 1000 {
		t.Errorf("%d sets after the reload, want 1000", n)
	}
}
