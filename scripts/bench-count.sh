#!/usr/bin/env bash
# bench-count.sh: the per-packet cost of counting kernel-forwarded bytes
# (each service's counting set in filter, docs/how-it-works.md "Traffic
# counters"), side by side in one run.
#
# Lab (its own namespaces, hk-client, hk-lb and hk-be; nothing in the root
# namespace): the client 198.18.0.2, the VIP 198.18.0.1 in hk-lb, and
# hk-be owning 198.19.16.0/20 through a local route, with iperf3 on :5201
# and nginx on :80 answering on every address. One kernel-mode daemon
# serves four services, the client pinned to the LAST backend of each:
#   i2 i1000   iperf3 through a service of 2 or 1,000 backends
#   w2 w1000   nginx (wrk, Connection: close) through 2 or 1,000 backends
# Each figure is measured in two modes, alternating inside each round (the
# order flips every round):
#   count      the daemon's rules as they are: every forwarded packet takes
#              its service's rule in HANDOFF-FORWARD and its chain in
#              filter, whose rules look the packet up in the service's
#              counting set (hoc-<svc>, hash:ip,port with counters) by
#              destination, then by source, counting it against its
#              backend's entry
#   nocount    the same rules, plus a chain BENCH-MAIN jumped to first from
#              FORWARD holding what HANDOFF-FORWARD held before the counting
#              (one ACCEPT rule per service, same matches, same order): the
#              packets are accepted there and never reach the set
#   amp        (AMP=K > 0) count, plus K more passes of a copy of the
#              measured service's chain (BENCH-T-<svc>, its verdicts RETURN,
#              the same set) for every forwarded packet, first: (amp -
#              count) / K is the cost of one pass, above the machine's noise
# Metrics: iperf3 single stream and 8 streams (Gb/s) and wrk's connection
# rate, each the median of ROUNDS rounds with the median of the per-round
# count/nocount ratios; the host's kernel CPU (system+irq+softirq from
# /proc/stat: the forwarding, both TCP stacks, iperf3's and nginx's system
# calls) per GB moved and per connection. Before every run TIME_WAIT
# sockets are killed and conntrack is flushed in all three namespaces.
# The mode switch is checked: the measured backend's entry in the counting
# set must grow in count mode and stay in nocount mode.
#
# Usage: sudo [AMP=K] [MODES="nocount count amp"] [RUNS="i2:tput1 …"] scripts/bench-count.sh [ROUNDS=3] [SECONDS=4]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
ROUNDS=${1:-3}
DUR=${2:-4}
[ "$(id -u)" -eq 0 ] || { echo "bench-count.sh: run as root" >&2; exit 1; }
need=()
for c in wrk iperf3 nginx ipset conntrack jq; do command -v $c >/dev/null || need+=($c); done
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

VIP=198.18.0.1 CLIENT=198.18.0.2
work=$(mktemp -d)
pids=()
lab_down() {
	local n pid
	for n in hk-client hk-lb hk-be; do
		[ -e "/run/netns/$n" ] || continue
		for pid in $(ip netns pids $n 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
		ip netns del $n
	done
}
cleanup() {
	set +e
	trap - INT TERM
	exec 2>/dev/null
	{
		lab_down
		for p in "${pids[@]}"; do kill "$p"; done
		for p in "${pids[@]}"; do wait "$p"; done
	} >/dev/null 2>&1
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bg() { "$@" & pids+=($!); }
lb() { ip netns exec hk-lb "$@"; }
cl() { ip netns exec hk-client "$@"; }
be() { ip netns exec hk-be "$@"; }
beaddr() { echo "198.19.$((16 + $1 / 256)).$(($1 % 256))"; }

go build -o "$work/handoff" ./cmd/handoff

lab_down
for n in hk-client hk-lb hk-be; do ip netns add $n; ip netns exec $n ip link set lo up; done
ip link add hk-c0 netns hk-client type veth peer name hk-c1 netns hk-lb
ip link add hk-b0 netns hk-be type veth peer name hk-b1 netns hk-lb
cl ip link set hk-c0 up
cl ip addr add $CLIENT/24 dev hk-c0
cl ip route add default via $VIP
lb ip link set hk-c1 up
lb ip link set hk-b1 up
lb ip addr add $VIP/24 dev hk-c1
lb ip addr add 198.19.0.1/24 dev hk-b1
lb ip route add 198.19.16.0/20 via 198.19.0.2
lb sysctl -qw net.ipv4.ip_forward=1
be ip link set hk-b0 up
be ip addr add 198.19.0.2/24 dev hk-b0
be ip route add default via 198.19.0.1
be ip route add local 198.19.16.0/20 dev lo

mkdir -p "$work/ngx"
cat >"$work/ngx/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/ngx/pid; error_log $work/ngx/err.log;
events { worker_connections 8192; }
http { access_log off; server { listen 80 reuseport backlog=4096; location / { return 200 "ok\n"; } } }
NGX
bg be nginx -c "$work/ngx/nginx.conf" -e "$work/ngx/err.log"

declare -A PORT=([i2]=5202 [i1000]=6000 [w2]=1002 [w1000]=2000)
declare -A NBE=([i2]=2 [i1000]=1000 [w2]=2 [w1000]=1000)
declare -A BEPORT=([i2]=5201 [i1000]=5201 [w2]=80 [w1000]=80)
{
	cat <<YAML
mode: kernel
log: {level: warn}
admin: {listen: 127.0.0.1:9911}
state_dir: $work/state
services:
YAML
	for t in i1000 i2 w1000 w2; do
		printf '  - name: %s\n    listen: %s:%s\n    client_ttl: 1h\n    first_connection: proxy\n    health: {check: none}\n    backends:\n' "$t" $VIP "${PORT[$t]}"
		for j in $(seq 1 "${NBE[$t]}"); do echo "      - {name: be$j, address: $(beaddr "$j"):${BEPORT[$t]}}"; done
	done
} >"$work/kernel.yaml"
bg lb "$work/handoff" run -c "$work/kernel.yaml" --mode kernel 2>"$work/kernel.log"
for i in $(seq 300); do lb curl -sf -o /dev/null http://127.0.0.1:9911/readyz && break; sleep 0.1; done
[ "$i" -lt 300 ] || { echo "bench-count.sh: the daemon is not ready:" >&2; tail "$work/kernel.log" >&2; exit 1; }
for t in i1000 i2 w1000 w2; do
	lb "$work/handoff" pin --admin http://127.0.0.1:9911 --service $t $CLIENT "be${NBE[$t]}" >/dev/null
done

# BENCH-MAIN: HANDOFF-FORWARD as it was before the counting, in the same
# order (services sorted by name).
{
	echo "*filter"
	echo ":BENCH-MAIN - [0:0]"
	for t in i1000 i2 w1000 w2; do
		echo "-A BENCH-MAIN -p tcp -m conntrack --ctstate DNAT --ctproto tcp --ctorigdst $VIP/32 --ctorigdstport ${PORT[$t]} -j ACCEPT"
	done
	echo "COMMIT"
} | lb iptables-restore --noflush
AMP=${AMP:-0}
MODES=${MODES:-nocount count}
if [ "$AMP" -gt 0 ] && [[ " $MODES " != *" amp "* ]]; then MODES="$MODES amp"; fi
if [[ " $MODES " == *" amp "* ]]; then
	{
		echo "*filter"
		for t in i1000 i2 w1000 w2; do
			echo ":BENCH-T-$t - [0:0]"
			echo ":BENCH-AMP-$t - [0:0]"
			lb iptables-save -t filter | grep -E "^-A HO-SVC-$t " |
				sed -E "s/^-A HO-SVC-$t /-A BENCH-T-$t /; s/-m comment --comment \"[^\"]*\" //; s/-j ACCEPT\$/-j RETURN/"
			for _ in $(seq "$AMP"); do echo "-A BENCH-AMP-$t -j BENCH-T-$t"; done
		done
		echo "COMMIT"
	} | lb iptables-restore --noflush
fi
mode() { # MODE SERVICE
	local c
	for c in BENCH-MAIN BENCH-AMP-i1000 BENCH-AMP-i2 BENCH-AMP-w1000 BENCH-AMP-w2; do
		lb iptables -D FORWARD -m comment --comment bench-mode -j $c 2>/dev/null || true
	done
	case $1 in
	nocount) lb iptables -I FORWARD 1 -m comment --comment bench-mode -j BENCH-MAIN ;;
	amp) lb iptables -I FORWARD 1 -m comment --comment bench-mode -j "BENCH-AMP-$2" ;;
	esac
}
# set_bytes SERVICE: the bytes of the pinned backend's entry in hoc-SERVICE
set_bytes() {
	lb ipset list "hoc-$1" | awk -v e="$(beaddr "${NBE[$1]}"),tcp:${BEPORT[$1]}" '$1 == e {for (i = 2; i < NF; i++) if ($i == "bytes") print $(i + 1)}'
}

clear_tw() {
	local n
	for n in hk-client hk-lb hk-be; do
		ip netns exec $n ss -K state time-wait >/dev/null 2>&1 || true
		ip netns exec $n conntrack -F >/dev/null 2>&1 || true
	done
}
iperf_server() {
	[ -s "$work/iperf.pid" ] && kill "$(cat "$work/iperf.pid")" 2>/dev/null && sleep 0.2
	be iperf3 -s -p 5201 -D --pidfile "$work/iperf.pid" >/dev/null 2>&1
	sleep 0.3
}
# kernel_ticks: system+irq+softirq ticks of every CPU so far
kernel_ticks() { awk '/^cpu / {print $4 + $7 + $8; exit}' /proc/stat; }
HZ=$(getconf CLK_TCK)

measure() { # target metric -> "value work kernel-cpu-seconds counted-bytes"
	local t=$1 m=$2 k0 k1 b0 b1 out p=1
	clear_tw
	[ "$m" = tput8 ] && p=8
	case $m in
	tput1 | tput8) iperf_server ;;
	esac
	b0=$(set_bytes "$t")
	k0=$(kernel_ticks)
	case $m in
	tput1 | tput8)
		out=$(cl iperf3 -c $VIP -p "${PORT[$t]}" -t "$DUR" -P $p -J 2>/dev/null |
			jq -r '"\((.end.sum_received.bits_per_second // 0) / 1e9) \(.end.sum_received.bytes // 0)"') ;;
	connrate)
		out=$(cl wrk -t2 -c64 -d"${DUR}s" -H 'Connection: close' "http://$VIP:${PORT[$t]}/" 2>/dev/null |
			awk '/requests in/ {n = $1} /Requests\/sec/ {r = $2} END {print r + 0, n + 0}') ;;
	esac
	k1=$(kernel_ticks)
	b1=$(set_bytes "$t")
	echo "$out $(awk -v d=$((k1 - k0)) -v hz="$HZ" 'BEGIN {print d / hz}') $((b1 - b0))"
}

RUNS=${RUNS:-"i2:tput1 i2:tput8 i1000:tput1 i1000:tput8 w2:connrate w1000:connrate"}
declare -A V W C
bad=0
for r in $(seq 1 "$ROUNDS"); do
	modes=$MODES
	[ $((r % 2)) = 0 ] && modes=$(echo $MODES | tr ' ' '\n' | tac | tr '\n' ' ')
	for run in $RUNS; do
		t=${run%%:*} m=${run#*:}
		for md in $modes; do
			mode "$md" "$t"
			read -r v w c n <<<"$(measure "$t" "$m")"
			V[$run,$md,$r]=${v:-0} W[$run,$md,$r]=${w:-0} C[$run,$md,$r]=${c:-0}
			# the switch works: the set counts in count mode only
			if { [ "$md" != nocount ] && [ "${n:-0}" -le 0 ]; } || { [ "$md" = nocount ] && [ "${n:-0}" -ne 0 ]; }; then
				echo "bench-count.sh: $t $md: the backend's counting set entry counted $n bytes" >&2
				bad=1
			fi
			printf 'round %d  %-6s %-9s %-8s %12s  kernel CPU %6.2fs  counted %s bytes\n' "$r" "$t" "$m" "$md" "$v" "$c" "$n" >&2
		done
	done
done
mode count

median() { tr ' ' '\n' | awk NF | sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
col() { # run mode field(V|C-per-work) -> median over rounds
	local run=$1 md=$2 f=$3 r s=""
	for r in $(seq 1 "$ROUNDS"); do
		case $f in
		V) s+="${V[$run,$md,$r]:-0} " ;;
		cpu) s+="$(awk -v c="${C[$run,$md,$r]:-0}" -v w="${W[$run,$md,$r]:-0}" -v m="${run#*:}" 'BEGIN {if (w > 0) print (m == "connrate" ? c * 1e6 / w : c * 1e9 / w)}') " ;;
		esac
	done
	echo "$s" | median
}
ratio() { # run field [A B] -> median over rounds of A/B (count/nocount)
	local run=$1 f=$2 ma=${3:-count} mb=${4:-nocount} r s="" a b
	for r in $(seq 1 "$ROUNDS"); do
		if [ "$f" = V ]; then
			a=${V[$run,$ma,$r]:-0} b=${V[$run,$mb,$r]:-0}
		else
			a=$(awk -v c="${C[$run,$ma,$r]:-0}" -v w="${W[$run,$ma,$r]:-0}" 'BEGIN {if (w > 0) print c / w}')
			b=$(awk -v c="${C[$run,$mb,$r]:-0}" -v w="${W[$run,$mb,$r]:-0}" 'BEGIN {if (w > 0) print c / w}')
		fi
		s+="$(awk -v a="$a" -v b="$b" 'BEGIN {if (b > 0) print a / b}') "
	done
	echo "$s" | median
}
printf '\n%-16s %12s %12s %7s   %14s %14s %7s\n' "run" "nocount" "count" "ratio" "kCPU nocount" "kCPU count" "ratio"
printf '%-16s %12s %12s %7s   %14s %14s %7s\n' "" "(Gb/s|conn/s)" "" "" "(s/GB|us/conn)" "" ""
for run in $RUNS; do
	printf '%-16s %12.2f %12.2f %7.3f   %14.2f %14.2f %7.3f\n' "$run" \
		"$(col "$run" nocount V)" "$(col "$run" count V)" "$(ratio "$run" V)" \
		"$(col "$run" nocount cpu)" "$(col "$run" count cpu)" "$(ratio "$run" cpu)"
done
echo "(medians of $ROUNDS rounds of ${DUR}s; ratios are count/nocount, the median of the per-round ratios)"
if [ "$AMP" -gt 0 ]; then
	# one walk's kernel CPU: (amp - count) / AMP, per GB and per connection,
	# the median of the rounds' differences; and as a share of count's
	printf '\n%-22s %12s %16s %18s\n' "run" "amp value" "kCPU amp" "one pass's kCPU"
	for run in $RUNS; do
		for pair in amp:count; do
			a=${pair%:*} b=${pair#*:}
			[[ " $MODES " == *" $a "* ]] || continue
			s=""
			for r in $(seq 1 "$ROUNDS"); do
				s+="$(awk -v ca="${C[$run,$a,$r]}" -v wa="${W[$run,$a,$r]}" -v cc="${C[$run,$b,$r]}" -v wc="${W[$run,$b,$r]}" -v k="$AMP" -v m="${run#*:}" \
					'BEGIN {u = (m == "connrate") ? 1e6 : 1e9; if (wa > 0 && wc > 0) print (ca / wa - cc / wc) * u / k}') "
			done
			w=$(echo "$s" | median)
			printf '%-22s %12.2f %16.2f %12.3f (%.1f%%)\n' "$run $a" "$(col "$run" $a V)" "$(col "$run" $a cpu)" "$w" \
				"$(awk -v w="$w" -v c="$(col "$run" $b cpu)" 'BEGIN {if (c > 0) print 100 * w / c}')"
		done
	done
	echo "(s/GB for throughput, us/conn for connections; the share is of count's kernel CPU)"
fi
exit $bad
