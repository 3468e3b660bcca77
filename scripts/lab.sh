#!/usr/bin/env bash
# lab.sh up|down|status: a network-namespace lab for handoff (DESIGN.md §7).
#
#   ho-client  198.18.0.2-.41/24    2001:2:0:1::2-::41/64   (40 client addresses)
#      │ veth
#   ho-lb      198.18.0.1/24        2001:2:0:1::1/64        VIP side (handoff listens here)
#              198.19.1.1/24        2001:2:0:2::1/64        bridge ho-br to the backends
#      │ bridge
#   ho-be1     198.19.1.11/24       2001:2:0:2::11/64
#   ho-be2     198.19.1.12/24       2001:2:0:2::12/64       (LAB_BACKENDS=N for more)
#
# Backends route via ho-lb, so DNATed replies return through the balancer.
# Everything lives in namespaces this script creates; `down` deletes them.
# Nothing is added to the root namespace.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"
N=${LAB_BACKENDS:-2}
CLIENTS=${LAB_CLIENTS:-40}

ns() { ip netns exec "$@"; }

down() {
	for n in $(ip netns list | awk '{print $1}' | grep -E '^ho-(client|lb|be[0-9]+)$' || true); do
		# end what runs inside first, so the namespace really goes away
		for pid in $(ip netns pids "$n" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
		ip netns del "$n"
	done
}

up() {
	down
	ip netns add ho-client
	ip netns add ho-lb
	for n in ho-client ho-lb; do ns "$n" ip link set lo up; done

	ip link add ho-c0 netns ho-client type veth peer name ho-c1 netns ho-lb
	ns ho-client ip link set ho-c0 up
	ns ho-lb ip link set ho-c1 up
	ns ho-lb ip addr add 198.18.0.1/24 dev ho-c1
	ns ho-lb ip -6 addr add 2001:2:0:1::1/64 dev ho-c1 nodad
	for i in $(seq 2 $((CLIENTS + 1))); do
		ns ho-client ip addr add "198.18.0.$i/24" dev ho-c0
		ns ho-client ip -6 addr add "2001:2:0:1::$(printf %x "$i")/64" dev ho-c0 nodad
	done
	ns ho-client ip route add default via 198.18.0.1
	ns ho-client ip -6 route add default via 2001:2:0:1::1

	ns ho-lb ip link add ho-br type bridge
	ns ho-lb ip link set ho-br up
	ns ho-lb ip addr add 198.19.1.1/24 dev ho-br
	ns ho-lb ip -6 addr add 2001:2:0:2::1/64 dev ho-br nodad
	ns ho-lb sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

	for i in $(seq 1 "$N"); do
		b=ho-be$i h=$((10 + i))
		ip netns add "$b"
		ns "$b" ip link set lo up
		ip link add ho-b${i}a netns "$b" type veth peer name ho-b${i}b netns ho-lb
		ns ho-lb ip link set ho-b${i}b master ho-br up
		ns "$b" ip link set ho-b${i}a up
		ns "$b" ip addr add "198.19.1.$h/24" dev ho-b${i}a
		ns "$b" ip -6 addr add "2001:2:0:2::$h/64" dev ho-b${i}a nodad
		ns "$b" ip route add default via 198.19.1.1
		ns "$b" ip -6 route add default via 2001:2:0:2::1
	done
	echo "lab up: ho-client (198.18.0.2-.$((CLIENTS + 1))), ho-lb (VIP 198.18.0.1, [2001:2:0:1::1]), backends ho-be1..ho-be$N (198.19.1.11..)"
}

status() { ip netns list | grep -E '^ho-(client|lb|be[0-9]+)' || echo "lab is down"; }

case "${1:-}" in
up) up ;;
down) down; echo "lab down" ;;
status) status ;;
*) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
