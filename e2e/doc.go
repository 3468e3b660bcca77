// Package e2e holds handoff's end-to-end tests: scenarios that run the real
// binary, built once with the race detector, inside the balancer namespace
// of a fresh lab (internal/nstest), with real clients and backends in
// namespaces of their own and the kernel's state read back with ipset,
// iptables and conntrack. They need root on Linux; see nstest.RequireRoot.
//
// The lab's helpers (lab_linux_test.go and its neighbours) say what a
// scenario does: start a daemon, write its config, serve greeters, greet
// from a client, read the sets. The scenarios are the other files.
package e2e
