#!/usr/bin/env bash
# Prints tlsspy's version, the one place it is set: [workspace.package]
# version in Cargo.toml. The plugin, the agent, the image tag and labels and
# the krew manifest all take it from here (tests/tests/ship.rs checks).
#
#   bash scripts/version.sh        0.1.0
#   bash scripts/version.sh --tag  v0.1.0  (image tag, krew spec.version)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(awk '
  /^\[/ { section = $0; next }
  section == "[workspace.package]" && $1 == "version" {
    gsub(/[" ]/, "", $3); print $3; exit
  }' Cargo.toml)
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "version.sh: no semantic version in Cargo.toml's [workspace.package] (found '$version')" >&2
  exit 1
fi
case "${1:-}" in
  --tag) echo "v$version" ;;
  "") echo "$version" ;;
  *) echo "version.sh: unknown argument '$1'" >&2; exit 2 ;;
esac
