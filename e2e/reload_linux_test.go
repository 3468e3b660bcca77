package e2e

// Scenarios of reloading the config under load, and of a large reload.

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/testenv"
)

// reloadConfig has two services: api, which no reload changes, and web,
// whose connect timeout and backends (be1 on backend host 0, ...) change.
func reloadConfig(connect string, webBackends ...int) daemonConfig {
	api := service{"api", ipv4.at(81), []string{"first_connection: proxy", "health: {check: none}"}, backends(ipv4, 81, "be1", "be2")}
	web := service{"web", ipv4.at(80), []string{"first_connection: proxy", "timeouts: {connect: " + connect + "}", "health: {check: none}"}, nil}
	for _, i := range webBackends {
		web.backends = append(web.backends, backend{fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(ipv4.backend(i), 80)})
	}
	return daemonConfig{mode: "kernel", logLevel: "info", services: []service{api, web}}
}

// load connects to vip from each client in turn until stop closes, and
// counts the connections served and failed; errs gets the first failures.
func (l *lab) load(clients []netip.Addr, vip netip.AddrPort, stop <-chan struct{}, ok, failed *atomic.Int64, errs chan<- string) {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		src := clients[i%len(clients)]
		if _, err := l.greet(src, vip); err != nil {
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

// waitBackends waits up to 5s until the status lists want as svc's backends.
func waitBackends(t *testing.T, api *adminAPI, svc string, want ...string) {
	t.Helper()
	var got []string
	waitUntil(t, time.Now(), 5*time.Second, fmt.Sprintf("service %s with backends %v", svc, want), func() bool {
		got = api.backendNames(svc)
		return slices.Equal(got, want)
	})
}

// TestReloadUnderLoad reloads three ways (file change, SIGHUP, the API)
// while clients connect in a loop: a backend is added, one removed, a
// timeout changed. The unchanged service sees no failed connection; a
// broken config is rejected whole and the old one keeps serving.
func TestReloadUnderLoad(t *testing.T) {
	l := newLab(t, 3, 16)
	for i := range 3 {
		serveGreeter(t, l.Backends[i], fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(ipv4.backend(i), 80))
		serveGreeter(t, l.Backends[i], fmt.Sprintf("api-be%d", i+1), netip.AddrPortFrom(ipv4.backend(i), 81))
	}
	path := writeConfig(t, reloadConfig("3s", 0, 1))
	apiVIP, webVIP := ipv4.at(81), ipv4.at(80)
	d := startDaemon(t, l.LB, path, webVIP)
	api := newAdminAPI(t, l.LB, adminListen, "")
	waitBackends(t, api, "web", "be1", "be2")

	stop := make(chan struct{})
	var apiOK, apiFailed, webOK, webFailed atomic.Int64
	errs := make(chan string, 16)
	var wg sync.WaitGroup
	clients := l.clients(ipv4)
	for w := range 4 {
		mine := clients[w*4 : w*4+4]
		wg.Go(func() { l.load(mine, apiVIP, stop, &apiOK, &apiFailed, errs) })
		wg.Go(func() { l.load(mine, webVIP, stop, &webOK, &webFailed, errs) })
	}
	time.Sleep(300 * time.Millisecond)

	// 1. The file changes: be3 joins web (fsnotify).
	rewriteConfig(t, path, reloadConfig("3s", 0, 1, 2))
	waitBackends(t, api, "web", "be1", "be2", "be3")
	time.Sleep(300 * time.Millisecond)
	// 2. SIGHUP after be2 left the file. Write first, then signal at once:
	// the watcher's reload may win; both apply the same file.
	rewriteConfig(t, path, reloadConfig("3s", 0, 2))
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitBackends(t, api, "web", "be1", "be3")
	time.Sleep(300 * time.Millisecond)
	// 3. The API, after a timeout changed.
	rewriteConfig(t, path, reloadConfig("2s", 0, 2))
	api.must(200, "POST", "/api/v1/reload", nil, nil)
	time.Sleep(300 * time.Millisecond)

	// 4. A broken file is rejected whole; the old config keeps serving.
	rewriteConfig(t, path, yaml("services:\n  - name: web\n    listen: nowhere\n    bogus: 1\n"))
	code, body := api.do("POST", "/api/v1/reload", nil)
	if code != 400 || !strings.Contains(string(body), "handoff.yaml:3:") || !strings.Contains(string(body), "bogus") {
		t.Errorf("broken reload: %d %s, want 400 listing every error with FILE:LINE:COL", code, body)
	}
	time.Sleep(500 * time.Millisecond) // the watcher's attempt, debounced, fails the same way
	waitBackends(t, api, "web", "be1", "be3")
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
	if v := metricValue(t, fams, "handoff_config_reloads_total", map[string]string{"result": "invalid"}); v < 1 {
		t.Errorf("handoff_config_reloads_total{result=invalid} = %v", v)
	}
	if v := metricValue(t, fams, "handoff_config_reloads_total", map[string]string{"result": "ok"}); v < 3 {
		t.Errorf("handoff_config_reloads_total{result=ok} = %v, want ≥ 3", v)
	}
	if !strings.Contains(d.log(), "reload rejected") {
		t.Errorf("the rejected reload is not logged:\n%s", d.log())
	}
	// Removed be2's set and rules are gone; the others remain.
	sets := readSets(t, l.LB)
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
	l := newLab(t, 3, 2)
	for j := range 10 {
		serveGreeter(t, l.Backends[j%3], fmt.Sprintf("be%d", j), netip.AddrPortFrom(ipv4.backend(j%3), uint16(3000+j)))
	}
	// 100 services of 10 backends; the change removes be9 of every tenth
	// service, adds be10 to every tenth, and changes every idle timeout.
	render := func(change bool) daemonConfig {
		cfg := daemonConfig{mode: "kernel", logLevel: "info"}
		for i := range 100 {
			idle := "10m"
			if change {
				idle = "5m"
			}
			s := service{name: fmt.Sprintf("s%03d", i), listen: ipv4.at(uint16(1000 + i)),
				fields: []string{"first_connection: proxy", "timeouts: {idle: " + idle + "}", "health: {check: none}"}}
			for j := range 10 {
				if change && i%10 == 1 && j == 9 {
					continue // removed
				}
				s.backends = append(s.backends, backend{fmt.Sprintf("be%d", j), netip.AddrPortFrom(ipv4.backend(j%3), uint16(3000+j))})
			}
			if change && i%10 == 2 {
				s.backends = append(s.backends, backend{"be10", netip.AddrPortFrom(ipv4.backend(0), 3000)})
			}
			cfg.services = append(cfg.services, s)
		}
		return cfg
	}
	path := writeConfig(t, render(false))
	d := startDaemon(t, l.LB, path, ipv4.at(1099))
	api := newAdminAPI(t, l.LB, adminListen, "")

	// A userspace-proxied first connection and, for a second client, a
	// kernel-forwarded one (its retry after the proxied first) stay open
	// across the reload.
	vip := ipv4.at(1000)
	clients := l.clients(ipv4)
	proxied := l.hold(t, clients[0], vip, answer{})
	if _, err := l.greet(clients[1], vip); err != nil { // pins clients[1]
		t.Fatal(err)
	}
	forwarded := l.hold(t, clients[1], vip, answer{seen: clients[1].String()})

	rewriteConfig(t, path, render(true))
	start := time.Now()
	code, body := api.do("POST", "/api/v1/reload", nil)
	took := time.Since(start)
	if code != 200 {
		t.Fatalf("reload: %d %s", code, body)
	}
	t.Logf("reload of 100 services / 1000 backends (10 added, 10 removed, every idle timeout changed): %v", took.Round(time.Millisecond))
	// The 1 s budget is a measurement (README, Testing: budgets hold under
	// HANDOFF_PERF=1): the race-built daemon on this shared 2-vCPU VM took
	// 0.85-1.8 s while other work loaded it, main's build as well. Without
	// it a reload still ends within 5 s.
	budget := 5 * time.Second
	if testenv.Perf() {
		budget = time.Second
	}
	if took > budget {
		log := d.log()
		t.Errorf("reload took %v, want ≤ %v; the daemon's account:\n%s", took, budget, log[max(0, len(log)-1500):])
	}
	proxied.echo(t, "proxied, after the reload")
	forwarded.echo(t, "kernel-forwarded, after the reload")
	sets := readSets(t, l.LB)
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
