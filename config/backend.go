package config

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/handoff-lb/handoff/dataplane"
)

// BackendError is a rule that a backend breaks, from the one set of rules
// for backends that both the config file and registrations at run time
// follow. Parse reports it at the position of the field; CheckBackend
// returns it.
type BackendError struct {
	Service string
	Backend string
	Field   string // "name", "address" or "weight"
	Msg     string // what is wrong with the field, e.g. "0 is out of range 1..1000"
}

// Error formats e as a config file error about that backend reads (less its
// position): `service "web": backend "be1": weight: 0 is out of range 1..1000`.
func (e *BackendError) Error() string {
	return fmt.Sprintf("service %q: backend %q: %s: %s", e.Service, e.Backend, e.Field, e.Msg)
}

// backendCheck selects parts of the backend rule: the file parser checks a
// field only once it has read it, and the ipset name only once the name is
// known to be unique in the service.
type backendCheck uint8

const (
	checkName    backendCheck = 1 << iota // the characters of the name
	checkSetName                          // the length of the backend's ipset name
	checkAddress                          // a specific ip:port of the service's family, not its listen address
	checkWeight                           // 1..MaxWeight
	checkForward                          // an address the kernel's DNAT can forward to (kernel and auto modes)

	checkAll = checkName | checkSetName | checkAddress | checkWeight
)

// CheckBackend applies to b the rules Parse applies to a configured backend
// of s, for backends registered at run time: a valid name whose ipset name
// fits the kernel, a specific ip:port of the service's family that is not
// its listen address, and a weight within 1..MaxWeight (default it before).
// It returns the first rule broken, as a *BackendError whose message is the
// one a config file gets for the same fault. Uniqueness of the name, within
// s and of the ipset name across services, is left to the caller, which
// knows the backends of the moment.
func (s *Service) CheckBackend(b Backend) error {
	if errs := s.checkBackend(b, checkAll, written{b.Address.String(), strconv.Itoa(b.Weight)}); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// written is how a backend's address and weight are written, for messages:
// the text of the file, or the values' own form for a registration.
type written struct{ address, weight string }

// checkBackend returns every rule among parts that b breaks as a backend of
// s, in field order; w is how b is written. The
// parts that need the service's address family are skipped while s.Listen
// is invalid (a config whose listen is reported), and the ipset name while
// the name is invalid.
func (s *Service) checkBackend(b Backend, parts backendCheck, w written) []*BackendError {
	var errs []*BackendError
	fault := func(field, format string, args ...any) {
		errs = append(errs, &BackendError{Service: s.Name, Backend: b.Name, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	listen := s.Listen.IsValid()
	nameOK := objectNameRE.MatchString(b.Name)
	if parts&checkName != 0 && !nameOK {
		fault("name", "%q is not a valid backend name: lower-case letters, digits, '-' and '_', starting with a letter or digit", b.Name)
	}
	if parts&checkSetName != 0 && nameOK && listen {
		if set := dataplane.SetName(s.Name, b.Name, s.Listen.Addr().Is6()); len(set) > dataplane.MaxSetNameLen {
			fault("name", "ipset name %q is %d characters, the limit is %d; shorten the service or backend name", set, len(set), dataplane.MaxSetNameLen)
		}
	}
	if parts&checkAddress != 0 {
		a := b.Address.Addr()
		err := checkAddrPort(b.Address, w.address, false)
		switch {
		case !b.Address.IsValid():
			fault("address", "required")
		case err != nil:
			fault("address", "%v", err)
		case listen && a.Is4() != s.Listen.Addr().Is4():
			fault("address", "%s is %s but the service listens on %s; a service has one address family", w.address, family(a), family(s.Listen.Addr()))
		case b.Address == s.Listen:
			fault("address", "%s is the service's own listen address", w.address)
		case parts&checkForward != 0:
			if why := s.unforwardable(a); why != "" {
				fault("address", "%s is %s: the kernel data plane cannot forward to it (DNAT in PREROUTING drops such packets); use mode: userspace for such a backend", w.address, why)
			}
		}
	}
	if parts&checkWeight != 0 && (b.Weight < 1 || b.Weight > MaxWeight) {
		fault("weight", "%s is out of range 1..%d", w.weight, MaxWeight)
	}
	return errs
}

// CheckForward returns an error, a *BackendError about the address, when
// the kernel data plane cannot forward clients of s to b: a loopback,
// link-local, multicast or broadcast address, or the service's own
// address. Parse applies it to the backends of a config whose mode is
// kernel or auto; the engine to registrations while it runs in kernel
// mode.
func (s *Service) CheckForward(b Backend) error {
	if why := s.unforwardable(b.Address.Addr()); why != "" {
		return &BackendError{Service: s.Name, Backend: b.Name, Field: "address",
			Msg: fmt.Sprintf("%s is %s: the kernel data plane cannot forward to it (DNAT in PREROUTING drops such packets); use mode: userspace for such a backend", b.Address, why)}
	}
	return nil
}

// unforwardable says why DNAT from PREROUTING cannot reach a, or "".
func (s *Service) unforwardable(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "a link-local address"
	case a.IsMulticast():
		return "a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	case s.Listen.IsValid() && !s.Listen.Addr().IsUnspecified() && a == s.Listen.Addr().Unmap():
		return "the service's own address (the VIP)"
	}
	return ""
}

// checkAddrPort applies the rules every ip:port of the config follows to
// ap, written as text: no zone, not IPv4-mapped, a port, and for a backend
// (listen false) a specific address.
func checkAddrPort(ap netip.AddrPort, text string, listen bool) error {
	a := ap.Addr()
	switch {
	case a.Zone() != "":
		return fmt.Errorf("%q: IPv6 zones are not supported", text)
	case a.Is4In6():
		return fmt.Errorf("%q is an IPv4-mapped IPv6 address; write %s", text, netip.AddrPortFrom(a.Unmap(), ap.Port()))
	case ap.Port() == 0:
		return fmt.Errorf("%q: port 0; a port 1..65535 is required", text)
	case !listen && a.IsUnspecified():
		return fmt.Errorf("%q: a backend needs a specific address, not %s", text, a)
	}
	return nil
}
