#!/usr/bin/env bash
# What verified callers cost: decisions/s at saturation over loopback, in one run, for the same
# request mix asked four ways, and how fast a revocation stops a session (bench/revocation.py).
#
#   bench/identity.sh [CONNECTIONS] [SECONDS] [ROUNDS]   (defaults: 16 connections, 10 s, 3 rounds)
#
# The ways: open callers (no credential: the baseline), an enforcement point's credential
# (asserted actor), an agent session's own token (Authorization: Bearer <JWT>), and an
# enforcement point passing the session's token (ZT-Agent-Token). Rounds interleave the ways, so
# that the machine's drift falls on all of them; medians are printed per way.
#
# With taskset available, the server is pinned to CPU 0 and the load generator to CPU 1.
set -euo pipefail
connections=${1:-16}
seconds=${2:-10}
rounds=${3:-3}
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
pin_cpus
data=$(mktemp -d)
server=
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT

serve() { # serve CALLERS: (re)starts the server on the same data directory
  if [ -n "$server" ]; then kill "$server"; wait "$server" 2>/dev/null || true; fi
  : >"$data/out"
  # A public URL keeps the tokens' issuer the same across restarts (the port changes).
  "${pin_server[@]}" target/release/ztinfra serve --demo --no-watch --callers "$1" \
    --public-url http://ztinfra.bench --data-dir "$data" --listen 127.0.0.1:0 >"$data/out" 2>"$data/err" &
  server=$!
  for _ in $(seq 100); do grep -q "listening on" "$data/out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's#^ztinfra listening on http://##p' "$data/out")
  [ -n "$addr" ] || { cat "$data/err" >&2; exit 1; }
}

serve authenticated
target/release/ztinfra credentials add bench-pep --role pep --data-dir "$data" >"$data/pep.token" 2>/dev/null
target/release/ztinfra credentials add bench-broker --role broker --data-dir "$data" >"$data/broker.token" 2>/dev/null
curl -sf "http://$addr/v1/agents" -H "authorization: Bearer $(cat "$data/admin.token")" \
  -H 'content-type: application/json' -d '{"name": "demo-agent", "owner": "bench"}' >/dev/null
curl -sf "http://$addr/v1/sessions" -H "authorization: Bearer $(cat "$data/broker.token")" \
  -H 'content-type: application/json' \
  -d '{"agent": "demo-agent", "on_behalf_of": "bench", "ttl": 3600, "lineage": {"model": "m", "sandbox": "s"}}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' >"$data/session.token"

run() { # run WAY LOADGEN-OPTIONS...: one measurement, as JSON (errors make the run fail)
  "${pin_load[@]}" target/release/zt-loadgen --addr "$addr" --connections "$connections" \
    --duration "$seconds" --json "${@:2}" | python3 -c "
import json, sys
r = json.load(sys.stdin)
r['way'] = '$1'
assert r['errors'] == 0, f'{r[\"way\"]}: {r[\"errors\"]} requests failed'
print(json.dumps(r))"
}

results="$data/results.jsonl"
for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  serve open
  run open >>"$results"
  serve authenticated
  run pep --token-file "$data/pep.token" >>"$results"
  run session --token-file "$data/session.token" >>"$results"
  run pep+session --token-file "$data/pep.token" --agent-token-file "$data/session.token" >>"$results"
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ways = ["open", "pep", "session", "pep+session"]
base = statistics.median(r["per_second"] for r in rows if r["way"] == "open")
print("| callers | decisions/s (median) | runs | vs open | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|---|")
for way in ways:
    mine = [r for r in rows if r["way"] == way]
    rate = statistics.median(r["per_second"] for r in mine)
    p50 = statistics.median(r["p50_us"] for r in mine) / 1000
    p99 = statistics.median(r["p99_us"] for r in mine) / 1000
    runs = ", ".join(f"{r['per_second']:.0f}" for r in mine)
    errors = sum(r["errors"] for r in mine)
    print(f"| {way} | {rate:,.0f} | {runs} | {rate / base:.2f}x | {p50:.2f} | {p99:.2f} | {errors} |")
PY
python3 bench/revocation.py "http://$addr" "$data"
