#!/usr/bin/env bash
# Cross-checks zt-loadgen against wrk (Debian package `wrk`): the same server (`serve --demo`,
# evidence on, pinned to CPU 0), the same request, closed loop, the same connections and time;
# prints both tools' decisions/s and latencies.
#
#   bench/wrk.sh [CONNECTIONS] [SECONDS]   (defaults: 16 connections, 10 s)
set -euo pipefail
connections=${1:-16}
seconds=${2:-10}
cd "$(dirname "$0")/.."
. bench/lib.sh
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
build_release
pin_cpus
start_server "${pin_server[@]}"
body='{"actor":"demo-agent","action":"aws.ec2.describe_instances","resource":"i-1","context":{"env":"prod"}}'
echo "$body" > "$data/body.jsonl"
cat > "$data/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA
echo "zt-loadgen:"
"${pin_load[@]}" target/release/zt-loadgen --addr "$addr" --connections "$connections" \
  --duration "$seconds" --path /v1/decide --bodies "$data/body.jsonl"
echo "wrk:"
"${pin_load[@]}" wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$data/post.lua" "http://$addr/v1/decide" \
  | grep -E "Requests/sec|^ +(50|99)%|Non-2xx"
