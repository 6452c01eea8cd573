#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, end-to-end, and the
# benchmarks run once as smoke tests). PostgreSQL tests run when ZTINFRA_TEST_POSTGRES_URL is
# set (for example postgres://postgres@127.0.0.1:5432/test); outside CI they are skipped
# otherwise, with a message, and in CI (CI=true) a missing database fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
