// Package deploy holds what installs and runs handoff, and no code: the
// systemd unit, the container image and its iptables wrapper, the packages'
// default config, example configs and the monitoring (Grafana dashboard,
// Prometheus alert rules). Its tests check them with the tools that will
// read them: systemd-analyze, promtool, a shell in a network namespace.
package deploy
