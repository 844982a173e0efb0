#!/usr/bin/env bash
# The plugin must build for every platform of krew-manifest.yaml. This checks
# that no agent crate is in its graph off Linux, runs
# `cargo check -p kubectl-tlsspy --target T` for each platform whose Rust
# standard library is installed here, and names the ones it cannot check.
# (tests/tests/ship.rs checks each platform's dependency graph, which needs
# no standard library: no aya, spy-ebpf or direct libc outside Linux.)
#
#   bash scripts/check-platforms.sh            check what can be checked
#   bash scripts/check-platforms.sh --strict   fail if any platform cannot be
set -euo pipefail
cd "$(dirname "$0")/.."
strict=""
[ "${1:-}" = "--strict" ] && strict=1

# Off Linux the plugin needs only the records (spy-protocol): the agent's
# crates must not be in its graph there. cargo resolves a graph for any
# target, standard library installed or not, so every platform is checked.
agent_only='^(spy-image|spy-ebpf|aya|aya-obj|capstone|capstone-sys|gimli|object|tls-parser)$'
for t in x86_64-apple-darwin aarch64-apple-darwin x86_64-pc-windows-msvc aarch64-pc-windows-msvc; do
  leaked=$(cargo tree --locked -p kubectl-tlsspy --target "$t" -e normal --prefix none --format '{p}' \
    | awk '{print $1}' | sort -u | grep -E "$agent_only" || true)
  if [ -n "$leaked" ]; then
    echo "$t: the plugin pulls in agent crates: $(echo $leaked)" >&2
    exit 1
  fi
  echo "$t: no agent crates in the plugin's graph (cargo tree)"
done

host=$(rustc -vV | sed -n 's/^host: //p')
installed=$(rustup target list --installed 2>/dev/null || true)
unchecked=()
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-apple-darwin \
         aarch64-apple-darwin x86_64-pc-windows-msvc aarch64-pc-windows-msvc; do
  if [ "$t" = "$host" ]; then
    # The workspace build compiles the plugin for the host in full.
    echo "$t: host (built by cargo build --workspace)"
  elif grep -qx "$t" <<<"$installed" || [ -d "$(rustc --print sysroot)/lib/rustlib/$t/lib" ]; then
    echo "+ cargo check -p kubectl-tlsspy --target $t"
    cargo check --locked -p kubectl-tlsspy --target "$t"
  else
    unchecked+=("$t")
  fi
done
if [ "${#unchecked[@]}" -gt 0 ]; then
  echo "NOT CHECKED here (no Rust standard library; rustup target add): ${unchecked[*]}"
  [ -z "$strict" ] || exit 1
fi
