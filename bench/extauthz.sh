#!/usr/bin/env bash
# Requests through Envoy with ZT-Infra's ext_authz filter (evidence on), against the same Envoy
# without it, in one run (see bench/extauthz.py).
#
#   bench/extauthz.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds of 5 s per side and mode)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
[ -x target/mcp-venv/bin/python ] || python3 -m venv target/mcp-venv
target/mcp-venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r crates/zt-extauthz/tests/python/requirements.txt
target/mcp-venv/bin/python bench/extauthz.py "$@"
