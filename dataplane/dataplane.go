// Package dataplane is the vocabulary the balancer speaks to its two data
// planes, kernel (ipset + iptables) and fallback (the userspace affinity
// table): the desired state handed to Sync, and the pins that Pin, Lookup
// and Pins exchange.
//
// It holds types and naming rules only, no I/O, so that kernel and fallback
// share them without importing each other or the balancer.
package dataplane

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"
)

// ErrUnsupported is returned by a data plane that cannot run on this
// platform (the kernel data plane off Linux).
var ErrUnsupported = errors.New("kernel data plane not supported on this platform")

// ErrUnknown is wrapped by errors about a service or backend that the last
// Sync did not declare.
var ErrUnknown = errors.New("unknown service or backend")

// ErrFull is wrapped by Pin errors when a backend's set or the affinity table
// already holds MaxClients entries.
var ErrFull = errors.New("client table full")

// State is the whole desired state of a data plane. Sync(State) may be called
// any number of times with the same or a changed State; the data plane works
// out the difference.
type State struct {
	Services []Service
	// Transparent asks for the routing that delivers the replies of
	// connections the proxy dials from clients' addresses (kernel data
	// plane only).
	Transparent bool
}

// Service is one balanced service as the data plane sees it.
type Service struct {
	Name       string
	Listen     netip.AddrPort // the VIP; an unspecified address matches every local address
	ClientTTL  time.Duration  // pin lifetime since the last new connection; 0 = forever
	SNAT       bool           // masquerade forwarded traffic toward backends
	MaxClients int            // per-backend pin limit (ipset maxelem)
	Backends   []Backend      // every backend of every pool, healthy or not
	// HoldSYN holds the first SYN of a new client in the kernel until the
	// client is pinned (services classifying by source address; kernel
	// data plane only), instead of passing it to the listener.
	HoldSYN bool
	// IPv6PinPrefix pins IPv6 clients by network: a pin's Client is then
	// the address of the client's /IPv6PinPrefix network, which every
	// address in it matches (hash:net sets in the kernel). 0 pins
	// addresses.
	IPv6PinPrefix int
}

// PinKey is what a service with IPv6 prefix pinning (Service.IPv6PinPrefix
// = prefix) pins for client: the address of its network for an IPv6
// client, the client itself otherwise.
func PinKey(client netip.Addr, prefix int) netip.Addr {
	if prefix <= 0 || prefix >= 128 || !client.Is6() || client.Is4In6() {
		return client
	}
	p, err := client.Prefix(prefix)
	if err != nil {
		return client
	}
	return p.Addr()
}

// Backend is one real server of a service.
type Backend struct {
	Name    string
	Address netip.AddrPort
}

// BackendRef names one backend of one service. It is comparable, so it keys
// maps of per-backend values (rule counters, health, registrations).
type BackendRef struct {
	Service string `json:"service"`
	Backend string `json:"backend"`
}

// Pin records that a client of a service belongs to a backend.
type Pin struct {
	Service string
	Backend string
	Client  netip.Addr // always unmapped (an IPv4 client is 4-byte, never ::ffff:a.b.c.d); see PinKey
	Key     string     // the classification key, e.g. "src=198.18.0.5" or "sni=a.example"
	// TTL is the pin's lifetime. In a Pin call, 0 means the service's
	// ClientTTL. In results, it is the remaining lifetime, and 0 means the
	// pin never expires.
	TTL time.Duration
}

// SetName returns the ipset name of a service's backend: ho-<svc>-<backend>
// for IPv4 services and ho6-<svc>-<backend> for IPv6 ones. ipset allows 31
// characters; config validation keeps names within that.
func SetName(service, backend string, ipv6 bool) string {
	if ipv6 {
		return "ho6-" + service + "-" + backend
	}
	return "ho-" + service + "-" + backend
}

// MaxSetNameLen is the longest ipset name the kernel accepts.
const MaxSetNameLen = 31

// ServiceChain returns the nat chain of a service: HO-SVC-<svc>.
func ServiceChain(service string) string { return "HO-SVC-" + service }

// MaxChainNameLen is the longest iptables chain name.
const MaxChainNameLen = 28

// HeldSYN is the first SYN of a new client that the kernel data plane
// holds until the client is pinned (Service.HoldSYN).
type HeldSYN struct {
	Service string
	Client  netip.Addr     // unmapped
	VIP     netip.AddrPort // the address and port the client connects to
}

// MinMarkBits is the narrowest packet-mark field the kernel data plane
// numbers backends in.
const MinMarkBits = 4

// MarkSlots checks a mark mask, the bits of the packet mark that carry a
// new connection's backend from the mangle table to the nat table (one
// contiguous run of at least MinMarkBits), and returns how many backends
// one service may have under it: the field's values but 0 (no backend)
// and all ones (reserved for transparent dials).
func MarkSlots(mask uint32) (int, error) {
	if mask == 0 {
		return 0, errors.New("mark mask is 0")
	}
	field := mask >> bits.TrailingZeros32(mask)
	if field&(field+1) != 0 {
		return 0, fmt.Errorf("mark mask %#x: the bits must be contiguous", mask)
	}
	if bits.OnesCount32(mask) < MinMarkBits {
		return 0, fmt.Errorf("mark mask %#x: at least %d bits are needed", mask, MinMarkBits)
	}
	return int(field) - 1, nil
}
