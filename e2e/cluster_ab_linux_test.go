package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// pairHost is the processes of one host of the active/backup pair.
type pairHost struct {
	ns         *nstest.NS
	handoff    *daemon
	keepalived *exec.Cmd
	conntrackd *exec.Cmd
	ctdConf    string
}

// startProc runs argv in ns until the test ends (or it is killed).
func startProc(t *testing.T, ns *nstest.NS, env []string, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	var logs testenv.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", argv[0], err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the process group: keepalived's children too
		<-done
		if t.Failed() {
			t.Logf("%s in %s:\n%s", argv[0], ns.Name, logs.String())
		}
	})
	return cmd
}

// pairFile writes deploy/cluster/name for host n (1 or 2) into dir, with
// the changes its comments give for lb2 and this test's paths.
func pairFile(t *testing.T, dir, name string, n int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "deploy", "cluster", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	ctl := filepath.Join(dir, fmt.Sprintf("conntrackd-lb%d", n))
	s = strings.ReplaceAll(s, "/etc/handoff/cluster/handoff-notify.sh", filepath.Join(dir, "handoff-notify.sh"))
	s = strings.ReplaceAll(s, "/run/handoff-conntrackd.lock", ctl+".lock")
	s = strings.ReplaceAll(s, "/run/handoff-conntrackd.ctl", ctl+".ctl")
	if n == 2 {
		s = strings.ReplaceAll(s, "router_id lb1", "router_id lb2")
		s = strings.ReplaceAll(s, "priority 150", "priority 100")
		s = strings.ReplaceAll(s, "IPv4_address 198.18.20.1 ", "IPv4_address @SELF@ ")
		s = strings.ReplaceAll(s, "IPv4_Destination_Address 198.18.20.2", "IPv4_Destination_Address 198.18.20.1")
		s = strings.ReplaceAll(s, "@SELF@", "198.18.20.2")
	}
	p := filepath.Join(dir, fmt.Sprintf("lb%d-%s", n, name))
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClusterActiveBackup: the pair of deploy/cluster/ with the real
// keepalived and conntrackd. The backup listens on the VIP before it holds
// it (IP_FREEBIND). Pins made on the active host reach the backup through
// etcd, also those made while etcd was down and those a backend's death
// moved during replication. When the active host dies (links cut,
// processes SIGKILLed), a long-lived kernel-forwarded echo session goes
// on through the backup, the VIP answers again within 3 s, and every
// pinned client's next connection reaches its backend in the backup's
// kernel: no reset, no new classification.
func TestClusterActiveBackup(t *testing.T) {
	for _, bin := range []string{"keepalived", "conntrackd"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Skipf(t, "needs %s (apt-get install %s)", bin, bin)
		}
	}
	l := newClusterLab(t, 20)
	dir, err := os.MkdirTemp("/run", "hoclu-") // keepalived runs scripts only from paths no other user can write
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	notify, err := os.ReadFile("../deploy/cluster/handoff-notify.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "handoff-notify.sh"), notify, 0o700); err != nil {
		t.Fatal(err)
	}
	vipAddr := netip.MustParseAddr("198.18.10.100")
	web := netip.AddrPortFrom(vipAddr, 80)

	var hosts [2]*pairHost
	for i, lb := range l.lb {
		n := i + 1
		h := &pairHost{ns: lb, ctdConf: pairFile(t, dir, "conntrackd.conf", n)}
		hosts[i] = h
		// conntrackd carries the TCP state but not every window detail:
		// the new master must not call the moved flows' packets invalid.
		lb.Run(t, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_be_liberal=1")
		h.conntrackd = startProc(t, lb, nil, "conntrackd", "-C", h.ctdConf)
		h.handoff = startDaemon(t, lb, writeConfig(t, yaml(clusterConfig(n, vipAddr, false))), web)
	}
	if out := l.lb[1].Run(t, "ip", "-4", "addr"); strings.Contains(out, vipAddr.String()) {
		t.Fatal("lb2 holds the VIP before keepalived runs")
	}
	startKeepalived := func(n int) {
		h := hosts[n-1]
		conf := pairFile(t, dir, "keepalived.conf", n)
		pre := filepath.Join(dir, fmt.Sprintf("lb%d", n))
		h.keepalived = startProc(t, h.ns, []string{"CONNTRACKD_CONFIG=" + h.ctdConf}, "keepalived", "--dont-fork", "--log-console", "--vrrp",
			"-f", conf, "-p", pre+"-keepalived.pid", "-r", pre+"-vrrp.pid", "-c", pre+"-checkers.pid")
	}
	holds := func(ns *nstest.NS) bool {
		out, _ := ns.RunErr("ip", "-4", "addr", "show", "dev", "front0")
		return strings.Contains(out, vipAddr.String()+"/24")
	}
	startKeepalived(1)
	waitUntil(t, time.Now(), 10*time.Second, "lb1 holding the VIP", func() bool { return holds(l.lb[0]) })
	startKeepalived(2)
	time.Sleep(time.Second) // lb2 settles as backup

	want := map[netip.Addr]string{}
	pin := func(phase string, from, to int) {
		t.Helper()
		for _, c := range l.clients[from:to] {
			be, err := say(l.cli, c, web, "")
			if err != nil {
				t.Fatalf("%s: client %s: %v", phase, c, err)
			}
			want[c] = be
		}
	}
	pin("etcd up", 0, 8)
	samePins(t, l, 8, 3*time.Second)

	l.etcd.Stop()
	pin("etcd down", 8, 12)
	l.etcd.Restart()
	samePins(t, l, 12, 10*time.Second)

	var wg sync.WaitGroup
	wg.Go(func() { pin("backend dying", 12, 18) })
	time.Sleep(50 * time.Millisecond)
	l.bk.Run(t, "ip", "addr", "del", "198.19.1.13/24", "dev", "back") // be3's host is gone
	wg.Wait()
	waitUntil(t, time.Now(), 5*time.Second, "no pin left on be3, the same pins on both hosts", func() bool {
		a, b := pinsOf(t, l.lb[0]), pinsOf(t, l.lb[1])
		for k := range a {
			if strings.Contains(k, "-be3 ") {
				return false
			}
		}
		return len(a) == 18 && equalMaps(a, b)
	})
	for c, be := range want {
		if be == "be3" {
			if want[c], err = say(l.cli, c, web, ""); err != nil {
				t.Fatalf("client %s of the dead backend: %v", c, err)
			}
		}
	}

	// A long-lived session of a pinned client: kernel-forwarded by lb1.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	long := l.clients[0]
	conn, err := l.cli.DialFrom(ctx, long, "tcp", web.String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	echo := func(msg string) error {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(conn, "%s\n", msg); err != nil {
			return err
		}
		got, err := rd.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.TrimSpace(got) != msg {
			return fmt.Errorf("echo %q, want %q", got, msg)
		}
		return nil
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	greeting, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, want[long]+" "+long.String()) {
		t.Fatalf("the session's greeting %q (%v), want %s seeing the client's own address", greeting, err, want[long])
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Now(), 10*time.Second, "the session in lb2's conntrackd cache", func() bool {
		out, _ := l.lb[1].RunErr("conntrackd", "-C", hosts[1].ctdConf, "-e")
		return strings.Contains(out, "src="+long.String()) && strings.Contains(out, "dport=80")
	})
	before := classified(t, l.lb[1])

	// lb1 dies: its links are cut and its processes killed.
	killed := time.Now()
	for _, dev := range []string{"front0", "back0", "sync0"} {
		l.lb[0].Run(t, "ip", "link", "set", dev, "down")
	}
	for _, cmd := range []*exec.Cmd{hosts[0].keepalived, hosts[0].conntrackd, hosts[0].handoff.cmd} {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Process.Kill()
	}
	probe := l.clients[1]
	for {
		if be, err := say(l.cli, probe, web, ""); err == nil {
			if be != want[probe] {
				t.Errorf("client %s reached %s through lb2, %s before", probe, be, want[probe])
			}
			break
		}
		if time.Since(killed) > 3*time.Second {
			t.Fatalf("the VIP did not answer within 3s of the kill; lb2: %s", l.lb[1].Run(t, "ip", "-4", "addr"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the VIP answered %v after the kill", time.Since(killed).Round(time.Millisecond))
	if !holds(l.lb[1]) {
		t.Error("lb2 does not hold the VIP")
	}
	if err := echo("after"); err != nil {
		t.Fatalf("the long-lived session broke in the failover: %v", err)
	}
	for c, be := range want {
		got, err := say(l.cli, c, web, "")
		if err != nil {
			t.Errorf("pinned client %s after the failover: %v", c, err)
		} else if got != be {
			t.Errorf("pinned client %s reached %s after the failover, %s before", c, got, be)
		}
	}
	if after := classified(t, l.lb[1]); after["web"] != before["web"] {
		t.Errorf("lb2 classified %d new clients after the failover; every client was pinned", after["web"]-before["web"])
	}
	if err := echo("still"); err != nil {
		t.Fatalf("the long-lived session: %v", err)
	}
}
