package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
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

// pinValue is a pin as etcd holds it. Times are Unix milliseconds, so that
// hosts with synchronized clocks agree on a pin's remaining lifetime
// without reading its lease.
type pinValue struct {
	Backend string `json:"b"`
	Key     string `json:"k"`
	Expires int64  `json:"e,omitempty"` // 0: never
	Node    string `json:"n"`           // the host that wrote it
	Written int64  `json:"w"`           // when that host made or refreshed the pin
}

func decodePin(b []byte) (pinValue, error) {
	var v pinValue
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("pin value %q: %w", b, err)
	}
	return v, nil
}

// runtimeValue is one item of the runtime state as etcd holds it.
type runtimeValue struct {
	Node         string                      `json:"node"`
	Registration *balancer.RegisteredBackend `json:"registration,omitempty"`
	TTL          string                      `json:"ttl,omitempty"` // heartbeats
}
