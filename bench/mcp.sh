#!/usr/bin/env bash
# Added latency of a tools/call through the MCP gateway (see bench/mcp_latency.py).
#
#   bench/mcp.sh [CALLS]   (default 2000 per side)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
build_release
peers=crates/zt-mcp/tests/peers
[ -x target/mcp-venv/bin/python ] || python3 -m venv target/mcp-venv
target/mcp-venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$peers/requirements.txt"
target/mcp-venv/bin/python bench/mcp_latency.py target/release/ztinfra examples/mcp/policies "${1:-2000}"
