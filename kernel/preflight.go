package kernel

import (
	"fmt"
	"strings"
)

// Severity grades a preflight Finding.
type Severity string

// Severities. A fatal finding stops kernel mode from starting (auto mode
// runs in userspace instead); a warning is logged.
const (
	SeverityOK    Severity = "ok"
	SeverityWarn  Severity = "warn"
	SeverityFatal Severity = "fatal"
)

// Finding is one result of Preflight: what was checked, how it stands,
// and, when it is not ok, the command that fixes it.
type Finding struct {
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix,omitempty"`
}

// PreflightOptions say what the host must offer: the namespace and what
// the config uses.
type PreflightOptions struct {
	// NetNS is the path of the network namespace to check; "" is the
	// caller's. Sysctls under net are per namespace; modules are not.
	NetNS string
	// IPv6 is set when a service listens on IPv6: IPv6 forwarding is then
	// required too.
	IPv6 bool
	// HoldSYNs is set when a service classifies by source: its first SYNs
	// wait in an NFQUEUE.
	HoldSYNs bool
	// Transparent is set when first connections are dialed from the
	// clients' addresses: policy routing and connection marks.
	Transparent bool
	// PinCapacity is how many pins the sets may hold in all: each
	// service's max_clients times its backends. Each pinned client has at
	// least one flow in the conntrack table while it connects.
	PinCapacity int
}

// Fatal returns an error naming the fatal findings of fs and their fixes,
// or nil when there is none.
func Fatal(fs []Finding) error {
	var msgs []string
	for _, f := range fs {
		if f.Severity == SeverityFatal {
			m := f.Message
			if f.Fix != "" {
				m += " (fix: " + f.Fix + ")"
			}
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("kernel mode unavailable: %s", strings.Join(msgs, "; "))
}
