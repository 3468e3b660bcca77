package proxy_test

import (
	"context"
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
	ln := listen(b, "")
	defer ln.Close()
	p.send(b, "stream %s %d %s", ln.Addr(), int64(b.N)*chunk, dir)
	client, err := ln.AcceptTCP()
	if err != nil {
		b.Fatal(err)
	}
	backend, err := proxy.Dial(context.Background(), p.backend, time.Second)
	if err != nil {
		b.Fatal(err)
	}

	cpu0 := cpuTime(b)
	b.ResetTimer()
	if impl == "splice" {
		st, err := proxy.Splice(context.Background(), client, backend, proxy.SpliceOptions{Idle: time.Minute})
		if err != nil || st.ClientToBackend+st.BackendToClient != int64(b.N)*perOp {
			b.Fatalf("Splice = %+v, %v", st, err)
		}
	} else {
		copyProxy(client, backend)
	}
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	p.expect(b, "done")
	gb := float64(int64(b.N)*perOp) / 1e9
	b.ReportMetric(cpu.Seconds()*1e3/gb, "cpu-ms/GB")
}

// BenchmarkProxyConn measures the proxy's cost per short connection: accept,
// Dial, Splice of a 64-byte request and a 145-byte response with the
// backend closing first, close. The peer process runs 64 clients and the
// backend, so this process's CPU time is the proxy's alone.
func BenchmarkProxyConn(b *testing.B) {
	p := startPeer(b)
	ln := listen(b, "")
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			go func() {
				bc, err := proxy.Dial(context.Background(), p.backend, time.Second)
				if err != nil {
					c.Close()
					b.Error(err)
					return
				}
				proxy.Splice(context.Background(), c, bc, proxy.SpliceOptions{Idle: time.Minute})
			}()
		}
	}()
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	p.send(b, "churn %s %d 64", ln.Addr(), b.N)
	p.expect(b, "done")
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	ln.Close()
	<-done
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/conn")
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
