package cluster

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/handoff-lb/handoff/balancer"
)

// keys is the layout of one cluster's keys in etcd (DESIGN.md §8):
//
//	<prefix>/<cluster>/pins/<service>/<client>         pinValue, under a lease when the pin expires
//	<prefix>/<cluster>/runtime/registrations/<svc>/<be> runtimeValue with a balancer.RegisteredBackend
//	<prefix>/<cluster>/runtime/drains/<svc>/<be>        runtimeValue
//	<prefix>/<cluster>/runtime/closed/<svc>             runtimeValue
//	<prefix>/<cluster>/runtime/heartbeats/<svc>/<be>    runtimeValue with the TTL
//	<prefix>/<cluster>/runtime/seeded                   written once, by the first host that published its runtime state
//	<prefix>/<cluster>/nodes/<node>                     NodeStatus, under the node's lease
type keys struct {
	root string // "<prefix>/<cluster>/"
}

func newKeys(prefix, cluster string) keys {
	return keys{root: strings.TrimSuffix(prefix, "/") + "/" + cluster + "/"}
}

func (k keys) pins() string { return k.root + "pins/" }
func (k keys) pin(service string, c netip.Addr) string {
	return k.root + "pins/" + service + "/" + c.String()
}
func (k keys) runtime() string         { return k.root + "runtime/" }
func (k keys) seeded() string          { return k.root + "runtime/seeded" }
func (k keys) nodes() string           { return k.root + "nodes/" }
func (k keys) node(name string) string { return k.root + "nodes/" + name }

func (k keys) registration(service, backend string) string {
	return k.root + "runtime/registrations/" + service + "/" + backend
}
func (k keys) drain(service, backend string) string {
	return k.root + "runtime/drains/" + service + "/" + backend
}
func (k keys) closed(service string) string { return k.root + "runtime/closed/" + service }
func (k keys) heartbeat(service, backend string) string {
	return k.root + "runtime/heartbeats/" + service + "/" + backend
}

// pinKey names one client of one service.
type pinKey struct {
	service string
	client  netip.Addr
}

// parsePin splits a pin key into its service and client.
func (k keys) parsePin(key string) (pinKey, bool) {
	rest, ok := strings.CutPrefix(key, k.pins())
	if !ok {
		return pinKey{}, false
	}
	svc, client, ok := strings.Cut(rest, "/")
	if !ok {
		return pinKey{}, false
	}
	a, err := netip.ParseAddr(client)
	if err != nil {
		return pinKey{}, false
	}
	return pinKey{svc, a.Unmap()}, true
}

// pinValue is a pin as etcd holds it, one line of text:
//
//	h1 <backend> <expires> <written> <node> <key>
//
// Times are Unix milliseconds (expires 0: never), so that hosts with
// synchronized clocks agree on a pin's remaining lifetime without reading
// its lease; node is the host that wrote it, written when that host made
// or refreshed the pin; key, the classification key, runs to the end (it
// may hold spaces). A line is cheaper to write and read than JSON, and a
// cluster carries tens of thousands of them a second.
type pinValue struct {
	Backend string
	Key     string
	Expires int64
	Node    string
	Written int64
}

func (v pinValue) encode() []byte {
	b := make([]byte, 0, 48+len(v.Backend)+len(v.Node)+len(v.Key))
	b = append(b, "h1 "...)
	b = append(b, v.Backend...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, v.Expires, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, v.Written, 10)
	b = append(b, ' ')
	b = append(b, v.Node...)
	b = append(b, ' ')
	return append(b, v.Key...)
}

func decodePin(b []byte) (pinValue, error) {
	var v pinValue
	s, ok := strings.CutPrefix(string(b), "h1 ")
	var exp, written string
	if ok {
		v.Backend, s, ok = strings.Cut(s, " ")
	}
	if ok {
		exp, s, ok = strings.Cut(s, " ")
	}
	if ok {
		written, s, ok = strings.Cut(s, " ")
	}
	if ok {
		v.Node, v.Key, ok = strings.Cut(s, " ")
	}
	var err1, err2 error
	if ok {
		v.Expires, err1 = strconv.ParseInt(exp, 10, 64)
		v.Written, err2 = strconv.ParseInt(written, 10, 64)
	}
	if !ok || err1 != nil || err2 != nil || v.Backend == "" {
		return v, fmt.Errorf("pin value %q: want \"h1 BACKEND EXPIRES WRITTEN NODE KEY\"", b)
	}
	return v, nil
}

// runtimeValue is one item of the runtime state as etcd holds it.
type runtimeValue struct {
	Node         string                      `json:"node"`
	Registration *balancer.RegisteredBackend `json:"registration,omitempty"`
	TTL          string                      `json:"ttl,omitempty"` // heartbeats
}
