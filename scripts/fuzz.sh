#!/usr/bin/env bash
# Runs every fuzz target, one at a time, for N executions each (default
# 10,000,000), and prints the executions and wall time of each. A target
# that finds a failing input stops the run with go test's report; the
# input is then in that package's testdata/fuzz/<Target>/, to commit with
# the fix. New interesting inputs stay in the fuzz cache
# ($(go env GOCACHE)/fuzz); FUZZ_SAVE=1 copies them into testdata/fuzz.
#
#   scripts/fuzz.sh                      every target, 10M executions
#   FUZZ_EXECS=100000 scripts/fuzz.sh    a quick pass
#   FUZZ_TIME=10m scripts/fuzz.sh        each target for 10 minutes instead
#   scripts/fuzz.sh FuzzSNI FuzzParse    some targets
#
# Fuzzing needs no root and no namespace, but it takes every core it is
# given: FUZZ_PARALLEL (default 1) bounds the workers. Each new interesting
# input is minimized for at most FUZZ_MINIMIZE (default 5s; go test's 60s
# stalls a starved worker for a minute per input, counting no executions).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

execs=${FUZZ_EXECS:-10000000}
fuzztime=${FUZZ_TIME:-${execs}x}
parallel=${FUZZ_PARALLEL:-1}
minimize=${FUZZ_MINIMIZE:-5s}

# target -> package
declare -A targets=(
	[FuzzSNI]=./classifier [FuzzHTTPHost]=./classifier [FuzzPayload]=./classifier
	[FuzzParse]=./config [FuzzWriteHeader]=./proxy [FuzzLoadAffinity]=./fallback
	[FuzzLoadRuntime]=./balancer [FuzzAPIBodies]=./admin [FuzzAppendPin]=./admin
	[FuzzParseQueued]=./kernel [FuzzDecodePage]=./cluster
)
order=(FuzzSNI FuzzHTTPHost FuzzPayload FuzzParse FuzzWriteHeader FuzzLoadAffinity FuzzLoadRuntime FuzzAPIBodies FuzzAppendPin FuzzParseQueued FuzzDecodePage)
if [ $# -gt 0 ]; then order=("$@"); fi

cache=$(go env GOCACHE)/fuzz/github.com/handoff-lb/handoff
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${order[@]}"; do
	pkg=${targets[$t]:?unknown fuzz target $t}
	start=$(date +%s)
	if ! go test -timeout 0 -run '^$' -fuzz "^$t\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" -parallel "$parallel" "$pkg" >"$log" 2>&1; then
		tail -n 30 "$log"
		exit 1
	fi
	took=$(( $(date +%s) - start ))
	# go test's last progress line carries the executions it counted.
	done_execs=$(grep -o 'execs: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
	n=$(find "$cache/${pkg#./}/$t" -type f 2>/dev/null | wc -l)
	printf 'fuzz %s (%s): %s executions in %ds, no finding; %d inputs in the cache\n' "$t" "$pkg" "${done_execs:-?}" "$took" "$n"
	if [ "${FUZZ_SAVE:-0}" = 1 ] && [ "$n" -gt 0 ]; then
		mkdir -p "$pkg/testdata/fuzz/$t"
		cp -n "$cache/${pkg#./}/$t"/* "$pkg/testdata/fuzz/$t/"
	fi
done
