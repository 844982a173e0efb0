#!/usr/bin/env bash
# Builds the third-party Go programs the Go tests spy on, from their modules
# at the versions pinned in tests/fixtures/go-thirdparty/*/go.mod (go.sum
# committed beside it), stripped (-s -w) as they ship: Caddy (an HTTPS
# server users deploy) and grpc-health-probe (the gRPC health client
# Kubernetes probes run). Needs the Go module proxy and the machine's Go
# (/usr/local/go, 1.26).
#
#   bash scripts/build-thirdparty-go.sh        builds what is missing, prints each binary's path
#
# Each binary is cached under $TLSSPY_THIRDPARTY_GO (default
# /var/cache/tlsspy/thirdparty-go) in a directory named by the program's
# module version and the Go release, so a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

go=${TLSSPY_THIRDPARTY_GO_TOOL:-/usr/local/go/bin/go}
cache=${TLSSPY_THIRDPARTY_GO:-/var/cache/tlsspy/thirdparty-go}
[ -x "$go" ] || { echo "build-thirdparty-go.sh: no Go at $go (the machine's Go 1.26)" >&2; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=${CGO_ENABLED:-1}
export GOPATH="$cache/gopath" GOCACHE="$cache/gocache"
go_release=$("$go" env GOVERSION)

for dir in tests/fixtures/go-thirdparty/*/; do
  name=$(basename "$dir")
  tool=$(cd "$dir" && "$go" list -m -f '{{.Path}}' all >/dev/null && awk '/^tool / { print $2 }' go.mod)
  module=$(cd "$dir" && "$go" list -f '{{.Module.Path}}' "$tool")
  version=$(cd "$dir" && "$go" list -f '{{.Module.Version}}' "$tool")
  out="$cache/$name-$version-$go_release/$name"
  if [ ! -x "$out" ]; then
    echo "building $module@$version with $go_release (stripped)" >&2
    mkdir -p "$(dirname "$out")"
    (cd "$dir" && "$go" build -trimpath -ldflags='-s -w' -o "$out.tmp" "$tool")
    mv "$out.tmp" "$out"
  fi
  echo "$out"
done
