#!/usr/bin/env python3
"""Mutual TLS against plain HTTP, in one run: decisions/s over kept-alive connections, and new
connections/s (each with one decision; for TLS, a full TLS 1.3 handshake with a client X.509-SVID).

Two release servers run side by side on loopback with the demo policy set and durable evidence:
one plain, whose enforcement point presents a bearer credential, and one with TLS, whose
enforcement point presents an X.509-SVID (minted here by openssl from the service's own CA and
mapped to a `pep` caller) and no credential. ROUNDS rounds interleave the four measurements, so
that both servers see the same machine; the table gives each one's median and the TLS/plain
ratio.

    python3 bench/mtls.py [--seconds 8] [--rounds 3] [--connections 16]

Needs the release binaries (`cargo build --release -p ztinfra -p zt-loadgen`) and `openssl`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ztinfra")
LOADGEN = os.path.join(ROOT, "target", "release", "zt-loadgen")
DEMO = os.path.join(ROOT, "examples", "demo")
CLIENT_ID = "spiffe://ztinfra.local/bench/loadgen"


def run(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw).stdout


def start(tmp, name, tls):
    data = os.path.join(tmp, name)
    config = os.path.join(tmp, f"{name}.toml")
    lines = [f'data_dir = "{data}"', f'policies = "{DEMO}"', "no_watch = true"]
    if tls:
        keys = os.path.join(data, "keys")
        run(BIN, "ca", "init", "--data-dir", data)
        run(BIN, "ca", "server-cert", "--data-dir", data, "--name", "127.0.0.1")
        # The enforcement point's X.509-SVID, signed with the service's CA key by openssl.
        ext = os.path.join(tmp, "client.ext")
        with open(ext, "w") as f:
            f.write(f"basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage=clientAuth\nsubjectAltName=URI:{CLIENT_ID}\n")
        key, csr, crt = (os.path.join(tmp, f"client.{x}") for x in ("key", "csr", "crt"))
        run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        run("openssl", "req", "-new", "-key", key, "-subj", "/O=bench", "-out", csr)
        run("openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(keys, "ca.crt"),
            "-CAkey", os.path.join(keys, "ca.key"), "-CAcreateserial", "-days", "1",
            "-extfile", ext, "-out", crt)
        lines += [f'tls_cert = "{keys}/server.crt"', f'tls_key = "{keys}/server.key"', "[workloads]",
                  "[[workloads.callers]]", f'spiffe_id = "{CLIENT_ID}"', 'name = "loadgen"', 'role = "pep"']
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    server = subprocess.Popen([BIN, "serve", "--config", config, "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    if not line.startswith("ztinfra listening on "):
        sys.exit(f"{name}: the server did not start: {line!r}")
    addr = line.strip().rsplit("/", 1)[-1]
    if tls:
        client = ["--tls-ca", os.path.join(data, "keys", "ca.crt"), "--tls-cert", crt, "--tls-key", key]
    else:
        token = run(BIN, "credentials", "add", "loadgen", "--role", "pep", "--data-dir", data).strip()
        token_file = os.path.join(tmp, "pep.token")
        with open(token_file, "w") as f:
            f.write(token)
        client = ["--token-file", token_file]
    return server, addr, client


def load(addr, client, seconds, connections, new):
    args = [LOADGEN, "--addr", addr, "--connections", connections, "--duration", seconds,
            "--warmup", "2", "--json", *client]
    if new:
        args.append("--new-connections")
    result = json.loads(run(*args))
    if result["errors"]:
        sys.exit(f"{addr}: {result['errors']} requests failed")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = start(tmp, "plain", tls=False)
        mtls = start(tmp, "mtls", tls=True)
        results = {}
        try:
            for n in range(args.rounds):
                for kind in ("kept-alive", "new connection"):
                    for name, (_, addr, client) in (("plain HTTP", plain), ("mutual TLS", mtls)):
                        r = load(addr, client, args.seconds, args.connections, kind == "new connection")
                        results.setdefault((kind, name), []).append(r)
                        print(f"round {n + 1} {kind:>14} {name:>10}: {r['per_second']:>8.0f}/s "
                              f"p50 {r['p50_us']} us p99 {r['p99_us']} us", file=sys.stderr)
        finally:
            for server, _, _ in (plain, mtls):
                server.terminate()
                server.wait(timeout=10)
    print(f"| connections ({args.connections}) | plain HTTP /s | mutual TLS /s | TLS/plain | "
          "plain p50 / p99 | mutual TLS p50 / p99 |")
    print("|---|---|---|---|---|---|")
    for kind in ("kept-alive", "new connection"):
        med = {name: statistics.median(r["per_second"] for r in results[(kind, name)])
               for name in ("plain HTTP", "mutual TLS")}
        lat = {name: (statistics.median(r["p50_us"] for r in results[(kind, name)]),
                      statistics.median(r["p99_us"] for r in results[(kind, name)]))
               for name in ("plain HTTP", "mutual TLS")}
        label = "decisions on kept-alive connections" if kind == "kept-alive" \
            else "a new connection per decision (handshakes/s for TLS)"
        print(f"| {label} | {med['plain HTTP']:,.0f} | {med['mutual TLS']:,.0f} | "
              f"{med['mutual TLS'] / med['plain HTTP']:.2f} | {lat['plain HTTP'][0]:.0f} / {lat['plain HTTP'][1]:.0f} us | "
              f"{lat['mutual TLS'][0]:.0f} / {lat['mutual TLS'][1]:.0f} us |")


if __name__ == "__main__":
    main()
