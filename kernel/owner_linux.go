package kernel

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ownerSocket is the abstract unix socket a daemon holds in the network
// namespace whose kernel objects it manages. Abstract unix sockets belong
// to a network namespace, so the name is free in every other one, and the
// kernel releases it when the daemon dies, however it dies.
const ownerSocket = "@handoff-owner"

// ErrOwned says that another process owns handoff's kernel objects in the
// namespace; the error's text names its PID.
var ErrOwned = errors.New("another handoff owns the kernel objects of this network namespace")

// Own claims the kernel objects of o.NetNS for this process until release
// is called or the process ends. It fails with an error wrapping ErrOwned,
// which names the owner's PID, while another process holds them.
func Own(o Options) (release func(), err error) {
	var ln *net.UnixListener
	err = inNamespace(o.NetNS, func() error {
		var err error
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: ownerSocket, Net: "unix"})
		return err
	})
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%w (PID %s)", ErrOwned, ownerPID(o))
	}
	if err != nil {
		return nil, fmt.Errorf("kernel: claiming the namespace: %w", err)
	}
	// Accept and drop the connections of Owner's probes, so that they
	// never fill the backlog.
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return func() { ln.Close() }, nil
}

// Owner returns the PID of the process that owns the kernel objects of
// o.NetNS, or 0 when none does.
func Owner(o Options) int {
	var pid int
	_ = inNamespace(o.NetNS, func() error {
		c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ownerSocket, Net: "unix"})
		if err != nil {
			return err
		}
		defer c.Close()
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		return rc.Control(func(fd uintptr) {
			// The peer's credentials are the listener's, as of listen().
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				pid = int(cred.Pid)
			}
		})
	})
	return pid
}

func ownerPID(o Options) string {
	if pid := Owner(o); pid > 0 {
		return fmt.Sprint(pid)
	}
	return "unknown"
}

// inNamespace runs fn in the network namespace at path ("" is the
// caller's own).
func inNamespace(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	defer ns.Close()
	return inNetNS(ns, fn)
}
