#!/usr/bin/env bash
# Offline verification speed: fills an evidence log with `zt-loadgen` against a release server
# for SECONDS (default 20) at 64 connections, exports it, and times `ztinfra evidence verify`
# (one thread), printing records/s.
#
#   bench/verify.sh [SECONDS]
set -euo pipefail
seconds=${1:-20}
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
bin=target/release/ztinfra
start_server
target/release/zt-loadgen --addr "$addr" --connections 64 --duration "$seconds" --warmup 0 >&2
kill -TERM "$server"; wait "$server" || true
"$bin" evidence export --data-dir "$data" -o "$data/log.jsonl" 2>/dev/null
"$bin" keys export --data-dir "$data" >"$data/keys.json"
records=$(grep -c '^{"type":"record"' "$data/log.jsonl")
checkpoints=$(grep -c '^{"type":"checkpoint"' "$data/log.jsonl")
bytes=$(stat -c %s "$data/log.jsonl")
start=$(date +%s%N)
"$bin" evidence verify "$data/log.jsonl" --keys "$data/keys.json"
end=$(date +%s%N)
awk -v r="$records" -v c="$checkpoints" -v b="$bytes" -v ns="$((end - start))" 'BEGIN {
  printf "verified %d records, %d checkpoints, %.1f MB in %.2f s: %.0f records/s\n", r, c, b / 1e6, ns / 1e9, r / (ns / 1e9)
}'
