#!/usr/bin/env bash
# Builds the spy image for linux/amd64 and linux/arm64 with docker buildx,
# tagged and labelled with the version in Cargo.toml and the git revision.
#
#   bash scripts/build-image.sh           build (stays in the build cache)
#   bash scripts/build-image.sh --push    build and push to the registry
#
# TLSSPY_IMAGE overrides the repository (default ghcr.io/tlsspy/tlsspy-agent,
# the plugin's default --image).
set -euo pipefail
cd "$(dirname "$0")/.."
repository="${TLSSPY_IMAGE:-ghcr.io/tlsspy/tlsspy-agent}"
version=$(bash scripts/version.sh)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  revision="$revision-dirty"
fi
if ! docker info >/dev/null 2>&1; then
  echo "build-image.sh: no container engine answers (docker info failed); the agent" \
       "alone builds without one: bash scripts/build-agent.sh" >&2
  exit 1
fi
output=()
[ "${1:-}" = "--push" ] && output=(--push)
set -x
docker buildx build --platform linux/amd64,linux/arm64 \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
  --tag "$repository:v$version" "${output[@]}" .
