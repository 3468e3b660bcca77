#!/usr/bin/env bash
# cluster-demo.sh: an active/backup pair of handoff hosts in network
# namespaces, with etcd (shared pins), keepalived (one VRRP sync group: the
# client VIP and the backends' gateway) and conntrackd (FTFW) from
# deploy/cluster/. It pins clients through lb1, opens a long-lived session
# that lb1's kernel forwards, kills lb1 (links cut, processes SIGKILLed),
# and shows the session going on through lb2, the VIP answering again, and
# every pinned client reaching its backend in lb2's kernel with no new
# classification. Then it deletes everything it made. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"
[ "$(id -u)" -eq 0 ] || { echo "cluster-demo.sh: run as root (it builds network namespaces)" >&2; exit 1; }
need=()
for c in socat etcd keepalived conntrackd ipset iptables conntrack; do command -v $c >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat etcd-server keepalived conntrackd ipset iptables conntrack >/dev/null
fi

ns=(hod-cli hod-rtr hod-lb1 hod-lb2 hod-bk)
work=$(mktemp -d /run/hod-XXXXXX) # keepalived runs scripts only from paths no other user can write
pids=()
cleanup() {
	local rc=$?
	if [ $rc -ne 0 ]; then
		echo "cluster-demo.sh failed; the logs of what it started:" >&2
		for f in "$work"/bg-*.log; do [ -s "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
	fi
	for p in "${pids[@]}"; do kill -9 -- "-$p" 2>/dev/null || kill -9 "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for n in "${ns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
nx() { local n=$1; shift; ip netns exec "hod-$n" "$@"; }
nbg=0
bg() { nbg=$((nbg + 1)); local n=$1; shift; setsid ip netns exec "hod-$n" "$@" >>"$work/bg-$nbg.log" 2>&1 & pids+=($!); disown; }

say "build"
go build -o "$work/handoff" ./cmd/handoff

say "namespaces: client, router (etcd), lb1, lb2, backends"
for n in "${ns[@]}"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n hod-cli link add eth0 type veth peer name cli0 netns hod-rtr
ip -n hod-cli addr add 198.18.0.2/24 dev eth0; ip -n hod-cli addr add 198.18.0.3/24 dev eth0; ip -n hod-cli addr add 198.18.0.4/24 dev eth0
ip -n hod-cli link set eth0 up; ip -n hod-cli route add default via 198.18.0.1 2>/dev/null || true
ip -n hod-rtr addr add 198.18.0.1/24 dev cli0; ip -n hod-rtr link set cli0 up
ip -n hod-cli route replace default via 198.18.0.1
ip -n hod-rtr link add front type bridge; ip -n hod-rtr addr add 198.18.10.1/24 dev front; ip -n hod-rtr link set front up
ip -n hod-bk link add back type bridge
for i in 11 12 13; do ip -n hod-bk addr add 198.19.1.$i/24 dev back; done
ip -n hod-bk link set back up; ip -n hod-bk route add default via 198.19.1.1 onlink dev back
for n in 1 2; do
	ip -n hod-lb$n link add front0 type veth peer name fr$n netns hod-rtr
	ip -n hod-rtr link set fr$n master front up
	ip -n hod-lb$n addr add 198.18.10.1$n/24 dev front0; ip -n hod-lb$n link set front0 up
	ip -n hod-lb$n link add back0 type veth peer name bk$n netns hod-bk
	ip -n hod-bk link set bk$n master back up
	ip -n hod-lb$n addr add 198.19.1.$((n + 1))/24 dev back0; ip -n hod-lb$n link set back0 up
	ip -n hod-lb$n route add 198.18.0.0/16 via 198.18.10.1
	nx lb$n sysctl -qw net.ipv4.ip_forward=1 net.netfilter.nf_conntrack_tcp_be_liberal=1 2>/dev/null ||
		{ nx lb$n sysctl -qw net.ipv4.ip_forward=1; modprobe nf_conntrack 2>/dev/null || true; nx lb$n sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=1; }
done
nx rtr sysctl -qw net.ipv4.ip_forward=1
ip -n hod-lb1 link add sync0 type veth peer name sync0 netns hod-lb2
ip -n hod-lb1 addr add 198.18.20.1/30 dev sync0; ip -n hod-lb2 addr add 198.18.20.2/30 dev sync0
ip -n hod-lb1 link set sync0 up; ip -n hod-lb2 link set sync0 up
sleep 1

say "backends be1..be3 (each greets with its name and the client it sees, then echoes)"
for i in 1 2 3; do
	bg bk socat TCP-LISTEN:80,bind=198.19.1.1$i,fork,reuseaddr SYSTEM:"echo be$i saw \$SOCAT_PEERADDR; cat"
done

say "etcd on 198.18.10.1:2379 (in the router's namespace)"
bg rtr etcd --name demo --data-dir "$work/etcd" --listen-client-urls http://198.18.10.1:2379 \
	--advertise-client-urls http://198.18.10.1:2379 --listen-peer-urls http://198.18.10.1:2380 \
	--initial-advertise-peer-urls http://198.18.10.1:2380 --initial-cluster demo=http://198.18.10.1:2380 --log-level error
for _ in $(seq 100); do nx rtr etcdctl --endpoints http://198.18.10.1:2379 endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

# The deploy/cluster files, with lb2's changes and this demo's paths.
cp deploy/cluster/handoff-notify.sh "$work/"; chmod 700 "$work/handoff-notify.sh"
for n in 1 2; do
	sed -e "s#/etc/handoff/cluster/handoff-notify.sh#$work/handoff-notify.sh#" deploy/cluster/keepalived.conf >"$work/keepalived-lb$n.conf"
	sed -e "s#/run/handoff-conntrackd#$work/conntrackd-lb$n#" deploy/cluster/conntrackd.conf >"$work/conntrackd-lb$n.conf"
	sed -e "s#/var/lib/handoff#$work/state-lb$n#" -e "s/node: lb1/node: lb$n/" deploy/cluster/lb1.yaml >"$work/handoff-lb$n.yaml"
	printf 'admin: {listen: 127.0.0.1:9900}\n' >>"$work/handoff-lb$n.yaml"
done
sed -i -e 's/router_id lb1/router_id lb2/' -e 's/priority 150/priority 100/' "$work/keepalived-lb2.conf"
sed -i -e 's/IPv4_address 198.18.20.1 /IPv4_address 198.18.20.X /' -e 's/IPv4_Destination_Address 198.18.20.2/IPv4_Destination_Address 198.18.20.1/' \
	-e 's/198.18.20.X/198.18.20.2/' "$work/conntrackd-lb2.conf"

say "conntrackd and handoff on both hosts; lb2 listens on the VIP before holding it (IP_FREEBIND)"
for n in 1 2; do
	bg lb$n conntrackd -C "$work/conntrackd-lb$n.conf"
	bg lb$n "$work/handoff" run -c "$work/handoff-lb$n.yaml"
done
for n in 1 2; do for _ in $(seq 100); do nx lb$n ss -ltn | grep -q 198.18.10.100:80 && break; sleep 0.1; done; done
nx lb2 ss -ltn | grep 198.18.10.100:80 | sed 's/^/  lb2: /'

say "keepalived: lb1 first (priority 150), then lb2"
start_keepalived() {
	bg lb$1 env CONNTRACKD_CONFIG="$work/conntrackd-lb$1.conf" keepalived --dont-fork --log-console --vrrp \
		-f "$work/keepalived-lb$1.conf" -p "$work/ka$1.pid" -r "$work/vrrp$1.pid" -c "$work/chk$1.pid"
}
start_keepalived 1
for _ in $(seq 100); do nx lb1 ip -4 addr show dev front0 | grep -q 198.18.10.100 && break; sleep 0.1; done
start_keepalived 2; sleep 1
for n in 1 2; do echo "  lb$n holds: $(nx lb$n ip -4 -o addr | awk '{print $4}' | grep -E '^(198.18.10.100|198.19.1.1)/' | tr '\n' ' ')"; done

ask() { nx cli socat -T2 - "TCP:198.18.10.100:80,bind=$1,connect-timeout=2" </dev/null 2>/dev/null | head -1; }
say "three clients: their first connection is classified and proxied by lb1, pinned, and published to etcd"
for c in 198.18.0.2 198.18.0.3 198.18.0.4; do echo "  $c -> $(ask $c)"; done
sleep 0.5
echo "  lb2's sets (pins from etcd):"; nx lb2 ipset list | grep -E '^Name: ho-|^198\.18\.0\.' | sed 's/^/    /'

say "a long-lived session from 198.18.0.2, forwarded by lb1's kernel"
mkfifo "$work/in"
(nx cli socat -T60 - "TCP:198.18.10.100:80,bind=198.18.0.2" <"$work/in" >"$work/session.out" 2>&1 &)
exec 3>"$work/in"
echo "before the failover" >&3; sleep 1
sed 's/^/  /' "$work/session.out"
for _ in $(seq 50); do nx lb2 conntrackd -C "$work/conntrackd-lb2.conf" -e 2>/dev/null | grep -q 'src=198.18.0.2' && break; sleep 0.2; done
echo "  lb2's conntrackd external cache holds it:"; nx lb2 conntrackd -C "$work/conntrackd-lb2.conf" -e | grep 'src=198.18.0.2' | sed 's/^/    /'

say "kill lb1: links cut, keepalived, conntrackd and handoff SIGKILLed"
t0=$(date +%s%N)
for d in front0 back0 sync0; do ip -n hod-lb1 link set $d down; done
for p in $(ip netns pids hod-lb1); do kill -9 "$p" 2>/dev/null || true; done
until [ -n "$(ask 198.18.0.3)" ]; do sleep 0.05; done
echo "  the VIP answered $(( ($(date +%s%N) - t0) / 1000000 )) ms after the kill"
echo "  lb2 holds: $(nx lb2 ip -4 -o addr | awk '{print $4}' | grep -E '^(198.18.10.100|198.19.1.1)/' | tr '\n' ' ')"

say "the session goes on through lb2"
echo "after the failover" >&3; sleep 1
sed 's/^/  /' "$work/session.out"
exec 3>&-

say "pinned clients' next connections: DNATed in lb2's kernel, never classified by lb2"
for c in 198.18.0.2 198.18.0.3 198.18.0.4; do echo "  $c -> $(ask $c)"; done
nx lb2 "$work/handoff" status --admin 127.0.0.1:9900 | sed -n '1,8p' | sed 's/^/  /'
echo "  lb2's classifications: $(nx lb2 "$work/handoff" status --admin 127.0.0.1:9900 --json | tr -d ' \n' | grep -o '"classified":{[^}]*}')  (none: no client met lb2's listener)"
nx lb2 "$work/handoff" cluster status --admin 127.0.0.1:9900 | sed 's/^/  /'

say "teardown"
