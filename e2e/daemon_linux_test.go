package e2e

import (
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// raceReport starts what the race detector prints when it finds a race.
const raceReport = "WARNING: DATA RACE"

// daemon is a running `handoff` process inside a namespace, with its
// output captured.
type daemon struct {
	cmd  *exec.Cmd
	out  testenv.Buffer
	done chan struct{}
}

// log returns everything the daemon wrote so far.
func (d *daemon) log() string { return d.out.String() }

// launch starts argv (the handoff binary, its arguments, and before them
// a command prefix such as setpriv that takes something from the daemon)
// in ns and returns at once. When the test ends the daemon gets SIGTERM,
// and a data race it reported fails the test.
func launch(t *testing.T, ns *nstest.NS, argv ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...), done: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = &d.out, &d.out
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		if log := d.log(); strings.Contains(log, raceReport) {
			t.Errorf("handoff reported a data race:\n%s", log)
		} else if t.Failed() {
			t.Logf("handoff log:\n%s", log)
		}
	})
	return d
}

// startDaemon runs `handoff run -c cfgPath ARGS...` in ns and waits until
// it serves vip (waitServing).
func startDaemon(t *testing.T, ns *nstest.NS, cfgPath string, vip netip.AddrPort, args ...string) *daemon {
	t.Helper()
	d := launch(t, ns, append([]string{handoffBin, "run", "-c", cfgPath}, args...)...)
	d.waitServing(t, ns, vip)
	return d
}

// waitServing waits until the daemon listens on vip in ns and logged
// "serving": the listeners open before the data plane is synced and the
// services registered with the engine, so a listening socket alone does
// not mean that the API shows them yet.
func (d *daemon) waitServing(t *testing.T, ns *nstest.NS, vip netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("handoff exited early:\n%s", d.log())
		default:
		}
		if logs := d.log(); listening(ns, vip) &&
			(strings.Contains(logs, "msg=serving") || strings.Contains(logs, `"msg":"serving"`)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("handoff never listened on %s:\n%s", vip, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends sig and waits for the daemon to exit (SIGKILL after 10s).
func (d *daemon) stop(sig syscall.Signal) {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

// listening tells whether something in ns listens on addr.
func listening(ns *nstest.NS, addr netip.AddrPort) bool {
	out, _ := ns.RunErr("ss", "-Hltn", "src", addr.String())
	return strings.Contains(out, "LISTEN")
}

// waitListen waits up to 10s until something in ns listens on every addr.
func waitListen(t *testing.T, ns *nstest.NS, addrs ...netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		for !listening(ns, a) {
			if time.Now().After(deadline) {
				t.Fatalf("nothing listens on %s", a)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// result is how a handoff command ended.
type result struct {
	stdout, stderr string
	code           int
}

// lastLine is the last line the command wrote to stderr.
func (r result) lastLine() string {
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	return lines[len(lines)-1]
}

// handoff runs `handoff ARGS...` to its end in ns, or on the host when ns
// is nil.
func handoff(t *testing.T, ns *nstest.NS, args ...string) result {
	t.Helper()
	return run(t, ns, append([]string{handoffBin}, args...)...)
}

// run runs argv (see launch) to its end in ns, or on the host when ns is
// nil. A data race it reported fails the test.
func run(t *testing.T, ns *nstest.NS, argv ...string) result {
	t.Helper()
	if ns != nil {
		argv = append([]string{"ip", "netns", "exec", ns.Name}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := result{stdout: o.String(), stderr: e.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.stderr, raceReport) {
		t.Errorf("%s reported a data race:\n%s", strings.Join(argv, " "), r.stderr)
	}
	return r
}

// logField matches one key=value of logrus' text format.
var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S*)`)

// lines returns the daemon's log lines with message msg whose fields
// include every key-value pair of want (a value "*": any), as field maps.
func (d *daemon) lines(msg string, want ...string) []map[string]string {
	var out []map[string]string
	for _, line := range strings.Split(d.log(), "\n") {
		f := map[string]string{}
		for _, m := range logField.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			f[m[1]] = v
		}
		if f["msg"] != msg {
			continue
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			if v, has := f[want[i]]; !has || (want[i+1] != "*" && v != want[i+1]) {
				match = false
			}
		}
		if match {
			out = append(out, f)
		}
	}
	return out
}

// logSettle is how long a line the daemon wrote may take to reach its
// captured log (a pipe and a copying goroutine) after the test saw its
// effect, such as a reset; tests wait that long before counting lines.
const logSettle = 100 * time.Millisecond

// waitLines waits up to within for n lines matching msg and want (see
// lines), then logSettle more so that a duplicate would show, and returns
// the matching lines.
func (d *daemon) waitLines(within time.Duration, n int, msg string, want ...string) []map[string]string {
	for deadline := time.Now().Add(within); len(d.lines(msg, want...)) < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(logSettle)
	return d.lines(msg, want...)
}

// waitUntil waits until cond holds, at most within after start, and
// returns how long after start it held.
func waitUntil(t *testing.T, start time.Time, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
