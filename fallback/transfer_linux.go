package fallback

import (
	"io"
	"net"
)

// maxChunk bounds one copy step: the bytes in flight in a direction's kernel
// pipe (the runtime sizes its splice pipes to 1 MiB), and how often progress
// is observed. Smaller chunks cost measurably more CPU per byte.
const maxChunk = 1 << 20

// transfer moves avail bytes (at most maxChunk), which src already holds, to dst with io.CopyN.
// Between two *net.TCPConn, *net.TCPConn.ReadFrom unwraps the
// *io.LimitedReader that CopyN passes it and uses splice(2)
// (net/splice_linux.go: spliceFrom), so the bytes stay in the kernel.
func transfer(dst, src *net.TCPConn, avail int) (int64, error) {
	n := int64(max(1, min(avail, maxChunk)))
	return io.CopyN(dst, src, n)
}
