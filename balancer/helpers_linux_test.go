package balancer_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/kernel"
)

// kernelService is a source-classified service on listen, whose new
// clients' first connections are reset, over n backends be1, be2, ... on
// port 80 of the lab's backend hosts, with health checks off.
func kernelService(name string, listen netip.AddrPort, n, maxClients int) config.Service {
	sc := config.Service{
		Name: name, Listen: listen, FirstConnection: config.FirstReset, ClientTTL: time.Hour,
		MaxClients: maxClients, Classify: config.ClassifySource, OnUnclassified: "default", OnBackendDown: "rehash",
		Timeouts: config.Timeouts{Connect: time.Second}, MaxConnections: 10000, ProxyProtocol: "off",
		Health: config.Health{Check: config.CheckNone},
		Pools:  []config.Pool{{Name: "default", Balance: config.BalanceMaglev}},
	}
	for i := range n {
		sc.Pools[0].Backends = append(sc.Pools[0].Backends, config.Backend{
			Name: fmt.Sprintf("be%d", i+1), Address: netip.AddrPortFrom(nstest.Backend4(i), 80), Weight: 1})
	}
	return sc
}

// runKernelEngine runs a kernel-mode engine with opts over a kernel data
// plane in ns, its listeners opened in ns, until it serves (see runEngine).
// Once the engine stopped, the data plane's kernel objects are removed and
// it is closed.
func runKernelEngine(t testing.TB, ns *nstest.NS, opts balancer.Options) (*running, *kernel.Dataplane) {
	t.Helper()
	if opts.Logger == nil {
		log := logrus.New()
		log.SetLevel(logrus.WarnLevel)
		opts.Logger = logrus.NewEntry(log)
	}
	dp, err := kernel.New(context.Background(), kernel.Options{NetNS: ns.Path, Logger: opts.Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		kernel.Cleanup(context.Background(), kernel.Options{NetNS: ns.Path})
		dp.Close()
	})
	opts.Dataplane, opts.Kernel = dp, true
	opts.Listen = func(ctx context.Context, network, addr string) (ln net.Listener, err error) {
		err = ns.Do(func() error { ln, err = net.Listen(network, addr); return err })
		return ln, err
	}
	return runEngine(t, opts), dp
}
