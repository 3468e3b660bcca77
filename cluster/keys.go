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
//	<prefix>/<cluster>/pinpages/<node>/<boot>-<seq>    a page: many pins that expire, under a lease
//	<prefix>/<cluster>/pins/<service>/<client>         pinValue of a pin that never expires
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

func (k keys) pins() string  { return k.root + "pins/" }
func (k keys) pages() string { return k.root + "pinpages/" }

// page names the seq-th page written by node since it started at boot
// (Unix ns): no two incarnations of a node write the same key.
func (k keys) page(node string, boot int64, seq uint64) string {
	return k.root + "pinpages/" + node + "/" + strconv.FormatInt(boot, 36) + "-" + strconv.FormatUint(seq, 36)
}

// pageNode returns the node that wrote a page.
func (k keys) pageNode(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, k.pages())
	if !ok {
		return "", false
	}
	node, _, ok := strings.Cut(rest, "/")
	return node, ok && node != ""
}
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

// A page holds many pins of one node under one lease: the pins that
// expire in the same lease bucket, queued in the same batch. One etcd
// write then carries up to pageMax pins instead of one, which is what
// lets a cluster publish tens of thousands of new pins a second (etcd's
// cost is per key written: about 19 µs of its CPU each on the 2-vCPU VM,
// whatever the value's size up to a few KiB). A page is text:
//
//	h2
//	p <service> <client> <backend> <expires> <written> <key>
//	d <service> <client> <expires> <written>
//
// "p" pins a client; "d" is a tombstone: the pin was removed before it
// expired (an unpin, a flush), and the tombstone lives as long as the pin
// would have, so that no older page brings it back to a host that reads
// the cluster's state. Times are as in pinValue; the key runs to the end
// of the line (a key holding a control byte or starting with '"' is
// written as a Go string literal). A client's value is its entry in the
// page of the highest revision (the last entry of that page), whoever
// wrote it, which is etcd's last write of it.
const pageMax = 1000

// pageEntry is one line of a page.
type pageEntry struct {
	pk  pinKey
	del bool
	v   pinValue // Node is the page's; Backend and Key are empty in a tombstone
}

func appendEntry(b []byte, e pageEntry) []byte {
	if e.del {
		b = append(b, "d "...)
	} else {
		b = append(b, "p "...)
	}
	b = append(b, e.pk.service...)
	b = append(b, ' ')
	b = e.pk.client.AppendTo(b)
	b = append(b, ' ')
	if !e.del {
		b = append(b, e.v.Backend...)
		b = append(b, ' ')
	}
	b = strconv.AppendInt(b, e.v.Expires, 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, e.v.Written, 10)
	if !e.del {
		b = append(b, ' ')
		if plainKey(e.v.Key) {
			b = append(b, e.v.Key...)
		} else {
			b = strconv.AppendQuote(b, e.v.Key)
		}
	}
	return append(b, '\n')
}

// plainKey reports whether a key can stand unquoted at the end of a line.
func plainKey(k string) bool {
	if strings.HasPrefix(k, `"`) {
		return false
	}
	for i := 0; i < len(k); i++ {
		if k[i] < ' ' || k[i] == 0x7f {
			return false
		}
	}
	return true
}

func encodePage(entries []pageEntry) []byte {
	b := make([]byte, 0, 3+len(entries)*80)
	b = append(b, "h2\n"...)
	for _, e := range entries {
		b = appendEntry(b, e)
	}
	return b
}

// decodePage calls fn with each entry of a page written by node, in
// order. Strings in the entries share the page's bytes.
func decodePage(b []byte, node string, fn func(pageEntry)) error {
	s, ok := strings.CutPrefix(string(b), "h2\n")
	if !ok {
		return fmt.Errorf("pin page: want \"h2\" on its first line, got %.20q", b)
	}
	for n := 2; s != ""; n++ {
		line, rest, ok := strings.Cut(s, "\n")
		if !ok {
			return fmt.Errorf("pin page line %d: no newline at the end", n)
		}
		s = rest
		e, err := decodeEntry(line)
		if err != nil {
			return fmt.Errorf("pin page line %d: %w", n, err)
		}
		e.v.Node = node
		fn(e)
	}
	return nil
}

func decodeEntry(line string) (pageEntry, error) {
	var e pageEntry
	kind, s, _ := strings.Cut(line, " ")
	switch kind {
	case "p":
	case "d":
		e.del = true
	default:
		return e, fmt.Errorf("%.40q: want \"p SERVICE CLIENT BACKEND EXPIRES WRITTEN KEY\" or \"d SERVICE CLIENT EXPIRES WRITTEN\"", line)
	}
	fields := 5
	if e.del {
		fields = 4
	}
	f := make([]string, 0, 6)
	for i := 0; i < fields; i++ {
		var v string
		var ok bool
		v, s, ok = strings.Cut(s, " ")
		if v == "" || !ok && i < fields-1 {
			return e, fmt.Errorf("%.40q: too few fields", line)
		}
		f = append(f, v)
	}
	if e.del && s != "" {
		return e, fmt.Errorf("%.40q: too many fields", line)
	}
	e.pk.service = f[0]
	a, err := netip.ParseAddr(f[1])
	if err != nil || a.Zone() != "" {
		return e, fmt.Errorf("%.40q: %q is not a client address", line, f[1])
	}
	e.pk.client = a.Unmap()
	times := f[2:]
	if !e.del {
		e.v.Backend, times = f[2], f[3:]
		e.v.Key = s
		if strings.HasPrefix(s, `"`) {
			if e.v.Key, err = strconv.Unquote(s); err != nil {
				return e, fmt.Errorf("%.40q: key: %w", line, err)
			}
		}
	}
	var err1, err2 error
	e.v.Expires, err1 = strconv.ParseInt(times[0], 10, 64)
	e.v.Written, err2 = strconv.ParseInt(times[1], 10, 64)
	if err1 != nil || err2 != nil {
		return e, fmt.Errorf("%.40q: times must be whole milliseconds", line)
	}
	return e, nil
}
