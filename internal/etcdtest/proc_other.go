//go:build !linux

package etcdtest

import "os/exec"

// dieWithParent does nothing: Pdeathsig is Linux's (t.Cleanup still kills
// the server).
func dieWithParent(*exec.Cmd) {}
