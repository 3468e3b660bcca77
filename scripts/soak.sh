#!/usr/bin/env bash
# soak.sh: handoff under mixed load in the lab for a long time (default an
# hour): new and pinned clients, a config reload every minute, a backend
# killed and restored every five minutes, API calls every second, at 1,000
# connections a second. It fails
# when the daemon's RSS, goroutines or descriptors grow past their bounds
# (scripts/soak/main.go), when pins outnumber the clients, when the
# conntrack table passes 90% (the load outgrew the host), or when a
# served client sees an error (a refused or cut connection is allowed only
# within seconds of a backend kill).
#
#   sudo scripts/soak.sh                      an hour, kernel mode
#   sudo SOAK_DURATION=2m scripts/soak.sh     the short version (scripts/test.sh runs it)
#   SOAK_MODE=userspace ...                   userspace mode
#
# Run it as root, alone (under flock /tmp/handoff-ns.lock when other
# namespace tests may run): it takes the lab's namespaces (scripts/lab.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

duration=${SOAK_DURATION:-1h}
mode=${SOAK_MODE:-kernel}
secs=$(go run ./scripts/soak/duration.go "$duration" 2>/dev/null || echo 3600)
# The short version compresses the schedule: a reload every 30s, a kill every 60s.
if [ "$secs" -lt 900 ]; then reload=30s kill=60s warmup=20s; else reload=1m kill=5m warmup=60s; fi

work=$(mktemp -d)
daemon=""
cleanup() {
	[ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
	scripts/lab.sh down >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/handoff" ./cmd/handoff
go build -o "$work/soak" ./scripts/soak
LAB_BACKENDS=3 LAB_CLIENTS=100 scripts/lab.sh up >/dev/null

cat >"$work/handoff.yaml" <<YAML
mode: $mode
log: {level: info, summary_interval: 30s}
state_dir: $work/state
services:
  - name: web
    listen: 198.18.0.1:80
    first_connection: proxy
    client_ttl: 20s
    max_clients: 1000
    health: {check: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2}
    balance: maglev
    backends:
      - {name: be1, address: 198.19.1.11:80}
      - {name: be2, address: 198.19.1.12:80}
      - {name: be3, address: 198.19.1.13:80}
YAML

ip netns exec ho-lb "$work/handoff" run -c "$work/handoff.yaml" >"$work/handoff.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
	grep -q 'msg=serving' "$work/handoff.log" && break
	sleep 0.1
done
grep -q 'msg=serving' "$work/handoff.log" || { cat "$work/handoff.log"; exit 1; }

echo "soak: $duration in $mode mode (reload every $reload, a backend killed every $kill)"
status=0
"$work/soak" drive -self "$work/soak" -duration "$duration" -reload-every "$reload" -kill-every "$kill" -warmup "$warmup" || status=$?
if ! kill -0 "$daemon" 2>/dev/null; then
	echo "soak: FAIL: the daemon died" >&2
	status=1
fi
if grep -E 'level=(error|fatal|panic)' "$work/handoff.log" | grep -v 'backend down' >&2; then
	echo "soak: FAIL: the daemon logged errors (above)" >&2
	status=1
fi
if [ "$status" -ne 0 ]; then
	keep=$(mktemp /tmp/handoff-soak-XXXXXX.log)
	cp "$work/handoff.log" "$keep"
	echo "--- handoff log (warnings, then the last 40 lines; all of it in $keep)" >&2
	grep -E 'level=(warning|error|fatal|panic)' "$work/handoff.log" | tail -n 40 >&2 || true
	tail -n 40 "$work/handoff.log" >&2
	exit "$status"
fi
echo "soak: PASS"
