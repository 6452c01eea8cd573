#!/usr/bin/env bash
# ZT-Infra side by side with peer decision points (see bench/compare.py for the method).
#
#   bench/compare.sh [--smoke] [--workloads W1,W2,W3,W4,W5] [--systems ...] [--write]
#
# Installs the pinned peers into ${ZTINFRA_BENCH_CACHE:-~/.cache/ztinfra-bench}, outside the
# repository: cedar-agent from crates.io (built from source once: minutes) and Cerbos from npm.
# A peer that cannot be installed is skipped, with a message. Takes about a minute per system
# and workload; --smoke takes seconds and checks only that every system answers as expected.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
cache=${ZTINFRA_BENCH_CACHE:-$HOME/.cache/ztinfra-bench}
mkdir -p "$cache"
cedar_agent_version=0.2.2-x86.64-unknown-linux-gnu
cerbos_version=0.55.0
if [ ! -x "$cache/cedar-agent/bin/cedar-agent" ]; then
  echo "installing cedar-agent $cedar_agent_version into $cache (a few minutes, once)" >&2
  cargo install --locked --quiet --version "$cedar_agent_version" --root "$cache/cedar-agent" cedar-agent \
    || echo "cedar-agent could not be installed; it will be skipped" >&2
fi
if [ ! -x "$cache/cerbos/node_modules/@cerbos/cerbos-linux-x64/cerbos-linux-x64" ]; then
  echo "installing Cerbos $cerbos_version into $cache" >&2
  npm install --prefix "$cache/cerbos" --no-audit --no-fund --loglevel=error "@cerbos/cerbos-linux-x64@$cerbos_version" \
    || echo "Cerbos could not be installed; it will be skipped" >&2
fi
ZTINFRA_BENCH_CACHE=$cache python3 bench/compare.py "$@"
