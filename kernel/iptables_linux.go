package kernel

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/handoff-lb/handoff/internal/netnsutil"
)

// table is an iptables table.
type table string

const (
	natTable    table = "nat"
	filterTable table = "filter"
	mangleTable table = "mangle"
)

// allTables, as the table to save, saves every table.
const allTables table = ""

// tables are the tables handoff writes, in the order a sync writes them:
// mangle marks what nat then dispatches.
var tables = []table{mangleTable, natTable, filterTable}

// iptables runs iptables-save and iptables-restore for one address family.
// Implementations are safe for concurrent use.
type iptables interface {
	// save returns the iptables-save text of t (empty when the table does
	// not exist; every table for allTables), with [packets:bytes]
	// counters when counters is set.
	save(ctx context.Context, t table, counters bool) ([]byte, error)
	// restore applies data with iptables-restore --noflush: all of it or,
	// on error, none of it. A failing line is reported as *restoreError.
	restore(ctx context.Context, data []byte) error
}

// restoreError is a failed iptables-restore.
type restoreError struct {
	bin  string
	line int    // the failing input line, 1-based; 0 when unknown
	msg  string // the tool's complaint, on one line
	err  error
}

func (e *restoreError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("%s: line %d: %s", e.bin, e.line, e.msg)
	}
	return fmt.Sprintf("%s: %s", e.bin, e.msg)
}

func (e *restoreError) Unwrap() error { return e.err }

// restoreLineRE finds the failing line in the complaints of the legacy
// ("line 3 failed") and nf_tables ("Error occurred at line: 3", "line 3:
// CHAIN_DEL failed") variants of iptables-restore.
var restoreLineRE = regexp.MustCompile(`line:? (\d+)`)

// execTables is iptables run as commands in a network namespace.
type execTables struct {
	fam family
	ns  netns.NsHandle // not open: the caller's namespace
}

func (e execTables) bin(tool string) string {
	if e.fam == ipv6 {
		return "ip6tables-" + tool
	}
	return "iptables-" + tool
}

func (e execTables) save(ctx context.Context, t table, counters bool) ([]byte, error) {
	var args []string
	if t != allTables {
		args = append(args, "-t", string(t))
	}
	if counters {
		args = append(args, "-c")
	}
	out, stderr, err := runIn(ctx, e.ns, nil, e.bin("save"), args...)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", e.bin("save"), strings.Join(args, " "), err, oneLine(stderr))
	}
	return out, nil
}

func (e execTables) restore(ctx context.Context, data []byte) error {
	// -w waits for the xtables lock (legacy iptables); --noflush keeps
	// every chain the input does not declare.
	_, stderr, err := runIn(ctx, e.ns, data, e.bin("restore"), "--noflush", "-w", "5")
	if err == nil {
		return nil
	}
	re := &restoreError{bin: e.bin("restore"), msg: oneLine(stderr), err: err}
	if m := restoreLineRE.FindSubmatch(stderr); m != nil {
		re.line, _ = strconv.Atoi(string(m[1]))
	}
	if re.msg == "" {
		re.msg = err.Error()
	}
	return re
}

// runIn runs a command in ns (the caller's namespace when ns is not open)
// and returns its stdout and stderr.
func runIn(ctx context.Context, ns netns.NsHandle, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	// The child inherits the namespace of the thread that forks it.
	if err := inNetNS(ns, cmd.Start); err != nil {
		return nil, nil, err
	}
	err = cmd.Wait()
	return out.Bytes(), errb.Bytes(), err
}

// inNetNS runs fn on an OS thread switched into ns, or directly when ns is
// not open.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	return netnsutil.Do(ns, fn)
}

// oneLine joins the non-empty lines of a tool's output with "; ".
func oneLine(b []byte) string {
	var parts []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "Try `") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}
