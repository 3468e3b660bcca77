package proxy_test

import (
	"bufio"
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/pires/go-proxyproto"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/proxy"
)

// FuzzWriteHeader writes PROXY headers for arbitrary address pairs and
// reads them back with a PROXY protocol parser: every header parses, and
// announces the client and local addresses and ports given (IPv4-mapped
// addresses as IPv4, a mixed pair as IPv6). Health checks' headers parse
// as LOCAL.
func FuzzWriteHeader(f *testing.F) {
	f.Add(uint8(1), []byte{198, 18, 0, 5}, uint16(4000), []byte{198, 18, 1, 1}, uint16(80))
	f.Add(uint8(2), []byte(net.ParseIP("2001:db8::1").To16()), uint16(1), []byte(net.ParseIP("::ffff:198.18.1.1").To16()), uint16(65535))
	f.Add(uint8(2), []byte{}, uint16(0), []byte{1, 2, 3}, uint16(0))
	f.Fuzz(func(t *testing.T, v uint8, cip []byte, cport uint16, lip []byte, lport uint16) {
		version := []config.ProxyProtocol{config.ProxyProtocolV1, config.ProxyProtocolV2}[v%2]
		ca, ok1 := netip.AddrFromSlice(cip)
		la, ok2 := netip.AddrFromSlice(lip)
		if !ok1 || !ok2 {
			return
		}
		client := net.TCPAddrFromAddrPort(netip.AddrPortFrom(ca, cport))
		local := net.TCPAddrFromAddrPort(netip.AddrPortFrom(la, lport))
		hdr, err := proxy.Header(version, client, local)
		if err != nil {
			t.Fatalf("%s %v %v: %v", version, client, local, err)
		}
		w := bytes.NewBuffer(hdr)
		h, err := proxyproto.Read(bufio.NewReader(w))
		if err != nil {
			t.Fatalf("%s header for %v → %v does not parse: %v (%q)", version, client, local, err, w.Bytes())
		}
		src, dst, ok := h.TCPAddrs()
		if !ok {
			t.Fatalf("header %q has no TCP addresses", w.Bytes())
		}
		want := func(a netip.Addr, other netip.Addr) netip.Addr {
			a, other = a.Unmap(), other.Unmap()
			if a.Is4() != other.Is4() {
				return netip.AddrFrom16(a.As16())
			}
			return a
		}
		gs, gd := src.AddrPort(), dst.AddrPort()
		if gs.Port() != cport || gd.Port() != lport {
			t.Fatalf("ports %d %d, want %d %d", gs.Port(), gd.Port(), cport, lport)
		}
		if w1, w2 := want(ca, la), want(la, ca); gs.Addr().Unmap() != w1.Unmap() || gd.Addr().Unmap() != w2.Unmap() {
			t.Fatalf("addresses %v %v, want %v %v (header %q)", gs.Addr(), gd.Addr(), w1, w2, w.Bytes())
		}
		hc, err := proxy.CheckHeader(version)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := proxyproto.Read(bufio.NewReader(bytes.NewReader(hc)))
		if err != nil || (version == config.ProxyProtocolV2 && ch.Command != proxyproto.LOCAL) || ch.TransportProtocol != proxyproto.UNSPEC {
			t.Fatalf("check header %q: %+v, %v", hc, ch, err)
		}
	})
}
