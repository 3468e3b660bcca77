package proxy

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/pires/go-proxyproto"

	"github.com/handoff-lb/handoff/config"
)

// Header returns the PROXY protocol header announcing a connection from
// client to local (the address the client connected to), for
// Route.Header. version is "v1" or "v2"; "off" and "" give nil. client and
// local must be *net.TCPAddr; IPv4-mapped IPv6 addresses are sent as IPv4,
// and a pair of mixed families as IPv6.
func Header(version config.ProxyProtocol, client, local net.Addr) ([]byte, error) {
	v, err := headerVersion(version)
	if v == 0 || err != nil {
		return nil, err
	}
	src, ok1 := tcpAddrPort(client)
	dst, ok2 := tcpAddrPort(local)
	if !ok1 || !ok2 {
		return nil, fmt.Errorf("proxy protocol %s: need TCP addresses, got %v and %v", version, client, local)
	}
	if src.Addr().Is4() != dst.Addr().Is4() {
		src = netip.AddrPortFrom(netip.AddrFrom16(src.Addr().As16()), src.Port())
		dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
	}
	b, err := proxyproto.HeaderProxyFromAddrs(v, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst)).Format()
	if err != nil {
		return nil, fmt.Errorf("proxy protocol %s header: %w", version, err)
	}
	return b, nil
}

// CheckHeader returns the PROXY protocol header a health check sends first
// to a backend that expects one (HAProxy's check-send-proxy): the v1
// "PROXY UNKNOWN" line or a v2 LOCAL header, which say that the
// connection is the balancer's own and carries no client, so the backend
// neither logs an error nor takes the checker for a client. version "off"
// and "" return nil.
func CheckHeader(version config.ProxyProtocol) ([]byte, error) {
	v, err := headerVersion(version)
	if v == 0 || err != nil {
		return nil, err
	}
	h := &proxyproto.Header{Version: v, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	return h.Format()
}

// headerVersion returns the PROXY protocol version number of version, or
// 0 for "off" and "".
func headerVersion(version config.ProxyProtocol) (byte, error) {
	switch version {
	case "", config.ProxyProtocolOff:
		return 0, nil
	case config.ProxyProtocolV1:
		return 1, nil
	case config.ProxyProtocolV2:
		return 2, nil
	}
	return 0, fmt.Errorf("proxy protocol %q: want off, v1 or v2", version)
}

// tcpAddrPort returns a's address with IPv4-mapped addresses unmapped and
// any zone dropped.
func tcpAddrPort(a net.Addr) (netip.AddrPort, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta == nil {
		return netip.AddrPort{}, false
	}
	ap := ta.AddrPort()
	if !ap.Addr().IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()), true
}
