#!/usr/bin/env bash
# Builds the real node's binaries from upstream at the release pinned in
# tests/node/build/go.mod: etcd, kube-apiserver, kube-controller-manager and
# kubelet. They are kept in a cache directory keyed by that release and by a
# hash of go.mod and go.sum, so a second run only prints the directory.
#
#   bash tests/node/build.sh        prints the directory holding the binaries
#
# TLSSPY_CACHE (default /var/cache/tlsspy) is where the cache lives; GOCACHE
# and GOMODCACHE are the go command's own (set them to keep those too).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
module="$here/build"

release=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$module/go.mod")
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2; exit }' "$module/go.mod")
key=$(cat "$module/go.mod" "$module/go.sum" | sha256sum | cut -c1-12)
out="${TLSSPY_CACHE:-/var/cache/tlsspy}/node-$release-$key"

commands=(kube-apiserver kube-controller-manager kubelet etcd)
complete=1
for c in "${commands[@]}"; do [ -x "$out/$c" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$out.partial"
start=$(date +%s)
# The version stamps kubectl and the node report (v0.0.0 without them).
minor=$(echo "$release" | cut -d. -f2)
stamp="-X k8s.io/component-base/version.gitVersion=$release -X k8s.io/component-base/version.gitMajor=1"
stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
stamp="$stamp -X k8s.io/client-go/pkg/version.gitVersion=$release"
build() { # name package
  echo "tests/node/build.sh: building $1 ($2)" >&2
  (cd "$module" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w $stamp" -o "$out.partial/$1" "$2")
}
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubelet k8s.io/kubernetes/cmd/kubelet
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build etcd go.etcd.io/etcd/server/v3
echo "tests/node/build.sh: Kubernetes $release and etcd $etcd built in $(($(date +%s) - start)) s" >&2
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out"
