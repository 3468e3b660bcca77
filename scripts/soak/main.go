// Command soak drives handoff's soak test (scripts/soak.sh) in the lab of
// scripts/lab.sh: mixed load of new and pinned clients, a config reload
// every reload interval, a backend killed and restored every kill
// interval, and API calls, while it watches the daemon's RSS,
// goroutines, descriptors and pin counts. It exits 1 when a bound is
// passed or a served client sees an error.
//
//	soak backend ADDR NAME    a greeter backend (run in a backend namespace)
//	soak drive [flags]        the load and the watch (run in the root namespace)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"golang.org/x/time/rate"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netns"

	"github.com/handoff-lb/handoff/internal/netnsutil"
)

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "backend" {
		os.Exit(backend(os.Args[2], os.Args[3]))
	}
	if len(os.Args) >= 2 && os.Args[1] == "drive" {
		os.Exit(drive(os.Args[2:]))
	}
	fmt.Fprintln(os.Stderr, "usage: soak backend ADDR NAME | soak drive [flags]")
	os.Exit(2)
}

// backend greets each connection with "NAME CLIENT-IP\n" and echoes.
func backend(addr, name string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			ip := c.RemoteAddr().(*net.TCPAddr).IP
			fmt.Fprintf(c, "%s %s\n", name, ip)
			io.Copy(c, c)
		}()
	}
}

type options struct {
	duration, reloadEvery, killEvery, warmup time.Duration
	vip, admin, binary                       string
	clientNS, lbNS                           string
	backends                                 []string // ns=addr=name
	clients                                  int
	pinned                                   int
	workers                                  int
	rate                                     float64
	rssGrowth                                float64
}

func drive(args []string) int {
	var o options
	fs := flag.NewFlagSet("drive", flag.ExitOnError)
	fs.DurationVar(&o.duration, "duration", time.Hour, "how long to run")
	fs.DurationVar(&o.reloadEvery, "reload-every", time.Minute, "config reload interval")
	fs.DurationVar(&o.killEvery, "kill-every", 5*time.Minute, "backend kill interval (restored half-way to the next)")
	fs.DurationVar(&o.warmup, "warmup", 20*time.Second, "load before the baselines are taken")
	fs.StringVar(&o.vip, "vip", "198.18.0.1:80", "the service's address")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:9900", "the admin API, in the balancer namespace")
	fs.StringVar(&o.binary, "self", os.Args[0], "this binary, to start backends with")
	fs.StringVar(&o.clientNS, "client-ns", "ho-client", "the clients' namespace")
	fs.StringVar(&o.lbNS, "lb-ns", "ho-lb", "the balancer's namespace")
	fs.IntVar(&o.clients, "clients", 100, "client addresses 198.18.0.2..")
	fs.IntVar(&o.pinned, "pinned", 20, "of them, the ones that come back all the time (pinned)")
	fs.IntVar(&o.workers, "workers", 8, "concurrent clients")
	// Every connection holds a conntrack entry for two minutes after it
	// closes (TIME_WAIT): unpaced, the workers fill the default table
	// (262,144) and the kernel drops SYNs, which tests the host's sizing,
	// not handoff. 1,000/s keeps it under half full.
	fs.Float64Var(&o.rate, "rate", 1000, "connections per second, all workers together (0: unpaced)")
	fs.Float64Var(&o.rssGrowth, "rss-growth", 1.5, "RSS bound: this times the baseline, plus 64 MiB")
	var bes string
	fs.StringVar(&bes, "backends", "ho-be1=198.19.1.11:80=be1,ho-be2=198.19.1.12:80=be2,ho-be3=198.19.1.13:80=be3", "backends: ns=addr=name, comma-separated")
	fs.Parse(args)
	o.backends = strings.Split(bes, ",")

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	s, err := newSoak(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		return 1
	}
	defer s.close()
	if err := s.run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "soak: FAIL:", err)
		return 1
	}
	return 0
}

type soak struct {
	o        options
	client   netns.NsHandle
	lb       netns.NsHandle
	procs    map[string]*exec.Cmd // backend name -> its process
	addrs    map[string]string    // backend name -> ns=addr
	mu       sync.Mutex
	killed   string    // the backend down now, "" when none
	killedAt time.Time // when the last kill or restore happened
	served   atomic.Int64
	refused  atomic.Int64 // connections refused in a kill window (allowed)
	failures chan error
	pace     *rate.Limiter
}

func newSoak(o options) (*soak, error) {
	c, err := netns.GetFromName(o.clientNS)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", o.clientNS, err)
	}
	l, err := netns.GetFromName(o.lbNS)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("netns %s: %w", o.lbNS, err)
	}
	s := &soak{o: o, client: c, lb: l, procs: map[string]*exec.Cmd{}, addrs: map[string]string{}, failures: make(chan error, 16), pace: rate.NewLimiter(rate.Inf, 1)}
	if o.rate > 0 {
		s.pace = rate.NewLimiter(rate.Limit(o.rate), o.workers)
	}
	for _, b := range o.backends {
		p := strings.Split(b, "=")
		if len(p) != 3 {
			return nil, fmt.Errorf("backend %q: want ns=addr=name", b)
		}
		s.addrs[p[2]] = p[0] + "=" + p[1]
		if err := s.start(p[2]); err != nil {
			return nil, err
		}
	}
	// The load starts once every backend answers from the balancer's
	// namespace and its health checks (200 ms, rise 1) had time to see it
	// up: the daemon was started first, so it saw none of them.
	for name, a := range s.addrs {
		addr := strings.SplitN(a, "=", 2)[1]
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := dialIn(context.Background(), s.lb, netip.Addr{}, addr)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				s.close()
				return nil, fmt.Errorf("backend %s at %s never answered: %w", name, addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(time.Second)
	return s, nil
}

func (s *soak) start(name string) error {
	nsAddr := strings.SplitN(s.addrs[name], "=", 2)
	cmd := exec.Command("ip", "netns", "exec", nsAddr[0], s.o.binary, "backend", nsAddr[1], name)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	s.procs[name] = cmd
	go cmd.Wait()
	return nil
}

func (s *soak) close() {
	for _, p := range s.procs {
		p.Process.Kill()
	}
	s.client.Close()
	s.lb.Close()
}

func (s *soak) fail(err error) {
	select {
	case s.failures <- err:
	default:
	}
}

// dialIn connects to addr from src (any when invalid) inside ns.
func dialIn(ctx context.Context, ns netns.NsHandle, src netip.Addr, addr string) (net.Conn, error) {
	var c net.Conn
	err := netnsutil.Do(ns, func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

func (s *soak) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.o.duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range s.o.workers {
		wg.Go(func() { s.load(ctx, w) })
	}
	wg.Go(func() { s.chaos(ctx) })
	wg.Go(func() { s.api(ctx) })
	err := s.watch(ctx)
	cancel()
	wg.Wait()
	if err == nil {
		select {
		case err = <-s.failures:
		default:
		}
	}
	fmt.Printf("soak: %d connections served, %d refused in backend-kill windows\n", s.served.Load(), s.refused.Load())
	return err
}

// clientAddr is the i-th client address of the lab.
func clientAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(2 + i)}) }

// load is one worker: connections from pinned clients (the first
// o.pinned addresses) and from the others, which become new again as
// their pins expire or are unpinned.
func (s *soak) load(ctx context.Context, w int) {
	r := rand.New(rand.NewPCG(uint64(w), 7))
	for ctx.Err() == nil {
		i := r.IntN(s.o.pinned)
		if r.IntN(2) == 0 {
			i = s.o.pinned + r.IntN(s.o.clients-s.o.pinned)
		}
		if s.pace.Wait(ctx) != nil {
			return
		}
		if err := s.exchange(ctx, clientAddr(i)); err != nil && !over(ctx) {
			s.fail(fmt.Errorf("%w\n%s", err, s.kernelView(clientAddr(i))))
			return
		}
	}
}

// over reports whether the run is over. Its deadline also bounds each
// dial, whose own timer can fire a moment before ctx's: a dial cut by
// the end of the run then fails with "i/o timeout" while ctx.Err() is
// still nil, and must not count as a client's error.
func over(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ctx.Err() != nil || ok && !time.Now().Before(d)
}

// exchange opens one connection, reads the greeting, sends a line and
// reads it back. A connection refused or cut is allowed only for a
// backend killed within the last few seconds.
func (s *soak) exchange(ctx context.Context, src netip.Addr) error {
	start := time.Now()
	c, err := dialIn(ctx, s.client, src, s.o.vip)
	if err != nil {
		return s.excuse(src, "", start, fmt.Errorf("client %s: dial: %w", src, err))
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	greet, err := r.ReadString('\n')
	if err != nil {
		return s.excuse(src, "", start, fmt.Errorf("client %s: greeting: %w", src, err))
	}
	name, _, _ := strings.Cut(strings.TrimSpace(greet), " ")
	msg := fmt.Sprintf("soak %s %d\n", src, start.UnixNano())
	if _, err := io.WriteString(c, msg); err != nil {
		return s.excuse(src, name, start, fmt.Errorf("client %s (%s): write: %w", src, name, err))
	}
	back, err := r.ReadString('\n')
	if err != nil || back != msg {
		return s.excuse(src, name, start, fmt.Errorf("client %s (%s): echo %q, %v", src, name, back, err))
	}
	s.served.Add(1)
	return nil
}

// kernelView is what the balancer's kernel holds for a failed client:
// its conntrack entries and its set memberships, for the failure report.
func (s *soak) kernelView(client netip.Addr) string {
	var b strings.Builder
	type view struct {
		ns   string
		args []string
	}
	views := []view{
		{s.o.lbNS, []string{"sh", "-c", "conntrack -L -p tcp -s " + client.String() + " 2>&1 | grep -v TIME_WAIT"}},
		{s.o.lbNS, []string{"sh", "-c", "conntrack -L -p tcp -s " + client.String() + " 2>/dev/null | grep -c TIME_WAIT"}},
		{s.o.lbNS, []string{"sh", "-c", "ipset save | grep -F -w -- " + client.String()}},
		{s.o.clientNS, []string{"sh", "-c", "ss -tan src " + client.String() + " | awk '{print $1}' | sort | uniq -c"}},
	}
	for _, nsAddr := range s.addrs {
		ns, _, _ := strings.Cut(nsAddr, "=")
		views = append(views, view{ns, []string{"sh", "-c", "nstat -az TcpExtListenDrops TcpExtListenOverflows TcpExtTCPTimeWaitOverflow; ss -tan dst " + client.String() + " | awk '{print $1}' | sort | uniq -c"}})
	}
	for _, v := range views {
		args := v.args
		fmt.Fprintf(&b, "--- in %s: ", v.ns)
		out, _ := exec.Command("ip", append([]string{"netns", "exec", v.ns}, args...)...).CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 40 {
			lines = append(lines[:40], fmt.Sprintf("... %d lines more", len(lines)-40))
		}
		fmt.Fprintf(&b, "%s:\n%s\n", strings.Join(args, " "), strings.Join(lines, "\n"))
	}
	return b.String()
}

// killWindow is how long after a backend is killed its clients may see
// refused or cut connections: health checks at 200ms with fall 2, the
// migration, and slack for a loaded machine.
const killWindow = 4 * time.Second

func (s *soak) excuse(src netip.Addr, backend string, start time.Time, err error) error {
	s.mu.Lock()
	killed, at := s.killed, s.killedAt
	s.mu.Unlock()
	if !at.IsZero() && start.Before(at.Add(killWindow)) && time.Since(at) < killWindow+5*time.Second && (backend == "" || backend == killed || killed == "") {
		s.refused.Add(1)
		return nil
	}
	return err
}

// chaos reloads the config every o.reloadEvery and kills a backend every
// o.killEvery, restoring it half-way to the next kill.
func (s *soak) chaos(ctx context.Context) {
	reload := time.NewTicker(s.o.reloadEvery)
	defer reload.Stop()
	kill := time.NewTicker(s.o.killEvery)
	defer kill.Stop()
	var restore <-chan time.Time
	names := make([]string, 0, len(s.addrs))
	for n := range s.addrs {
		names = append(names, n)
	}
	k := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload.C:
			if code, body, err := s.call(ctx, "POST", "/api/v1/reload", nil); err != nil || code != 200 {
				s.fail(fmt.Errorf("reload: %d %s %v", code, body, err))
			} else {
				fmt.Println("soak: reloaded")
			}
		case <-kill.C:
			name := names[k%len(names)]
			k++
			s.mu.Lock()
			s.killed, s.killedAt = name, time.Now()
			s.mu.Unlock()
			s.procs[name].Process.Kill()
			fmt.Println("soak: killed", name)
			restore = time.After(s.o.killEvery / 2)
		case <-restore:
			s.mu.Lock()
			name := s.killed
			s.killedAt = time.Now() // its clients move back (failback)
			s.mu.Unlock()
			if err := s.start(name); err != nil {
				s.fail(err)
			}
			fmt.Println("soak: restored", name)
		}
	}
}

// call makes an admin API request from inside the balancer namespace.
func (s *soak) call(ctx context.Context, method, path string, body any) (int, []byte, error) {
	hc := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dialIn(ctx, s.lb, netip.Addr{}, addr)
		},
		DisableKeepAlives: true,
	}}
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.o.admin+path, r)
	if err != nil {
		return 0, nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// api calls the API every second: status, a page of clients, and a
// client unpinned (it becomes new again).
func (s *soak) api(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	r := rand.New(rand.NewPCG(1, 2))
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, req := range []struct{ method, path string }{
			{"GET", "/api/v1/status"},
			{"GET", "/api/v1/services/web/clients?limit=50"},
			{"DELETE", "/api/v1/services/web/pins/" + clientAddr(s.o.pinned+r.IntN(s.o.clients-s.o.pinned)).String()},
		} {
			if code, body, err := s.call(ctx, req.method, req.path, nil); !over(ctx) && (err != nil || code != 200) {
				s.fail(fmt.Errorf("%s %s: %d %s %v", req.method, req.path, code, body, err))
			}
		}
	}
}

// watch reads the daemon's metrics every 5s and checks them against the
// baselines taken after the warm-up.
func (s *soak) watch(ctx context.Context) error {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	start := time.Now()
	var base map[string]float64
	excess := false // the last reading showed more pins than clients
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.failures:
			return err
		case <-t.C:
		}
		m, err := s.metrics(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("metrics: %w", err)
		}
		fill := 0.0
		if m["handoff_conntrack_max"] > 0 {
			fill = m["handoff_conntrack_entries"] / m["handoff_conntrack_max"]
		}
		fmt.Printf("soak: %s served %d rss %.0f MiB goroutines %.0f fds %.0f pins %.0f conntrack %.0f%%\n", time.Since(start).Round(time.Second),
			s.served.Load(), m["process_resident_memory_bytes"]/(1<<20), m["go_goroutines"], m["process_open_fds"], m["handoff_pins"], 100*fill)
		// A migration pins its clients to their new backend before it
		// unpins them from the old one: more pins than clients is a leak
		// only when the next reading still shows it.
		if m["handoff_pins"] > float64(s.o.clients) {
			if excess {
				return fmt.Errorf("%.0f pins for %d client addresses, twice in a row", m["handoff_pins"], s.o.clients)
			}
			excess = true
		} else {
			excess = false
		}
		if fill > 0.9 {
			return fmt.Errorf("the conntrack table is %.0f%% full: the load outgrew the host, not handoff (lower -rate)", 100*fill)
		}
		if time.Since(start) < s.o.warmup {
			continue
		}
		if base == nil {
			base = m
			continue
		}
		conns := float64(4 * s.o.workers)
		for _, b := range []struct {
			name  string
			limit float64
		}{
			{"process_resident_memory_bytes", s.o.rssGrowth*base["process_resident_memory_bytes"] + 64<<20},
			{"go_goroutines", 2*base["go_goroutines"] + conns + 50},
			{"process_open_fds", base["process_open_fds"] + conns + 50},
		} {
			if m[b.name] > b.limit {
				return fmt.Errorf("%s %.0f passed its bound %.0f (baseline %.0f)", b.name, m[b.name], b.limit, base[b.name])
			}
		}
	}
}

// metrics reads the gauges the watch needs; handoff_pins is summed over
// backends.
func (s *soak) metrics(ctx context.Context) (map[string]float64, error) {
	code, body, err := s.call(ctx, "GET", "/metrics", nil)
	if err != nil {
		return nil, err
	}
	if code != 200 {
		return nil, fmt.Errorf("status %d", code)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		switch name {
		case "process_resident_memory_bytes", "go_goroutines", "process_open_fds", "handoff_pins", "handoff_conntrack_entries", "handoff_conntrack_max":
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				return nil, errors.New("metrics: " + line)
			}
			out[name] += v
		}
	}
	return out, nil
}
