#!/usr/bin/env bash
# Builds the plugin's krew archives and writes the krew manifest with their
# sha256: every platform of krew-manifest.yaml, or the ones named.
#
#   bash scripts/release.sh [--out DIR] [--targets all|host|"TRIPLE ..."]
#
#   --out DIR      where archives, SHA256SUMS and krew-manifest.yaml go (dist/)
#   --targets      all (default): every platform, or fail before building
#                  anything if one cannot be built here; host: this machine's
#                  platform only; or a list of target triples. Platforms not
#                  built keep `sha256: UNBUILT` and the manifest is marked
#                  PARTIAL: krew rejects it, so it cannot be published.
#
# TLSSPY_RELEASE_PROFILE=dev builds with the dev profile (the tests use it
# to reuse the debug build); a release uses the default, release.
#
# Archives: kubectl-tlsspy_vX.Y.Z_<os>_<arch>.tar.gz (zip on windows),
# holding the binary and LICENSE at the top, made reproducibly (sorted,
# fixed owner and mtime, no gzip timestamp).
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
targets_arg=all
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --targets) targets_arg="${2:?--targets needs all, host or a list of triples}"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "release.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

fail() { echo "release.sh: $*" >&2; exit 1; }

# krew platform (os/arch) → Rust target. Windows builds with MSVC, as on a
# Windows machine; Linux with glibc.
platforms=(linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64)
triple_of() {
  case "$1" in
    linux/amd64) echo x86_64-unknown-linux-gnu ;;
    linux/arm64) echo aarch64-unknown-linux-gnu ;;
    darwin/amd64) echo x86_64-apple-darwin ;;
    darwin/arm64) echo aarch64-apple-darwin ;;
    windows/amd64) echo x86_64-pc-windows-msvc ;;
    windows/arm64) echo aarch64-pc-windows-msvc ;;
    *) fail "no Rust target for platform $1" ;;
  esac
}

version=$(bash scripts/version.sh)
tag="v$version"
host=$(rustc -vV | sed -n 's/^host: //p')
profile="${TLSSPY_RELEASE_PROFILE:-release}"
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) fail "TLSSPY_RELEASE_PROFILE must be release or dev, not '$profile'" ;;
esac
[ -f LICENSE ] || fail "LICENSE is missing; krew archives carry it"

std_installed() {
  rustup target list --installed 2>/dev/null | grep -qx "$1" \
    || [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]
}

wanted=()
case "$targets_arg" in
  all) for p in "${platforms[@]}"; do wanted+=("$(triple_of "$p")"); done ;;
  host) wanted=("$host") ;;
  *) read -r -a wanted <<<"$targets_arg" ;;
esac
for t in "${wanted[@]}"; do
  known=""
  for p in "${platforms[@]}"; do [ "$(triple_of "$p")" = "$t" ] && known=1; done
  [ -n "$known" ] || fail "$t is not the target of any platform in krew-manifest.yaml"
done
missing=()
for t in "${wanted[@]}"; do std_installed "$t" || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
  fail "cannot build ${missing[*]} here: no Rust standard library for it" \
       "(rustup target add ${missing[*]}, plus that platform's linker and SDK," \
       "or build on that platform). For a partial, unpublishable manifest name" \
       "the targets that can be built: --targets host"
fi

mkdir -p "$out"
declare -A sha_of
for p in "${platforms[@]}"; do
  t=$(triple_of "$p")
  build=""
  for w in "${wanted[@]}"; do [ "$w" = "$t" ] && build=1; done
  [ -n "$build" ] || continue
  os=${p%/*}
  arch=${p#*/}
  exe=kubectl-tlsspy
  [ "$os" = windows ] && exe=kubectl-tlsspy.exe

  # The host builds without --target: the same binary, and it reuses the
  # workspace's own build (target/release or target/debug).
  cargo_target=(--target "$t")
  bin_dir="${CARGO_TARGET_DIR:-target}/$t/$profile_dir"
  if [ "$t" = "$host" ]; then
    cargo_target=()
    bin_dir="${CARGO_TARGET_DIR:-target}/$profile_dir"
  fi
  echo "+ cargo build --profile $profile -p kubectl-tlsspy ${cargo_target[*]}" >&2
  cargo build --locked --profile "$profile" -p kubectl-tlsspy "${cargo_target[@]}" >&2

  stage=$(mktemp -d)
  cp "$bin_dir/$exe" LICENSE "$stage/"
  touch -d @0 "$stage/$exe" "$stage/LICENSE"
  if [ "$os" = windows ]; then
    archive="kubectl-tlsspy_${tag}_${os}_${arch}.zip"
    rm -f "$out/$archive"
    (cd "$stage" && TZ=UTC zip -q -X "$OLDPWD/$out/$archive.tmp" "$exe" LICENSE)
  else
    archive="kubectl-tlsspy_${tag}_${os}_${arch}.tar.gz"
    tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
      -cf - "$exe" LICENSE | gzip -9 -n > "$out/$archive.tmp"
  fi
  mv "$out/$archive.tmp" "$out/$archive"
  rm -rf "$stage"
  sha_of[$p]=$(sha256sum "$out/$archive" | cut -d' ' -f1)
  echo "$p: $out/$archive ${sha_of[$p]}" >&2
done

# The manifest: the template with this version and the computed sha256.
# Each platform's selector (os, arch) comes before its uri and sha256 in
# the template; a sha256 line with no platform before it is an error.
unbuilt=()
for p in "${platforms[@]}"; do [ -n "${sha_of[$p]:-}" ] || unbuilt+=("$p"); done
shas=""
for p in "${!sha_of[@]}"; do shas+="$p=${sha_of[$p]} "; done
{
  if [ "${#unbuilt[@]}" -gt 0 ]; then
    echo "# PARTIAL: not built here, sha256 UNBUILT (krew rejects this manifest): ${unbuilt[*]}"
  fi
  awk -v tag="$tag" -v shas="$shas" '
    BEGIN { n = split(shas, pairs, " "); for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); sha[kv[1]] = kv[2] } }
    # The template header comment is about the template: dropped.
    !started && /^#/ { next }
    { started = 1 }
    /^  version: / { sub(/v[0-9][^ ]*/, tag) }
    /^ *os: / { os = $2; arch = "" }
    /^ *arch: / { arch = $2 }
    /^ *uri: / { gsub(/download\/v[^\/]+\//, "download/" tag "/"); gsub(/_v[0-9][^_]*_/, "_" tag "_") }
    /^ *sha256: / {
      if (os == "" || arch == "") { print "sha256 before its platform selector" > "/dev/stderr"; exit 1 }
      key = os "/" arch
      indent = $0; sub(/sha256:.*/, "", indent)
      $0 = indent "sha256: " ((key in sha) ? sha[key] : "UNBUILT")
      os = ""; arch = ""
    }
    { print }' krew-manifest.yaml
} > "$out/krew-manifest.yaml.tmp"
mv "$out/krew-manifest.yaml.tmp" "$out/krew-manifest.yaml"
(cd "$out" && for f in kubectl-tlsspy_"${tag}"_*; do [ -f "$f" ] && sha256sum "$f"; done) > "$out/SHA256SUMS"

if [ "${#unbuilt[@]}" -gt 0 ]; then
  echo "release.sh: PARTIAL manifest in $out/krew-manifest.yaml; not built here: ${unbuilt[*]}" >&2
else
  echo "release.sh: $out/krew-manifest.yaml is complete" >&2
fi
