#!/usr/bin/env bash
# The one test command (README "Testing"; .ci/run calls exactly this).
#
# Installs the OS packages the tests need when they are missing, then runs
# gofmt, go vet (also for darwin, freebsd and windows), staticcheck, and
# go test -race over every package, including the root network-namespace
# tests. Run it as root: root tests skip without root, and under CI=true a
# skipped root test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

step() { printf '\n=== %s\n' "$*"; }

# command -> Debian package
declare -A pkgs=(
	[iptables]=iptables [ipset]=ipset [conntrack]=conntrack [ip]=iproute2
	[setpriv]=util-linux [capsh]=libcap2-bin [ss]=iproute2
)
missing=()
for cmd in "${!pkgs[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	if [ "$(id -u)" -eq 0 ]; then
		step "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	else
		echo "missing ${missing[*]}: the root tests will skip (run as root to install them)" >&2
	fi
fi

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "unformatted: $unformatted" >&2; exit 1; fi

step "go vet (linux, darwin, freebsd, windows)"
go vet ./...
for os in darwin freebsd windows; do GOOS=$os go vet ./...; done

step "staticcheck"
go tool staticcheck ./...

step "go test -race ./..."
go test -race -count=1 -timeout 9m ./...
