#!/bin/sh
# keepalived's notify script for a handoff pair (keepalived.conf): moves
# the kernel's flows with the VIP, as conntrackd's primary-backup.sh does.
#   master: commit the flows received from the old master into the kernel,
#           then become the source of flows for the other host;
#   backup: ask the master for its flows.
# CONNTRACKD_CONFIG picks another config (the lab runs one per namespace).
set -u
conf=${CONNTRACKD_CONFIG:-/etc/handoff/cluster/conntrackd.conf}
ctd() { conntrackd -C "$conf" "$@"; }
case "$1" in
master)
    ctd -c || logger -t handoff-notify "conntrackd -c failed"   # commit the external cache into the kernel
    ctd -f                                                        # flush the caches
    ctd -R                                                        # resync the internal cache with the kernel
    ctd -B                                                        # send everything to the backup
    ;;
backup)
    ctd -n || true                                                # request a resync from the master
    ;;
fault)
    ctd -t || true                                                # shorten the kernel's timers
    ;;
esac
exit 0
