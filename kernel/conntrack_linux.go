package kernel

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/netnsutil"
)

// conntrackDir holds the connection tracking table's count and limit; the
// count is the opening thread's network namespace's.
const conntrackDir = "/proc/sys/net/netfilter/"

// ReadConntrack returns how full the connection tracking table of the
// network namespace at nsPath is ("" for the caller's), from
// nf_conntrack_count and nf_conntrack_max. Without the nf_conntrack
// module the files do not exist and the error wraps fs.ErrNotExist.
// `handoff doctor` and the daemon's overload detection call it.
func ReadConntrack(nsPath string) (dataplane.Conntrack, error) {
	if nsPath == "" {
		return readConntrack()
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return dataplane.Conntrack{}, fmt.Errorf("netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	return conntrackIn(ns)
}

// Conntrack returns how full the connection tracking table of the data
// plane's namespace is (ReadConntrack).
func (d *Dataplane) Conntrack() (dataplane.Conntrack, error) {
	if !d.ns.IsOpen() {
		return readConntrack()
	}
	return conntrackIn(d.ns)
}

func conntrackIn(ns netns.NsHandle) (c dataplane.Conntrack, err error) {
	err = netnsutil.Do(ns, func() error {
		c, err = readConntrack()
		return err
	})
	return c, err
}

// readConntrack reads the table of the calling thread's namespace.
func readConntrack() (dataplane.Conntrack, error) {
	var c dataplane.Conntrack
	for _, f := range []struct {
		name string
		v    *int
	}{{"nf_conntrack_count", &c.Count}, {"nf_conntrack_max", &c.Max}} {
		b, err := os.ReadFile(conntrackDir + f.name)
		if err != nil {
			return c, fmt.Errorf("conntrack: %w", err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return c, fmt.Errorf("conntrack: %s: %w", f.name, err)
		}
		*f.v = n
	}
	return c, nil
}
