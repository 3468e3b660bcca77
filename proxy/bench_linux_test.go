package proxy_test

import (
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

// BenchmarkSplice measures proxy throughput over loopback. A peer process
// runs the client and the backend, so this process's CPU time (getrusage) is
// the proxy's alone, reported per GB moved. "userspace-copy" is a naive
// proxy for comparison: io.CopyBuffer through a 32 KiB buffer each way.
func BenchmarkSplice(b *testing.B) {
	for _, dir := range []string{"up", "both"} {
		for _, impl := range []string{"splice", "userspace-copy"} {
			b.Run(dir+"/"+impl, func(b *testing.B) { benchSplice(b, dir, impl) })
		}
	}
}

func benchSplice(b *testing.B, dir, impl string) {
	const chunk = 1 << 20
	perOp := int64(chunk)
	if dir == "both" {
		perOp *= 2
	}
	b.SetBytes(perOp)
	p := startPeer(b)
	var addr string
	var results chan result
	if impl == "splice" {
		tp := startProxy(b, p.backend, proxyConfig{route: proxy.Route{Idle: time.Minute}})
		addr, results = tp.addr.String(), tp.results
	} else {
		ln := listen(b, "")
		defer ln.Close()
		addr = ln.Addr().String()
		go func() {
			client, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			backend, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(p.backend))
			if err != nil {
				client.Close()
				return
			}
			copyProxy(client, backend)
		}()
	}

	cpu0 := cpuTime(b)
	b.ResetTimer()
	p.send(b, "stream %s %d %s", addr, int64(b.N)*chunk, dir)
	p.expect(b, "done")
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	if results != nil {
		if r := <-results; r.err != nil || r.st.ClientToBackend+r.st.BackendToClient != int64(b.N)*perOp {
			b.Fatalf("proxied %+v, %v", r.st, r.err)
		}
	}
	gb := float64(int64(b.N)*perOp) / 1e9
	b.ReportMetric(cpu.Seconds()*1e3/gb, "cpu-ms/GB")
}

// BenchmarkProxyConn measures the proxy's cost per short connection: accept,
// connect to the backend, a 64-byte request and a 145-byte response with
// the backend closing first, close. The peer process runs 64 clients and
// the backend, so this process's CPU time is the proxy's alone.
// "handoff" hands each connection to a goroutine that proxies it with
// Conn.Proxy, the way a connection classified first goes.
func BenchmarkProxyConn(b *testing.B) {
	for _, mode := range []string{"at-once", "handoff"} {
		b.Run(mode, func(b *testing.B) {
			p := startPeer(b)
			tp := startProxy(b, p.backend, proxyConfig{route: proxy.Route{Idle: time.Minute}, handoff: mode == "handoff"})
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			b.ResetTimer()
			p.send(b, "churn %s %d 64", tp.addr, b.N)
			p.expect(b, "done")
			b.StopTimer()
			cpu := cpuTime(b) - cpu0
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/conn")
		})
	}
}

// copyProxy is the baseline: the usual userspace proxy loop, with the conns
// hidden behind io.Reader/io.Writer so that no splice happens.
func copyProxy(client, backend *net.TCPConn) {
	var wg sync.WaitGroup
	half := func(dst, src *net.TCPConn) {
		defer wg.Done()
		io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, make([]byte, 32<<10))
		dst.CloseWrite()
	}
	wg.Add(2)
	go half(backend, client)
	go half(client, backend)
	wg.Wait()
	client.Close()
	backend.Close()
}

// cpuTime returns this process's user plus system CPU time.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
