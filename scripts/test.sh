#!/usr/bin/env bash
# Runs every test of tlsspy: unit and property tests, the end-to-end tests
# (real TLS programs spied with eBPF: they need root; with CI=true they fail
# instead of skipping), the format check, lints, and a short fixed-time fuzz run.
#
#   bash scripts/test.sh            everything
#   TLSSPY_FUZZ_SECONDS=0 bash scripts/test.sh   no fuzzing
#   TLSSPY_STATIC_AGENT=0 bash scripts/test.sh   no static agent build (slow);
#                                                 its test then skips (fails with CI=true)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "build (the end-to-end tests run the built binaries)"
cargo build --workspace --bins --locked

step "format (rustfmt.toml; cargo fmt --all fixes it)"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "platforms the plugin must build for"
bash scripts/check-platforms.sh

if [ "${TLSSPY_STATIC_AGENT:-}" = 0 ]; then
  unset TLSSPY_STATIC_AGENT
else
  step "static agent, as the spy image builds it (slow: release build with LTO)"
  # Absolute: the tests run from their crate's directory, not from here.
  TLSSPY_STATIC_AGENT=$(realpath "$(bash scripts/build-agent.sh)")
  export TLSSPY_STATIC_AGENT
  ls -l "$TLSSPY_STATIC_AGENT"
fi

step "tests"
cargo test --workspace --locked

fuzz_seconds="${TLSSPY_FUZZ_SECONDS:-15}"
if [ "$fuzz_seconds" != 0 ] && [ -x fuzz/run.sh ]; then
  step "fuzz (${fuzz_seconds}s per target)"
  bash fuzz/run.sh "$fuzz_seconds"
fi
