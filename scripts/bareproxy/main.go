// Command bareproxy is the reference that scripts/bench.sh measures handoff's
// userspace mode against: the minimal Go splice proxy issue 3 quotes.
// Each connection gets two goroutines running io.Copy between the raw
// *net.TCPConn values (which splices on Linux) and half-closes on EOF.
// Nothing else: no timeouts, limits, classification or pins.
//
// Usage: bareproxy LISTEN BACKEND ... (pairs of host:port)
package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 || len(args)%2 != 0 {
		fmt.Fprintln(os.Stderr, "usage: bareproxy LISTEN BACKEND [LISTEN BACKEND ...]")
		os.Exit(2)
	}
	for i := 0; i < len(args); i += 2 {
		ln, err := net.Listen("tcp", args[i])
		if err != nil {
			log.Fatal(err)
		}
		go serve(ln, args[i+1])
	}
	select {}
}

func serve(ln net.Listener, backend string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Print(err)
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: no busy loop
			continue
		}
		go proxy(c.(*net.TCPConn), backend)
	}
}

func proxy(client *net.TCPConn, backend string) {
	defer client.Close()
	b, err := net.Dial("tcp", backend)
	if err != nil {
		log.Print(err)
		return
	}
	be := b.(*net.TCPConn)
	defer be.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(client, be)
		client.CloseWrite()
		close(done)
	}()
	io.Copy(be, client)
	be.CloseWrite()
	<-done
}
