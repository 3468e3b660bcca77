#!/usr/bin/env bash
# Builds a release into dist/ (or $DIST):
#   handoff_<version>_<os>_<arch>[.exe]   static binaries (CGO_ENABLED=0, -trimpath) for
#                                        linux amd64/arm64, darwin amd64/arm64, freebsd amd64, windows amd64
#   handoff_<version>_<arch>.deb / .rpm  linux packages (nfpm, deploy/nfpm.yaml)
#   SHA256SUMS                            sha256sum of all of them
#
#   scripts/release.sh [VERSION]          VERSION defaults to `git describe --tags --always --dirty`
#
# The binaries carry the version (-ldflags -X main.version) and, from Go's
# build info, the commit and its date: `handoff version` prints them.
# TARGETS="linux/amd64" limits the binaries; PACKAGES="" skips the
# packages. nfpm is built from its module at a pinned version into
# ~/.cache/handoff-tools (once; $TOOLS elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

version=${1:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
dist=${DIST:-dist}
targets=${TARGETS:-linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 freebsd/amd64 windows/amd64}
packages=${PACKAGES-deb rpm}
nfpmmod=github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.48.0
tools=${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/handoff-tools/nfpm-v2.48.0}

# A package version must start with a digit: v1.2.3 → 1.2.3; anything
# else (a commit) → 0.0.0~git<commit>.
pkgversion=${version#v}
if ! [[ $pkgversion =~ ^[0-9]+(\.[0-9]+)*([-~+][0-9A-Za-z.~+-]*)?$ ]]; then
	pkgversion="0.0.0~git${version//[^0-9A-Za-z]/.}"
fi

rm -rf "$dist"
mkdir -p "$dist"
for target in $targets; do
	os=${target%/*} arch=${target#*/} ext=
	[ "$os" = windows ] && ext=.exe
	out="$dist/handoff_${version}_${os}_${arch}${ext}"
	echo "build $out"
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOFLAGS=-buildvcs=auto \
		go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$out" ./cmd/handoff
done

if [ -n "$packages" ] && [ ! -x "$tools/nfpm" ]; then
	echo "building nfpm into $tools"
	GOBIN=$tools GOFLAGS= go install "$nfpmmod"
fi
for target in $targets; do
	os=${target%/*} arch=${target#*/}
	[ "$os" = linux ] || continue
	# nfpm expands variables in some fields only: fill in the config.
	conf=$(mktemp)
	trap 'rm -f "$conf"' EXIT
	sed -e "s|\${PKG_ARCH}|$arch|g" -e "s|\${PKG_VERSION}|$pkgversion|g" \
		-e "s|\${PKG_BIN}|$dist/handoff_${version}_linux_${arch}|g" deploy/nfpm.yaml >"$conf"
	for fmt in $packages; do
		echo "package $fmt $arch"
		"$tools/nfpm" package --config "$conf" --packager "$fmt" \
			--target "$dist/handoff_${pkgversion}_${arch}.${fmt}" >/dev/null
	done
done

(cd "$dist" && sha256sum -- * >SHA256SUMS)
echo "release $version in $dist:"
ls -l "$dist"
