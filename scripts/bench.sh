#!/usr/bin/env bash
# bench.sh: side-by-side performance in the namespace lab, in one run.
#
# Targets, all in front of the same backend (ho-be1: nginx on :80, iperf3 on :5201):
#   direct          client -> backend, routed through ho-lb (no balancer)
#   dnat            one plain iptables DNAT rule (the kernel path's floor)
#   kernel          handoff kernel mode (client pinned; ipset + DNAT)
#   userspace       handoff userspace mode (splice proxy)
#   haproxy         HAProxy mode tcp, at its default thread count (one per CPU)
#   haproxy-splice  HAProxy mode tcp + option splice-request/splice-response
#   nginx           nginx stream, worker_processes auto
#   bare            scripts/bareproxy: the minimal Go splice proxy (io.Copy
#                   between the raw TCP conns) that issue 3's targets were
#                   set against; the floor a Go proxy reaches
#   baseline        another handoff binary (BASELINE=path) in userspace mode, to
#                   compare a change side by side; add it to TARGETS
# handoff runs with its access log off, as HAProxy and nginx run without logs.
# Metrics: iperf3 throughput with 1 and 8 streams, and wrk new-connection rate
# (HTTP with Connection: close). Targets alternate inside each round; each
# figure is the median of ROUNDS rounds; ratios are vs direct and vs HAProxy.
# A second table gives, for the proxies, the median over rounds of each
# round's ratio to HAProxy (robust when the machine's load drifts between
# rounds), and the proxy process's own CPU time (utime+stime from
# /proc/PID/stat, its threads and workers included) per GB moved and per
# connection. Softirq work done on behalf of a process may be charged to it;
# the in-kernel targets have no process to charge.
# TIME_WAIT sockets and the lab's conntrack entries are cleared between runs
# (PAWS and reused NAT tuples would skew connection rates).
#
# The medians go to docs/benchmarks/latest.tsv (RESULTS=file elsewhere,
# RESULTS= nowhere) and their chart to latest.svg beside it
# (scripts/benchchart), which docs/benchmarks.md shows.
#
# Usage: sudo [TARGETS="..."] [BASELINE=old-handoff] [RESULTS=file] scripts/bench.sh [ROUNDS=3] [SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
ROUNDS=${1:-3}
DUR=${2:-5}
TARGETS=${TARGETS:-"direct dnat kernel userspace haproxy haproxy-splice nginx bare"}
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
need=()
for c in wrk iperf3 haproxy nginx jq; do command -v $c >/dev/null || need+=($c); done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# HAProxy sizes its FD needs from maxconn: raise the limit where allowed and
# keep maxconn within it
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
MAXCONN=$(( $(ulimit -n) / 3 ))
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	[ -s "$work/iperf.pid" ] && kill "$(cat "$work/iperf.pid")" 2>/dev/null
	wait 2>/dev/null || true
	LAB_BACKENDS=1 scripts/lab.sh down >/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
bg() { "$@" & pids+=($!); }
declare -A PIDS # target -> processes that do its work
lb() { ip netns exec ho-lb "$@"; }
cl() { ip netns exec ho-client "$@"; }

go build -o "$work/handoff" ./cmd/handoff
go build -o "$work/bareproxy" ./scripts/bareproxy
LAB_BACKENDS=1 LAB_CLIENTS=2 scripts/lab.sh up >/dev/null
BE=198.19.1.11 VIP=198.18.0.1

# backend: nginx answering a tiny HTTP response, and iperf3
mkdir -p "$work/ngx-be"
cat >"$work/ngx-be/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/ngx-be/pid; error_log $work/ngx-be/err.log;
events { worker_connections 4096; }
http { access_log off; server { listen 80 reuseport backlog=4096; location / { return 200 "ok\n"; } } }
NGX
bg ip netns exec ho-be1 nginx -c "$work/ngx-be/nginx.conf" -e "$work/ngx-be/err.log"

# ports per target: http iperf
declare -A HP=([direct]=80 [dnat]=85 [kernel]=80 [userspace]=81 [haproxy]=82 [haproxy-splice]=83 [nginx]=84 [baseline]=86 [bare]=87)
declare -A IP=([direct]=5201 [dnat]=5206 [kernel]=5201 [userspace]=5202 [haproxy]=5203 [haproxy-splice]=5204 [nginx]=5205 [baseline]=5207 [bare]=5208)
addr() { [ "$1" = direct ] && echo $BE || echo $VIP; }

cat >"$work/kernel.yaml" <<YAML
mode: kernel
log: {level: warn, access: off}
admin: {listen: 127.0.0.1:9901}
state_dir: $work/state-k
services:
  - {name: http, listen: $VIP:80, client_ttl: 1h, health: {check: none}, backends: [{name: be1, address: $BE:80}]}
  - {name: iperf, listen: $VIP:5201, client_ttl: 1h, health: {check: none}, backends: [{name: be1, address: $BE:5201}]}
YAML
cat >"$work/userspace.yaml" <<YAML
mode: userspace
log: {level: warn, access: off}
admin: {listen: 127.0.0.1:9902}
state_dir: $work/state-u
services:
  - {name: http, listen: $VIP:81, max_connections: 100000, health: {check: none}, backends: [{name: be1, address: $BE:80}]}
  - {name: iperf, listen: $VIP:5202, health: {check: none}, backends: [{name: be1, address: $BE:5201}]}
YAML
bg lb "$work/handoff" run -c "$work/kernel.yaml" --mode kernel
bg lb "$work/handoff" run -c "$work/userspace.yaml" --mode userspace
PIDS[userspace]=$!
if [[ " $TARGETS " == *" baseline "* ]]; then
	[ -x "${BASELINE:-}" ] || { echo "bench.sh: target baseline needs BASELINE=path/to/handoff" >&2; exit 1; }
	sed -e "s/:81,/:86,/" -e "s/:5202,/:5207,/" -e "s/9902/9903/" -e "s/state-u/state-b/" "$work/userspace.yaml" >"$work/baseline.yaml"
	bg lb "$BASELINE" run -c "$work/baseline.yaml" --mode userspace
	PIDS[baseline]=$!
fi

# raw DNAT reference, in the lab's balancer namespace only
for p in 85:80 5206:5201; do
	lb iptables -t nat -A PREROUTING -d $VIP -p tcp --dport ${p%:*} -j DNAT --to-destination $BE:${p#*:}
done

hap() { # name splice? http-port iperf-port
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
    server be1 $BE:80
listen iperf
    bind $VIP:$4
    server be1 $BE:5201
HAP
	bg lb haproxy -f "$work/$1.cfg" -db
	PIDS[$1]=$!
}
hap haproxy 0 82 5203
hap haproxy-splice 1 83 5204
mkdir -p "$work/ngx-lb"
cat >"$work/ngx-lb/nginx.conf" <<NGX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto; daemon off; pid $work/ngx-lb/pid; error_log $work/ngx-lb/err.log;
events { worker_connections 100000; }
stream {
  server { listen $VIP:84 reuseport; proxy_pass $BE:80; }
  server { listen $VIP:5205; proxy_pass $BE:5201; }
}
NGX
bg lb nginx -c "$work/ngx-lb/nginx.conf" -e "$work/ngx-lb/err.log"
PIDS[nginx]=$!
bg lb "$work/bareproxy" $VIP:87 $BE:80 $VIP:5208 $BE:5201
PIDS[bare]=$!
sleep 1.5

# Pin the client in kernel mode: its first connection is reset, later ones are DNATed.
cl curl -s -m 2 -o /dev/null "http://$VIP/" || true
cl curl -s -m 2 -o /dev/null "http://$VIP:5201/" || true
sleep 0.2

# Between runs, for every target alike: kill TIME_WAIT sockets and flush the
# lab's conntrack tables. One client churning ports reuses 4-tuples; a new
# SYN meeting the previous run's TIME_WAIT conntrack entry of a NATed tuple
# costs the DNAT targets ~3x in connection rate (measured: raw DNAT 0.3x
# direct without the flush, 1.0x with it). Pins live in ipsets, not conntrack.
clear_tw() {
	for n in ho-client ho-lb ho-be1; do
		ip netns exec $n ss -K state time-wait >/dev/null 2>&1 || true
		ip netns exec $n conntrack -F >/dev/null 2>&1 || true
	done
}

# a fresh iperf3 server per run (a server wedged by a failed run would skew the next)
iperf_server() {
	[ -s "$work/iperf.pid" ] && kill "$(cat "$work/iperf.pid")" 2>/dev/null && sleep 0.2
	ip netns exec ho-be1 iperf3 -s -p 5201 -D --pidfile "$work/iperf.pid" >/dev/null 2>&1
	sleep 0.3
}

# cpu_ticks TARGET: user+system clock ticks used so far by the target's
# processes (empty for the in-kernel targets). PIDS holds the shells that bg
# started; the work is done by their descendants.
cpu_ticks() {
	local p sum=0
	[ -n "${PIDS[$1]:-}" ] || return 0
	for p in $(descendants ${PIDS[$1]}); do
		sum=$((sum + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0)))
	done
	echo $sum
}
descendants() { local p; for p in "$@"; do echo "$p"; descendants $(pgrep -P "$p"); done; }
HZ=$(getconf CLK_TCK)

measure() { # target metric -> "value work cpu-seconds" (work: bytes or connections)
	local t=$1 m=$2 a c0 c1 out
	a=$(addr "$t")
	clear_tw
	case $m in
	tput1 | tput8)
		iperf_server
		local p=1; [ $m = tput8 ] && p=8
		c0=$(cpu_ticks "$t")
		out=$(cl iperf3 -c "$a" -p "${IP[$t]}" -t "$DUR" -P $p -J 2>/dev/null |
			jq -r '"\((.end.sum_received.bits_per_second // 0) / 1e9) \(.end.sum_received.bytes // 0)"') ;;
	connrate)
		c0=$(cpu_ticks "$t")
		out=$(cl wrk -t2 -c64 -d"${DUR}s" -H 'Connection: close' "http://$a:${HP[$t]}/" 2>/dev/null |
			awk '/requests in/ {n = $1} /Requests\/sec/ {r = $2} END {print r + 0, n + 0}') ;;
	esac
	c1=$(cpu_ticks "$t")
	if [ -n "$c0" ]; then
		echo "$out $(awk -v d=$((c1 - c0)) -v hz="$HZ" 'BEGIN {print d / hz}')"
	else
		echo "$out -"
	fi
}

declare -A R V W C # R: all rounds' values; V, W, C: per round value, work, cpu
for r in $(seq 1 "$ROUNDS"); do
	for m in tput1 tput8 connrate; do
		for t in $TARGETS; do
			read -r v w c <<<"$(measure "$t" "$m")"
			v=${v:-0}
			R[$t,$m]+="$v "
			V[$t,$m,$r]=$v W[$t,$m,$r]=${w:-0} C[$t,$m,$r]=${c:--}
			printf 'round %d  %-9s %-15s %s\n' "$r" "$m" "$t" "$v" >&2
		done
	done
done

has() { [[ " $TARGETS " == *" $1 "* ]]; }
median() { tr ' ' '\n' | awk NF | sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
printf '\n%-15s %14s %14s %16s   %s\n' target "tput 1 (Gb/s)" "tput 8 (Gb/s)" "conn/s (close)" "ratios vs direct | vs haproxy-best | conn/s vs haproxy"
declare -A M
for t in $TARGETS; do for m in tput1 tput8 connrate; do M[$t,$m]=$(echo "${R[$t,$m]}" | median); done; done
best() { awk -v a="${M[haproxy,$1]:-0}" -v b="${M[haproxy-splice,$1]:-0}" 'BEGIN{print (a>b)?a:b}'; }
ratio() { awk -v a="$1" -v b="${2:-0}" 'BEGIN{ if (b>0) printf "%.2f", a/b; else printf "-" }'; }
for t in $TARGETS; do
	printf '%-15s %14.2f %14.2f %16.0f   %s %s %s | %s %s %s | %s\n' "$t" "${M[$t,tput1]}" "${M[$t,tput8]}" "${M[$t,connrate]}" \
		"$(ratio "${M[$t,tput1]}" "${M[direct,tput1]:-}")" "$(ratio "${M[$t,tput8]}" "${M[direct,tput8]:-}")" "$(ratio "${M[$t,connrate]}" "${M[direct,connrate]:-}")" \
		"$(ratio "${M[$t,tput1]}" "$(best tput1)")" "$(ratio "${M[$t,tput8]}" "$(best tput8)")" "$(ratio "${M[$t,connrate]}" "$(best connrate)")" \
		"$(ratio "${M[$t,connrate]}" "${M[haproxy,connrate]:-}")"
done
echo "(median of $ROUNDS rounds, ${DUR}s each; ratios: tput1 tput8 connrate; haproxy-best: the better of haproxy"
echo " and haproxy-splice per metric; the last column is the connection rate against haproxy's default mode tcp)"

# The medians, for the chart of docs/benchmarks.md (drawn by
# scripts/benchchart); RESULTS= (empty) keeps the docs' copy untouched.
results=${RESULTS-docs/benchmarks/latest.tsv}
if [ -n "$results" ]; then
	mkdir -p "$(dirname "$results")"
	{
		echo "# date: $(date -u +%Y-%m-%d)"
		echo "# rounds: $ROUNDS x ${DUR}s"
		echo "# commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo +changes)"
		echo "# host: $(nproc) CPUs, Linux $(uname -r)"
		echo "target tput1 tput8 connrate"
		for t in $TARGETS; do
			printf '%s %.2f %.2f %.0f\n' "$t" "${M[$t,tput1]}" "${M[$t,tput8]}" "${M[$t,connrate]}"
		done
	} >"$results"
	go run ./scripts/benchchart -o "${results%.tsv}.svg" "$results"
	echo "(medians in $results, chart in ${results%.tsv}.svg)"
fi

# Per-round ratios to HAProxy (the better of haproxy and haproxy-splice in
# that round, and the connection rate against haproxy alone, as above), and
# the proxies' CPU: median over rounds of ms per GB received and us per
# connection.
if has haproxy || has haproxy-splice; then
	printf '\n%-15s %38s   %26s\n' proxy "per-round ratio vs haproxy-best | haproxy" "CPU ms/GB (1, 8) us/conn"
	for t in $TARGETS; do
		[ -n "${PIDS[$t]:-}" ] || continue
		rat=() cpu=()
		for m in tput1 tput8 connrate conn-default; do
			rs="" cs=""
			for r in $(seq 1 "$ROUNDS"); do
				if [ $m = conn-default ]; then
					rs+="$(awk -v a="${V[$t,connrate,$r]}" -v b="${V[haproxy,connrate,$r]:-0}" 'BEGIN{if (b>0) print a/b}') "
					continue
				fi
				ref=$(awk -v a="${V[haproxy,$m,$r]:-0}" -v b="${V[haproxy-splice,$m,$r]:-0}" 'BEGIN{print (a>b)?a:b}')
				rs+="$(awk -v a="${V[$t,$m,$r]}" -v b="$ref" 'BEGIN{if (b>0) print a/b}') "
				cs+="$(awk -v c="${C[$t,$m,$r]}" -v w="${W[$t,$m,$r]}" -v m=$m 'BEGIN{
					if (c == "-" || w <= 0) exit
					if (m == "connrate") print c * 1e6 / w; else print c * 1e3 / (w / 1e9) }') "
			done
			if [ $m = conn-default ] && ! has haproxy; then
				rat+=(-)
			else
				rat+=("$(echo "$rs" | median | awk '{printf "%.2f", $1}')")
			fi
			[ $m = conn-default ] || cpu+=("$(echo "$cs" | median)")
		done
		printf '%-15s %9s %9s %9s | %9s   %8.0f %8.0f %8.1f\n' "$t" "${rat[@]}" "${cpu[@]}"
	done
	echo "(ratios: tput1 tput8 connrate vs haproxy-best | connrate vs haproxy; medians of $ROUNDS rounds)"
fi
