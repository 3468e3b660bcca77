#!/bin/sh
# After installing or upgrading handoff: make systemd see the unit. The
# service is neither enabled nor started; an upgrade leaves a running one
# running the old binary until `systemctl restart handoff` (which keeps
# every pin: the kernel's sets stay).
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
