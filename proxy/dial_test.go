package proxy_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

func TestDial(t *testing.T) {
	ln := listen(t, "")
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	c, err := proxy.Dial(context.Background(), addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ln.Close()
	if _, err := proxy.Dial(context.Background(), addr, time.Second); err == nil {
		t.Fatal("Dial to a closed port succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := proxy.Dial(ctx, addr, time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a cancelled context: %v", err)
	}
}
