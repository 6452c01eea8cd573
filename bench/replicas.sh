#!/usr/bin/env bash
# Revocation across two replicas on one PostgreSQL store: sessions started and revoked on
# replica A, decided non-stop on replica B; prints how long after the revocation is sent B
# refuses (bench/revocation.py).
#
#   ZTINFRA_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test bench/replicas.sh [ROUNDS]
#
# Uses a schema of its own in that database (dropped at the end); needs `psql`.
set -euo pipefail
rounds=${1:-200}
url=${ZTINFRA_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
schema="zt_bench_replicas_$$"
psql "$url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
sep='?'; case "$url" in *\?*) sep='&';; esac
store="$url${sep}options=-c%20search_path%3D$schema"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; psql "$url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE"' EXIT
start() { # start NAME [FLAG...]: a replica with a data directory of its own; sets ${NAME}_addr
  mkdir -p "$work/$1"
  target/release/ztinfra serve --demo --no-watch --callers authenticated --store "$store" \
    --public-url http://ztinfra.bench --data-dir "$work/$1" --listen 127.0.0.1:0 "${@:2}" >"$work/$1/out" 2>"$work/$1/err" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "listening on" "$work/$1/out" 2>/dev/null && break; sleep 0.1; done
  local addr
  addr=$(sed -n 's#^ztinfra listening on http://##p' "$work/$1/out")
  [ -n "$addr" ] || { cat "$work/$1/err" >&2; exit 1; }
  eval "${1}_addr=$addr"
}
start a
start b --join b
target/release/ztinfra credentials add bench-broker --role broker --store "$store" >"$work/a/broker.token" 2>/dev/null
curl -sf "http://$a_addr/v1/agents" -H "authorization: Bearer $(cat "$work/a/admin.token")" \
  -H 'content-type: application/json' -d '{"name": "demo-agent", "owner": "bench"}' >/dev/null
python3 bench/revocation.py "http://$a_addr" "$work/a" "$rounds" "http://$b_addr"
