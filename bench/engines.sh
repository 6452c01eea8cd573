#!/usr/bin/env bash
# Engine-only comparison, in process (issue 6): ztinfra's decision path against bare Cedar,
# regorus (Rego) and casbin on the workloads W1 to W4 of bench/compare.py, pinned to CPU 0 when
# taskset is there. Prints a markdown table; `--write` also puts it into BENCHMARKS.md.
#
#   bench/engines.sh [--write] [--workloads W1,W3] [--engine NAME]
#
# bench/engines is a workspace of its own (regorus and casbin stay out of the product's build);
# it shares this repository's target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --manifest-path bench/engines/Cargo.toml --target-dir target >&2
pin=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin=(taskset -c 0)
fi
"${pin[@]}" target/release/zt-bench-engines "$@"
