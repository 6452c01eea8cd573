# Shared by the bench scripts: build the release binaries and start a server.
# shellcheck shell=bash

# pin_cpus: sets $pin_server and $pin_load, command prefixes that pin the server to CPU 0 and
# the load generator to CPU 1 when taskset is there and the machine has two CPUs (else empty).
pin_cpus() {
  pin_server=() pin_load=()
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0) pin_load=(taskset -c 1)
  fi
}

build_release() {
  cargo build --release --locked -p ztinfra -p zt-loadgen >&2
}

# start_server [PREFIX...]: starts `ztinfra serve --demo --no-watch` in a new temporary data
# directory ($data) on an ephemeral loopback port, run under PREFIX (for example `taskset -c 0`);
# sets $server (its pid) and $addr, and stops it and removes $data on exit.
start_server() {
  data=$(mktemp -d)
  trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
  "$@" target/release/ztinfra serve --demo --no-watch --data-dir "$data" \
    --listen 127.0.0.1:0 >"$data/out" 2>"$data/err" &
  server=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$data/out" 2>/dev/null && break
    sleep 0.1
  done
  addr=$(sed -n 's#^ztinfra listening on http://##p' "$data/out")
  [ -n "$addr" ] || { cat "$data/err" >&2; exit 1; }
}
