//go:build !linux

package kernel

import "context"

// Preflight reports that the kernel data plane needs Linux.
func Preflight(ctx context.Context, o PreflightOptions) []Finding {
	return []Finding{{Check: "platform", Severity: SeverityFatal, Message: "the kernel data plane needs Linux; handoff runs in userspace mode here"}}
}
