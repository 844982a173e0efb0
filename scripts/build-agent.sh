#!/usr/bin/env bash
# Builds tlsspy-agent (with its eBPF object inside) as one statically linked
# executable: the whole content of the spy image. The Dockerfile runs this
# script, and so does CI (scripts/test.sh), outside any container: one
# command, one set of flags, wherever the agent is built.
#
#   bash scripts/build-agent.sh [--out DIR]
#
# Writes DIR/tlsspy-agent (default DIR: <cargo target dir>/agent-<target>)
# without its debug info (12 of its 16 MiB; symbols stay, for backtraces)
# and prints its path on stdout.
#
# Static linking: the image's final stage has no libc, so the agent must not
# need one. We link glibc statically (`-C target-feature=+crt-static` on
# <arch>-unknown-linux-gnu) rather than build for musl: the gnu target's
# standard library is the one every Rust toolchain (and the rust image) has,
# and our machines cannot download another. The agent resolves no host names
# and looks up no users, so static glibc's NSS caveat does not apply to it.
# TLSSPY_AGENT_TARGET picks another Linux target triple (e.g. a musl one, where
# installed); the default is the host's own.
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-agent.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

host=$(rustc -vV | sed -n 's/^host: //p')
target="${TLSSPY_AGENT_TARGET:-$host}"
case "$target" in
  *-unknown-linux-gnu | *-unknown-linux-musl) ;;
  *) echo "build-agent.sh: the agent runs on Linux only; '$target' is not a Linux target" >&2; exit 2 ;;
esac
if ! rustup target list --installed 2>/dev/null | grep -qx "$target" \
   && [ ! -d "$(rustc --print sysroot)/lib/rustlib/$target/lib" ]; then
  echo "build-agent.sh: the Rust standard library for $target is not installed (rustup target add $target)" >&2
  exit 1
fi

# Explicit --target: the flags apply to the agent only, not to build
# scripts and proc macros (which run on the build machine and must stay
# dynamic), and the output lands in its own directory, apart from the
# debug builds.
env_name="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
export "$env_name=-C target-feature=+crt-static"
cargo build --release --locked -p spy-image --bin tlsspy-agent --target "$target" >&2

target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/$target/release/tlsspy-agent"

# No program interpreter and no needed libraries, or it is not static.
if readelf -lW "$bin" | grep -q 'Requesting program interpreter' \
   || readelf -dW "$bin" | grep -q '(NEEDED)'; then
  echo "build-agent.sh: $bin is dynamically linked; the spy image cannot run it" >&2
  readelf -dW "$bin" | grep '(NEEDED)' >&2 || true
  exit 1
fi

out="${out:-$target_dir/agent-$target}"
mkdir -p "$out"
objcopy --strip-debug "$bin" "$out/tlsspy-agent.tmp"
mv "$out/tlsspy-agent.tmp" "$out/tlsspy-agent"
echo "$out/tlsspy-agent"
