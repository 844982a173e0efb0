#!/usr/bin/env bash
# Builds the fuzz targets with *stable* rustc and runs each one.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 20 s; every target below)
#
# No nightly exists here, so instead of `cargo fuzz` (which wants -Zsanitizer)
# we pass the flags cargo-fuzz passes for its coverage instrumentation, all of
# which stable accepts: LLVM's SanitizerCoverage pass with inline 8-bit
# counters, a PC table and compare tracing, which is what libFuzzer reads.
# What we lose is AddressSanitizer: the parsers are `forbid(unsafe_code)`, so
# memory errors are not what we hunt; panics, overflows (debug assertions
# and overflow checks are on) and runaway memory (-rss_limit_mb) are.
#
# Fails on the first target that crashes; its input is left in
# fuzz/artifacts/TARGET/. New corpus entries go to fuzz/corpus/TARGET/
# (ignored by git); fuzz/seeds/TARGET/ is the committed starting corpus.
set -euo pipefail

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(http1 http2 connection tls_handshake go_elf go_buildinfo go_pclntab go_dwarf kernel_event packet flows)

here=$(cd "$(dirname "$0")" && pwd)
host=$(rustc -vV | sed -n 's/^host: //p')

# --target keeps these flags off build scripts and proc macros, as cargo-fuzz does.
export CARGO_TARGET_DIR="$here/target"
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cforce-frame-pointers=yes"

cargo build --manifest-path "$here/Cargo.toml" --release --target "$host" --bins

for target in "${targets[@]}"; do
    mkdir -p "$here/corpus/$target" "$here/artifacts/$target"
    echo "== fuzzing $target for ${seconds}s"
    # The first directory receives new inputs; seeds are read only.
    "$CARGO_TARGET_DIR/$host/release/$target" \
        -max_total_time="$seconds" \
        -rss_limit_mb=1024 \
        -max_len=65536 \
        -print_final_stats=1 \
        -artifact_prefix="$here/artifacts/$target/" \
        "$here/corpus/$target" "$here/seeds/$target"
done
