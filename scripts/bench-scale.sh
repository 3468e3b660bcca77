#!/usr/bin/env bash
# bench-scale.sh: handoff at scale and its connection cost, side by side in
# one run (issue 17). Targets alternate inside each round; each figure is the
# median of ROUNDS rounds, and each ratio the median of the rounds' ratios.
#
# Lab (its own namespaces, hs-client, hs-lb and hs-be; nothing in the root
# namespace): the client owns 198.18.0.2 and, through a local route, every
# address of 198.18.128.0/17; the backend namespace owns 198.19.16.0/20 the
# same way, with one nginx on :80 answering on all of them. hs-lb (VIP
# 198.18.0.1) routes both prefixes via one neighbour each, so no ARP table
# grows with the number of clients or backends.
#
# Targets:
#   k2 k100 k1000     kernel path, conn/s (wrk, Connection: close) of a client
#                     pinned to the last backend of a service with 2, 100 or
#                     1,000 backends
#   src4 src1000      new-client rate (connload: each connection from a
#                     never-seen address, first_connection: proxy) of a
#                     classify: source service with 4 or 1,000 backends
#   pay4 pay1000      the same for a classify: payload service
#   userspace         handoff userspace mode, conn/s
#   haproxy           HAProxy 2.6 mode tcp, default thread count
#   haproxy-splice    the same with option splice-request/splice-response
#   baseline          another handoff binary (BASELINE=path) in userspace
#                     mode, to compare a change side by side
# handoff runs with its access log off, as HAProxy runs without logs.
# HOLD=1 sets the lab up and waits (for profiling by hand) until killed.
# Before each new-client run the service's pins are flushed (its index and
# pin sets), so every address is new again. Before every run TIME_WAIT
# sockets are killed and conntrack is flushed in all three namespaces.
# CPU per connection is the proxy process's utime+stime (/proc/PID/stat,
# threads included) over the run, divided by the connections it completed;
# the kernel targets' daemon has no per-connection work (shown for
# completeness).
#
# Usage: sudo [TARGETS="..."] [BASELINE=old-handoff] scripts/bench-scale.sh [ROUNDS=5] [SECONDS=4]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
ROUNDS=${1:-5}
DUR=${2:-4}
TARGETS=${TARGETS:-"k2 k100 k1000 src4 src1000 pay4 pay1000 userspace haproxy haproxy-splice"}
[ "$(id -u)" -eq 0 ] || { echo "bench-scale.sh: run as root" >&2; exit 1; }
need=()
for c in wrk haproxy nginx ipset conntrack; do command -v $c >/dev/null || need+=($c); done
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
has() { [[ " $TARGETS " == *" $1 "* ]]; }
if has baseline && [ ! -x "${BASELINE:-}" ]; then
	echo "bench-scale.sh: target baseline needs BASELINE=path/to/handoff" >&2
	exit 1
fi

ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MAXCONN=$(($(ulimit -n) / 3))
VIP=198.18.0.1 CLIENT=198.18.0.2 POOL=198.18.128.0/17
work=$(mktemp -d)
pids=()
lab_down() {
	local n pid
	for n in hs-client hs-lb hs-be; do
		[ -e "/run/netns/$n" ] || continue
		for pid in $(ip netns pids $n 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
		ip netns del $n
	done
}
cleanup() {
	set +e
	trap - INT TERM
	exec 2>/dev/null # the shell's notes on the jobs it kills
	{
		lab_down # ends what runs in the namespaces: the daemons, nginx, HAProxy
		for p in "${pids[@]}"; do kill "$p"; done
		for p in "${pids[@]}"; do wait "$p"; done
	} >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bg() { "$@" & pids+=($!); }
declare -A PIDS # target -> the shell bg started for its process
lb() { ip netns exec hs-lb "$@"; }
cl() { ip netns exec hs-client "$@"; }
be() { ip netns exec hs-be "$@"; }
# backend J (1-based) of every service: 198.19.16.0 + J
beaddr() { echo "198.19.$((16 + $1 / 256)).$(($1 % 256))"; }

go build -o "$work/handoff" ./cmd/handoff
go build -o "$work/connload" ./scripts/connload

lab_down
for n in hs-client hs-lb hs-be; do ip netns add $n; ip netns exec $n ip link set lo up; done
ip link add hs-c0 netns hs-client type veth peer name hs-c1 netns hs-lb
ip link add hs-b0 netns hs-be type veth peer name hs-b1 netns hs-lb
cl ip link set hs-c0 up
cl ip addr add $CLIENT/24 dev hs-c0
cl ip route add default via $VIP
cl ip route add local $POOL dev lo
lb ip link set hs-c1 up
lb ip link set hs-b1 up
lb ip addr add $VIP/24 dev hs-c1
lb ip addr add 198.19.0.1/24 dev hs-b1
lb ip route add $POOL via $CLIENT
lb ip route add 198.19.16.0/20 via 198.19.0.2
lb sysctl -qw net.ipv4.ip_forward=1
be ip link set hs-b0 up
be ip addr add 198.19.0.2/24 dev hs-b0
be ip route add default via 198.19.0.1
be ip route add local 198.19.16.0/20 dev lo

mkdir -p "$work/ngx"
cat >"$work/ngx/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/ngx/pid; error_log $work/ngx/err.log;
events { worker_connections 8192; }
http { access_log off; server { listen 80 reuseport backlog=4096; location / { return 200 "ok\n"; } } }
NGX
bg be nginx -c "$work/ngx/nginx.conf" -e "$work/ngx/err.log"

declare -A PORT=([k2]=1002 [k100]=1100 [k1000]=2000 [src4]=3004 [src1000]=4000 [pay4]=5004 [pay1000]=6000
	[userspace]=81 [haproxy]=82 [haproxy-splice]=83 [baseline]=86)
declare -A NBE=([k2]=2 [k100]=100 [k1000]=1000 [src4]=4 [src1000]=1000 [pay4]=4 [pay1000]=1000)
backends() {
	local j
	for j in $(seq 1 "$1"); do echo "      - {name: be$j, address: $(beaddr $j):80}"; done
}
{
	cat <<YAML
mode: kernel
log: {level: warn, access: off}
admin: {listen: 127.0.0.1:9911}
state_dir: $work/state-k
services:
YAML
	for t in k2 k100 k1000 src4 src1000 pay4 pay1000; do
		cat <<YAML
  - name: $t
    listen: $VIP:${PORT[$t]}
    client_ttl: 1h
    first_connection: proxy
    health: {check: none}
    # Every connection comes from a new address of one /17: the default
    # pin budget (1,024 new pins per /24 within client_ttl) would serve
    # most of them unpinned, and this measures pinning.
    pin_budget: {per_prefix: 0}
YAML
		case $t in
		pay*) printf '    classify: payload\n    payload: {pattern: %s}\n' "'^GET /(\\S+) '" ;;
		*) printf '    classify: source\n' ;;
		esac
		printf '    balance: maglev\n    backends:\n'
		backends "${NBE[$t]}"
	done
} >"$work/kernel.yaml"
userspace_yaml() { # port admin-port state
	cat <<YAML
mode: userspace
log: {level: warn, access: off}
admin: {listen: 127.0.0.1:$2}
state_dir: $work/$3
services:
  - {name: http, listen: $VIP:$1, max_connections: 100000, health: {check: none}, backends: [{name: be1, address: $(beaddr 1):80}]}
YAML
}
userspace_yaml 81 9912 state-u >"$work/userspace.yaml"
# The kernel daemon runs only when a kernel target is measured (its
# 3,000-backend config takes a while to set up).
KERNEL=
[[ " $TARGETS " =~ \ (k|src|pay)[0-9] ]] && KERNEL=1
if [ -n "$KERNEL" ]; then
	bg lb "$work/handoff" run -c "$work/kernel.yaml" --mode kernel 2>"$work/kernel.log"
	for t in k2 k100 k1000 src4 src1000 pay4 pay1000; do PIDS[$t]=$!; done
fi
bg lb "$work/handoff" run -c "$work/userspace.yaml" --mode userspace 2>"$work/userspace.log"
PIDS[userspace]=$!
if has baseline; then
	userspace_yaml 86 9913 state-b >"$work/baseline.yaml"
	bg lb "$BASELINE" run -c "$work/baseline.yaml" --mode userspace 2>"$work/baseline.log"
	PIDS[baseline]=$!
fi
hap() { # name splice? port
	local extra=""
	[ "$2" = 1 ] && extra="option splice-request
    option splice-response"
	cat >"$work/$1.cfg" <<HAP
global
    maxconn $MAXCONN
defaults
    mode tcp
    timeout connect 3s
    timeout client 10m
    timeout server 10m
    $extra
listen http
    bind $VIP:$3
    server be1 $(beaddr 1):80
HAP
	bg lb haproxy -f "$work/$1.cfg" -db
	PIDS[$1]=$!
}
has haproxy && hap haproxy 0 82
has haproxy-splice && hap haproxy-splice 1 83

# wait for the kernel daemon's admin API, then pin the client to the last
# backend of each kernel target
if [ -n "$KERNEL" ]; then
	for i in $(seq 300); do lb curl -sf -o /dev/null http://127.0.0.1:9911/readyz && break; sleep 0.1; done
	[ "$i" -lt 300 ] || { echo "bench-scale.sh: the kernel daemon is not ready:" >&2; tail "$work/kernel.log" >&2; exit 1; }
	for t in k2 k100 k1000; do
		lb "$work/handoff" pin --admin http://127.0.0.1:9911 --service $t $CLIENT "be${NBE[$t]}" >/dev/null
	done
fi
sleep 0.5

if [ -n "${HOLD:-}" ]; then
	echo "bench-scale.sh: lab up, daemons' shells: kernel ${PIDS[k2]:-none}, userspace ${PIDS[userspace]}; stop me to tear down" >&2
	sleep infinity &
	pids+=($!)
	wait $!
fi

clear_tw() {
	local n
	for n in hs-client hs-lb hs-be; do
		ip netns exec $n ss -K state time-wait >/dev/null 2>&1 || true
		ip netns exec $n conntrack -F >/dev/null 2>&1 || true
	done
}
# flush_pins SERVICE: empty the service's index and pin sets, so that every
# client address is new to it again
flush_pins() {
	lb ipset list -n | awk -v s="$1" '$0 == "hoi-" s || index($0, "ho-" s "-") == 1 {print "flush " $0}' | lb ipset restore
}
descendants() { local p; for p in "$@"; do echo "$p"; descendants $(pgrep -P "$p"); done; }
cpu_ticks() {
	local p sum=0
	for p in $(descendants "${PIDS[$1]}"); do
		sum=$((sum + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
	done
	echo $sum
}
HZ=$(getconf CLK_TCK)

measure() { # target -> "conn/s connections cpu-seconds"
	local t=$1 c0 c1 out
	clear_tw
	case $t in
	src* | pay*)
		flush_pins "$t"
		c0=$(cpu_ticks "$t")
		out=$(cl "$work/connload" -to $VIP:${PORT[$t]} -from $POOL -c 64 -d "${DUR}s" |
			awk '{if ($3 > 0) print "connload: " $3 " failed" > "/dev/stderr"; print ($2 > 0 ? $1 / $2 : 0), $1}') ;;
	*)
		c0=$(cpu_ticks "$t")
		out=$(cl wrk -t2 -c64 -d"${DUR}s" -H 'Connection: close' "http://$VIP:${PORT[$t]}/" 2>/dev/null |
			awk '/requests in/ {n = $1} /Requests\/sec/ {r = $2} END {print r + 0, n + 0}') ;;
	esac
	c1=$(cpu_ticks "$t")
	echo "$out $(awk -v d=$((c1 - c0)) -v hz="$HZ" 'BEGIN {print d / hz}')"
}

# The kernel daemon's own work with no traffic (its canary reads every
# chain and set header back every 10 s), which its targets' CPU includes.
IDLE=-
if [ -n "$KERNEL" ]; then
	c0=$(cpu_ticks k2)
	sleep 10
	IDLE=$(awk -v d=$(($(cpu_ticks k2) - c0)) -v hz="$HZ" 'BEGIN {printf "%.0f", d * 1000 / hz / 10}')
fi

declare -A R U V W # R: all rounds' conn/s; U: all rounds' us/conn; V, W: per round conn/s, us/conn
for r in $(seq 1 "$ROUNDS"); do
	for t in $TARGETS; do
		read -r v n c <<<"$(measure "$t")"
		v=${v:-0}
		u=$(awk -v c="$c" -v n="${n:-0}" 'BEGIN {if (n > 0) print c * 1e6 / n; else print 0}')
		R[$t]+="$v " U[$t]+="$u "
		V[$t,$r]=$v W[$t,$r]=$u
		printf 'round %d  %-15s %9.0f conn/s %7.1f us/conn\n' "$r" "$t" "$v" "$u" >&2
	done
done

median() { tr ' ' '\n' | awk NF | sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# rratio A B [per-round reference function]: median over rounds of A/B
rratio() {
	local a=$1 b=$2 rs="" r x y
	for r in $(seq 1 "$ROUNDS"); do
		x=${V[$a,$r]:-0}
		if [ "$b" = haproxy-best ]; then
			y=$(awk -v a="${V[haproxy,$r]:-0}" -v b="${V[haproxy-splice,$r]:-0}" 'BEGIN{print (a>b)?a:b}')
		else
			y=${V[$b,$r]:-0}
		fi
		rs+="$(awk -v a="$x" -v b="$y" 'BEGIN{if (b>0) print a/b}') "
	done
	echo "$rs" | median | awk '{printf "%.2f", $1}'
}

printf '\n%-15s %10s %10s   %s\n' target "conn/s" "us/conn" "(CPU of the proxy process; medians of $ROUNDS rounds, ${DUR}s each)"
for t in $TARGETS; do
	printf '%-15s %10.0f %10.1f\n' "$t" "$(echo "${R[$t]}" | median)" "$(echo "${U[$t]}" | median)"
done
[ "$IDLE" = - ] || echo "(the kernel daemon with no traffic: $IDLE ms of CPU per second, included in its targets' us/conn)"
echo
echo "ratios (median of the per-round ratios):"
pr() { has "$2" && { has "$3" || [ "$3" = haproxy-best ]; } && printf '  %-34s %s\n' "$1" "$(rratio "$2" "$3")"; return 0; }
pr "kernel N=1000 / N=2" k1000 k2
pr "kernel N=100 / N=2" k100 k2
pr "new clients, source, 1000 / 4" src1000 src4
pr "new clients, payload, 1000 / 4" pay1000 pay4
if has haproxy && has haproxy-splice; then
	pr "userspace / haproxy-best" userspace haproxy-best
	pr "baseline / haproxy-best" baseline haproxy-best
fi
pr "userspace / haproxy" userspace haproxy
pr "userspace / haproxy-splice" userspace haproxy-splice
pr "userspace / baseline" userspace baseline
# CPU per connection against HAProxy's variant with the better conn/s
if has userspace && has haproxy && has haproxy-splice; then
	best=haproxy
	[ "$(echo "${R[haproxy-splice]}" | median | awk '{printf "%d", $1}')" -gt "$(echo "${R[haproxy]}" | median | awk '{printf "%d", $1}')" ] && best=haproxy-splice
	printf '  %-34s %s\n' "userspace CPU/conn / $best" "$(awk -v a="$(echo "${U[userspace]}" | median)" -v b="$(echo "${U[$best]}" | median)" 'BEGIN{if (b>0) printf "%.2f", a/b}')"
fi
