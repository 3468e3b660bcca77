//go:build !linux

package fallback

import (
	"net"
	"sync"
)

// bufPool holds the copy buffers; a direction takes one only while bytes are
// in flight.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// transfer moves what src holds (at most one buffer; avail < 0 means
// unknown) to dst through a pooled buffer. Without splice(2), io.Copy would
// allocate a fresh 32 KiB buffer per call.
func transfer(dst, src *net.TCPConn, avail int) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	if avail > 0 && avail < len(buf) {
		buf = buf[:avail]
	}
	n, err := src.Read(buf)
	if n > 0 {
		w, werr := dst.Write(buf[:n])
		if werr != nil {
			return int64(w), werr
		}
	}
	return int64(n), err
}
