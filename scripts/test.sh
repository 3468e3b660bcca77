#!/usr/bin/env bash
# The one test command (docs/development.md "Testing"; .ci/run calls exactly this).
#
# Installs the OS packages the tests need when they are missing (chromium
# renders the status page, promtool checks the alert rules, systemd-analyze
# rates the unit, dpkg installs the .deb; etcd-server, keepalived and
# conntrackd run the cluster tests), then runs
# gofmt, go vet (also for darwin, freebsd and windows), cross-OS builds
# (darwin amd64/arm64, freebsd, windows), staticcheck, and go test -race over
# every package, including the root network-namespace tests, then, without
# -race, the tests that only build without it (memory measurements the race
# detector would distort). Run it as root: root tests skip without root,
# and under CI=true every skip fails the run (internal/testenv).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

step() { printf '\n=== %s\n' "$*"; }

# command -> Debian package
declare -A pkgs=(
	[iptables]=iptables [ipset]=ipset [conntrack]=conntrack [ip]=iproute2
	[setpriv]=util-linux [capsh]=libcap2-bin [ss]=iproute2 [chromium]=chromium
	[promtool]=prometheus [systemd-analyze]=systemd [dpkg-deb]=dpkg
	[iptables-legacy]=iptables
	# the real clients of e2e's TestRealClients
	[curl]=curl [wget]=wget [openssl]=openssl
	[etcd]=etcd-server [keepalived]=keepalived [conntrackd]=conntrackd
)
missing=()
for cmd in "${!pkgs[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
# Debian's python3 with requests (a pyenv's python3 may come first on PATH)
if ! /usr/bin/python3 -c 'import requests' 2>/dev/null; then
	missing+=(python3-requests)
fi
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

# vet type-checks; building also links each platform's binary. Pure Go
# (CGO_ENABLED=0), as release builds are; the binaries are discarded.
step "go build (darwin amd64+arm64, freebsd, windows)"
for target in darwin/amd64 darwin/arm64 freebsd/amd64 windows/amd64; do
	echo "$target"
	CGO_ENABLED=0 GOOS=${target%/*} GOARCH=${target#*/} go build -o /dev/null ./...
done

step "staticcheck"
go tool staticcheck ./...

step "go test -race ./..."
go test -race -count=1 -timeout 9m ./...

# A test file built with //go:build ...!race holds tests that measure what
# the race detector distorts (memory); -race leaves them out, so they run
# here, without it, and only they.
step "go test without -race: the tests of !race files"
declare -A norace=()
while IFS= read -r f; do
	pkg=./$(dirname "$f")/
	for name in $(sed -n 's/^func \(Test[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
		norace[$pkg]+="${norace[$pkg]:+|}$name"
	done
done < <(grep -l '^//go:build.*!race' $(git ls-files '*_test.go' 2>/dev/null || find . -name '*_test.go'))
for pkg in "${!norace[@]}"; do
	go test -count=1 -timeout 5m -run "^(${norace[$pkg]})\$" "$pkg"
done


# The short soak (docs/development.md "Soak"): two minutes of mixed load in
# the lab's namespaces (scripts/lab.sh, which it brings down after), with a
# reload every 30 s and a backend killed and restored; it fails on growth
# of RSS, goroutines, descriptors or pins, a full conntrack table, an error
# the daemon logs, or an error any served client sees.
step "soak (2 minutes, kernel mode)"
if [ "$(id -u)" -eq 0 ]; then
	SOAK_DURATION=2m scripts/soak.sh
elif [ "${CI:-}" = true ]; then
	echo "the soak needs root: under CI=true that is a failure" >&2
	exit 1
else
	echo "skipped: the soak needs root"
fi
