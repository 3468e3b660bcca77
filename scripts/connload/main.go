// Command connload is scripts/bench-scale.sh's new-client load generator:
// like wrk with Connection: close, except that every connection comes from
// a source address no earlier connection of the run used. It walks the
// addresses of -from in order (the client namespace must own them all, e.g.
// through a local route: ip route add local 198.18.128.0/17 dev lo), sends
// one HTTP request per connection, reads the response to EOF, and stops
// after -d or when the addresses run out.
//
// It prints one line: connections completed, seconds, failed connections.
//
// Usage: connload -to HOST:PORT -from CIDR [-c 64] [-d 4s]
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	to := flag.String("to", "", "target HOST:PORT")
	from := flag.String("from", "", "source addresses (IPv4 CIDR), one per connection")
	conc := flag.Int("c", 64, "connections at once")
	dur := flag.Duration("d", 4*time.Second, "stop after this long")
	flag.Parse()
	pfx, err := netip.ParsePrefix(*from)
	if err != nil || !pfx.Addr().Is4() || *to == "" {
		fmt.Fprintln(os.Stderr, "usage: connload -to HOST:PORT -from IPv4-CIDR [-c N] [-d DURATION]")
		os.Exit(2)
	}
	target, err := net.ResolveTCPAddr("tcp", *to)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	pfx = pfx.Masked()
	base := pfx.Addr().As4()
	first := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	size := uint64(1) << (32 - pfx.Bits())
	// skip the prefix's first and last address
	var next atomic.Uint64
	next.Store(1)

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	deadline := start.Add(*dur)
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for time.Now().Before(deadline) {
				i := next.Add(1) - 1
				if i >= size-1 {
					return
				}
				a := first + uint32(i)
				src := net.IP{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}
				if err := request(src, target, buf, i); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	if e := firstErr.Load(); e != nil {
		fmt.Fprintln(os.Stderr, "connload: first error:", e)
	}
	fmt.Printf("%d %.4f %d\n", ok.Load(), el, failed.Load())
}

// request makes one connection from src, sends a GET for /c<i> and reads
// the response to EOF; it fails unless the response is a 200.
func request(src net.IP, to *net.TCPAddr, buf []byte, i uint64) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second, KeepAlive: -1}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := fmt.Appendf(buf[:0], "GET /c%d HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n", i)
	if _, err := c.Write(req); err != nil {
		return err
	}
	n, err := io.ReadAtLeast(c, buf, 12)
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200")) {
		return fmt.Errorf("from %s: unexpected response %q", src, buf[:n])
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		return err
	}
	return nil
}
