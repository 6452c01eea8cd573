#!/usr/bin/env bash
# Load-tests POST /v1/decide over loopback: builds release binaries, starts `ztinfra serve
# --demo` in a temporary data directory, runs zt-loadgen against it, prints p50/p99/p99.9 and
# decisions/s, and stops the server.
#
#   bench/http.sh [CONNECTIONS] [SECONDS] [ZT-LOADGEN OPTIONS...]   (defaults: 16 connections, 10 s)
#
# Further options go to zt-loadgen, for example `--mix authzen` (AuthZEN evaluations),
# `--mix actions` (the reference /actions contract) or `--rate 5000` (open loop).
#
# With taskset available, the server is pinned to CPU 0 and the load generator to CPU 1.
set -euo pipefail
connections=${1:-16}
seconds=${2:-10}
shift $(( $# < 2 ? $# : 2 ))
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
pin_cpus
start_server "${pin_server[@]}"
"${pin_load[@]}" target/release/zt-loadgen --addr "$addr" --connections "$connections" --duration "$seconds" "$@"
