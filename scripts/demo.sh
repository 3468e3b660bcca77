#!/usr/bin/env bash
# demo.sh: the quickstart. Builds handoff, brings the namespace lab up
# (scripts/lab.sh), starts two backends and handoff in kernel mode, connects
# several clients twice, shows where each landed and what the kernel holds,
# then tears everything down. Run as root. Touches only its own namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it builds network namespaces)" >&2; exit 1; }
for c in socat ipset iptables conntrack; do
	command -v $c >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat ipset iptables conntrack >/dev/null; break; }
done

work=$(mktemp -d)
hpid=""
cleanup() {
	[ -n "$hpid" ] && kill "$hpid" 2>/dev/null && wait "$hpid" 2>/dev/null || true
	scripts/lab.sh down >/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
lb() { ip netns exec ho-lb "$@"; }

say "build"
go build -o "$work/handoff" ./cmd/handoff
scripts/lab.sh up

say "backends: each answers with its name and the client address it sees"
for i in 1 2; do
	ip netns exec ho-be$i socat TCP-LISTEN:80,fork,reuseaddr \
		SYSTEM:"echo be$i saw \$SOCAT_PEERADDR" >/dev/null 2>&1 &
done

cat >"$work/handoff.yaml" <<YAML
mode: kernel
log: {level: debug}
state_dir: $work/state
services:
  - name: web
    listen: 198.18.0.1:80
    first_connection: reset   # the first connection is reset; the retry goes in-kernel
    client_ttl: 10m
    balance: maglev
    backends:
      - {name: be1, address: 198.19.1.11:80}
      - {name: be2, address: 198.19.1.12:80}
YAML
echo "config:"; sed 's/^/  /' "$work/handoff.yaml"
"$work/handoff" validate -c "$work/handoff.yaml"

say "handoff run --mode kernel (inside ho-lb)"
lb "$work/handoff" run -c "$work/handoff.yaml" --mode kernel 2>"$work/handoff.log" &
hpid=$!
for _ in $(seq 50); do lb ss -ltn | grep -q '198.18.0.1:80' && break; sleep 0.1; done

say "six clients, two connections each"
# prints the backend's answer, or <reset> when the connection was reset
ask() {
	local a
	a=$(ip netns exec ho-client socat -T2 - "TCP:198.18.0.1:80,bind=$1,connect-timeout=2" </dev/null 2>/dev/null | head -1)
	echo "${a:-<reset>}"
}
for i in 2 3 4 5 6 7; do
	c=198.18.0.$i
	first=$(ask $c)
	second=$(ask $c)
	printf '  client %-12s first: %-24s second: %s\n' "$c" "$first" "$second"
done

say "ipset list (in ho-lb): each client in exactly one backend's set"
lb ipset list | grep -E '^(Name|Members|198|  *timeout)|comment' | sed 's/^/  /'

say "iptables -t nat -S (in ho-lb)"
lb iptables -t nat -S | grep -Ei 'handoff|HO-SVC' | sed 's/^/  /'
echo "  (filter table)"
lb iptables -S | grep -Ei 'handoff' | sed 's/^/  /'

say "DNAT counters: the second connections were forwarded by the kernel"
lb iptables -t nat -L HO-SVC-web -v -x -n | sed 's/^/  /'

say "conntrack -L (in ho-lb): replies come from the backend, to the client's own IP"
lb conntrack -L -p tcp --orig-port-dst 80 2>/dev/null | grep 'src=198.18.0' | grep -v 'src=198.18.0.1 dst=198.18.0' | head -6 | sed 's/^/  /'

accepted=$(grep -c 'msg=pinned' "$work/handoff.log" || true)
say "userspace met $accepted new clients once each; every second connection stayed in the kernel"
