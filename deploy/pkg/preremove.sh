#!/bin/sh
# Before removing handoff (not on upgrade): stop and disable the service.
# The kernel's sets and rules stay; `handoff cleanup` (run before removing)
# takes them away.
set -e
case "${1:-}" in
	remove|purge|0)
		if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
			systemctl disable --now handoff.service >/dev/null 2>&1 || true
		fi
		;;
esac
exit 0
