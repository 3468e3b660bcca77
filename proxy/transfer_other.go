//go:build !linux

package proxy

import (
	"net"
	"sync"
)

// bufPool holds the copy buffers; a direction takes one only while bytes are
// in flight.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// pump moves one direction's bytes through a pooled buffer: it waits until
// src is readable without a buffer (readiness), then reads what src holds
// into one, so a waiting direction holds no buffer. A pump is used by one
// goroutine.
type pump struct {
	src, dst *net.TCPConn
	r        *readiness
	buf      *[]byte // non-nil while bytes are in flight
	held     []byte  // bytes read and not yet written
}

func newPump(dst, src *net.TCPConn) (*pump, error) {
	r, err := newReadiness(src)
	if err != nil {
		return nil, err
	}
	return &pump{src: src, dst: dst, r: r}, nil
}

// fill waits until src is readable, honouring its read deadline, and reads
// what it holds (at most one buffer). It returns nil with bytes held,
// io.EOF, or the error.
func (p *pump) fill() error {
	avail, ready, err := p.r.poll()
	if err == nil && !ready {
		avail, err = p.r.wait()
	}
	if err != nil {
		return err
	}
	if p.buf == nil {
		p.buf = bufPool.Get().(*[]byte)
	}
	b := *p.buf
	if avail > 0 && avail < len(b) {
		b = b[:avail]
	}
	n, err := p.src.Read(b)
	p.held = b[:n]
	if n > 0 {
		return nil // an error comes again with the next read
	}
	p.release()
	return err
}

// flush writes the bytes held to dst. After an error the rest stays held,
// so a flush after a passed deadline goes on where this one stopped.
func (p *pump) flush() (int64, error) {
	n, err := p.dst.Write(p.held)
	p.held = p.held[n:]
	if err == nil {
		p.release()
	}
	return int64(n), err
}

// release gives the buffer back.
func (p *pump) release() {
	if p.buf != nil {
		bufPool.Put(p.buf)
		p.buf, p.held = nil, nil
	}
}
