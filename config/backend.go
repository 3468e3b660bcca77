package config

import (
	"fmt"

	"github.com/handoff-lb/handoff/dataplane"
)

// CheckBackend applies to b the rules Parse applies to a configured backend
// of s, for backends registered at run time: a valid name whose ipset name
// fits the kernel, a specific ip:port of the service's family that is not
// its listen address, and a weight within 1..MaxWeight (default it before).
// Uniqueness of the name, within s and of the ipset name across services,
// is left to the caller, which knows the backends of the moment.
func (s *Service) CheckBackend(b Backend) error {
	if !objectNameRE.MatchString(b.Name) {
		return fmt.Errorf("backend name %q: want lower-case letters, digits, '-' and '_', starting with a letter or digit", b.Name)
	}
	v6 := s.Listen.Addr().Is6()
	if set := dataplane.SetName(s.Name, b.Name, v6); len(set) > dataplane.MaxSetNameLen {
		return fmt.Errorf("backend %q: ipset name %q is %d characters, the limit is %d", b.Name, set, len(set), dataplane.MaxSetNameLen)
	}
	a := b.Address.Addr()
	switch {
	case !b.Address.IsValid() || b.Address.Port() == 0 || a.Zone() != "" || a.Is4In6() || a.IsUnspecified():
		return fmt.Errorf("backend %q: address %s: want a specific IP (no zone, not IPv4-mapped) and a port 1..65535", b.Name, b.Address)
	case a.Is6() != v6:
		return fmt.Errorf("backend %q: address %s is %s but service %q listens on %s", b.Name, b.Address, family(a), s.Name, family(s.Listen.Addr()))
	case b.Address == s.Listen:
		return fmt.Errorf("backend %q: address %s is the listen address of service %q", b.Name, b.Address, s.Name)
	case b.Weight < 1 || b.Weight > MaxWeight:
		return fmt.Errorf("backend %q: weight %d is out of range 1..%d", b.Name, b.Weight, MaxWeight)
	}
	return nil
}
