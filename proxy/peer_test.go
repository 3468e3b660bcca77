package proxy_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// peerEnv makes the test binary run as a peer: the far ends (clients and a
// backend) of proxied connections, in their own process, so that the test
// process holds only the proxy's sockets and its memory, file descriptors
// and CPU time measure the proxy alone.
//
// The peer prints "backend ADDR", then obeys lines on stdin:
//
//	idle PROXY N            open N connections through PROXY, move one byte each way; "ready"
//	stream PROXY BYTES DIR  send BYTES through one connection, DIR up|down|both; "done"
//	release                 close the idle connections; "released"
//	churn PROXY N C         N request/response connections through PROXY, C at a
//	                        time; the backend answers and closes first; "done"
//
// and exits at EOF.
const peerEnv = "HANDOFF_PROXY_TEST_PEER"

func runPeer() int {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		return 1
	}
	fmt.Printf("backend %s\n", ln.Addr())
	var held []*net.TCPConn
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		var reply string
		switch {
		case len(f) == 3 && f[0] == "idle":
			n, _ := strconv.Atoi(f[2])
			held, err = peerIdle(ln, f[1], n)
			reply = "ready"
		case len(f) == 4 && f[0] == "stream":
			n, _ := strconv.ParseInt(f[2], 10, 64)
			err = peerStream(ln, f[1], n, f[3])
			reply = "done"
		case len(f) == 4 && f[0] == "churn":
			n, _ := strconv.Atoi(f[2])
			c, _ := strconv.Atoi(f[3])
			err = peerChurn(ln, f[1], n, c)
			reply = "done"
		case len(f) == 1 && f[0] == "release":
			for _, c := range held {
				c.Close()
			}
			held = nil
			reply = "released"
		default:
			err = fmt.Errorf("bad command %q", in.Text())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "peer:", err)
			return 1
		}
		fmt.Println(reply)
	}
	return 0
}

func peerIdle(ln *net.TCPListener, proxyAddr string, n int) ([]*net.TCPConn, error) {
	clients := make([]*net.TCPConn, 0, n)
	backends := make([]*net.TCPConn, 0, n)
	accepted := make(chan error, 1)
	go func() {
		for range n {
			c, err := ln.AcceptTCP()
			if err != nil {
				accepted <- err
				return
			}
			backends = append(backends, c)
		}
		accepted <- nil
	}()
	addr, _ := net.ResolveTCPAddr("tcp", proxyAddr)
	for range n {
		c, err := net.DialTCP("tcp", nil, addr)
		if err != nil {
			return nil, err
		}
		clients = append(clients, c)
	}
	if err := <-accepted; err != nil {
		return nil, err
	}
	one, buf := []byte{1}, make([]byte, 1)
	for _, c := range clients {
		c.Write(one)
	}
	for _, c := range backends {
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		c.Write(one)
	}
	for _, c := range clients {
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
	}
	return append(clients, backends...), nil
}

func peerStream(ln *net.TCPListener, proxyAddr string, n int64, dir string) error {
	addr, _ := net.ResolveTCPAddr("tcp", proxyAddr)
	client, err := net.DialTCP("tcp", nil, addr)
	if err != nil {
		return err
	}
	defer client.Close()
	backend, err := ln.AcceptTCP()
	if err != nil {
		return err
	}
	defer backend.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	pump := func(from, to *net.TCPConn, send bool) {
		wg.Go(func() {
			if send {
				errs <- sendN(from, n)
			} else {
				from.CloseWrite()
			}
		})
		wg.Go(func() {
			got, err := sinkAll(to)
			if err == nil && send && got != n {
				err = fmt.Errorf("received %d of %d bytes", got, n)
			}
			errs <- err
		})
	}
	pump(client, backend, dir == "up" || dir == "both")
	pump(backend, client, dir == "down" || dir == "both")
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// peerChurn runs n short connections through proxy, c at a time, like an
// HTTP/1.0 exchange: the client sends a 64-byte request and reads to EOF;
// the backend reads the request, answers 145 bytes and closes first.
func peerChurn(ln *net.TCPListener, proxyAddr string, n, c int) error {
	addr, _ := net.ResolveTCPAddr("tcp", proxyAddr)
	errs := make(chan error, 1)
	fail := func(err error) { // keeps the first error; never blocks
		select {
		case errs <- err:
		default:
		}
	}
	var backends sync.WaitGroup
	backends.Go(func() {
		for range n {
			b, err := ln.AcceptTCP()
			if err != nil {
				fail(err)
				return
			}
			backends.Go(func() {
				defer b.Close()
				req := make([]byte, 64)
				if _, err := io.ReadFull(b, req); err != nil {
					fail(fmt.Errorf("backend: %w", err))
					return
				}
				b.Write(make([]byte, 145))
			})
		}
	})
	var next sync.Mutex
	left := n
	var clients sync.WaitGroup
	for range c {
		clients.Go(func() {
			req, resp := make([]byte, 64), make([]byte, 512)
			for {
				next.Lock()
				if left == 0 {
					next.Unlock()
					return
				}
				left--
				next.Unlock()
				conn, err := net.DialTCP("tcp", nil, addr)
				if err != nil {
					fail(err)
					return
				}
				conn.Write(req)
				got, err := io.ReadFull(conn, resp)
				conn.Close()
				if got != 145 || !errors.Is(err, io.ErrUnexpectedEOF) {
					fail(fmt.Errorf("client read %d bytes, %v; want 145 and EOF", got, err))
					return
				}
			}
		})
	}
	clients.Wait()
	// Clients that all succeeded were all accepted; after a failure, stop
	// waiting for connections that will not come.
	ln.SetDeadline(time.Now())
	backends.Wait()
	ln.SetDeadline(time.Time{})
	close(errs)
	return <-errs // nil when closed and empty
}

var peerBuf = make([]byte, 1<<20)

func sendN(c *net.TCPConn, n int64) error {
	for n > 0 {
		w, err := c.Write(peerBuf[:min(n, int64(len(peerBuf)))])
		if err != nil {
			return err
		}
		n -= int64(w)
	}
	return c.CloseWrite()
}

func sinkAll(c *net.TCPConn) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := c.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
