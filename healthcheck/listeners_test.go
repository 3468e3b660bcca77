package healthcheck

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
)

// listenerEnv makes the test binary a backend process for
// TestCPU1000Backends: TestMain runs serveListeners instead of the tests.
const listenerEnv = "HANDOFF_HEALTHCHECK_LISTENERS"

// serveListeners opens n (a decimal string) loopback listeners that close
// every connection at once, prints "listening ADDR" for each, and serves
// them until stdin closes. It returns the process's exit code.
func serveListeners(n string) int {
	count, err := strconv.Atoi(n)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", listenerEnv, n, err)
		return 2
	}
	lc := net.ListenConfig{KeepAlive: -1}
	for range count {
		ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer ln.Close()
		fmt.Printf("listening %s\n", ln.Addr())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}
