#!/usr/bin/env bash
# The main job, on one machine, no cluster: starts a loopback HTTPS server
# (python3 over OpenSSL) and spies on a curl to it with `kubectl-tlsspy local`.
# Needs root (eBPF). Usage: sudo bash scripts/demo.sh [extra kubectl-tlsspy flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kubectl-tlsspy
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
port=18443
python3 tests/fixtures/https_server.py "$port" "$work/cert.pem" "$work/key.pem" --ready-file "$work/ready" &
server=$!
for _ in $(seq 100); do [ -f "$work/ready" ] && break; sleep 0.05; done
echo "+ kubectl-tlsspy local $* -- curl -s --cacert cert.pem https://127.0.0.1:$port/demo"
./target/release/kubectl-tlsspy local "$@" -- curl -s -o /dev/null --cacert "$work/cert.pem" "https://127.0.0.1:$port/demo"
