// Command handoff is a kernel-offload hybrid TCP load balancer.
//
// See README.md for the quickstart and docs/cli.md for the contract of every
// subcommand.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		var ex exitError
		if asExit(err, &ex) {
			if ex.msg != "" {
				fmt.Fprintln(os.Stderr, ex.msg)
			}
			os.Exit(ex.code)
		}
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
}
