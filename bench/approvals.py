#!/usr/bin/env python3
"""Human approval, measured in one run: decisions/s of a plain allow with a session token, of an
`approval_required` that names the approval already open for it (a store read), of one that
asks for a new approval each time (a row stored), and of approved retries, each using its
approval once (a conditional write), with durable evidence throughout.

A release server runs on loopback (SQLite) with a permit for reads and a permit marked
`@approval` for drops. ROUNDS rounds interleave the runs; the table gives medians and the ratio
of each p50 to the plain allow's.

    python3 bench/approvals.py [--seconds 5] [--rounds 3] [--connections 16]

The approved retries are made before the runs (an ask and an approval each, about five minutes
for the default sizing) and measured over 2 s runs without warm-up.

Needs the release binaries (`cargo build --release -p ztinfra -p zt-loadgen`).
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile

# The helpers of the delegation benchmark beside this file: run a command, call the API, drive
# zt-loadgen.
from delegation import BIN, call, load, run

POLICIES = """
@id("reads") permit (principal, action == Action::"db.tables.read", resource);
@id("drops") @approval("sre") @approval_ttl("1h") permit (principal, action == Action::"db.tables.drop", resource);
"""
# The rate each prepared run is sized for (approved retries, new approvals): more than this
# machine gives, so that no run runs out.
SIZED_FOR = int(os.environ.get("ZTINFRA_BENCH_SIZED_FOR", "15000"))
# Approved retries are made ahead (an ask and an approval each, a few hundred a second): their
# runs are 2 s, without warm-up.
RETRY_SECONDS = 2


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    per_run = (args.seconds + 2) * SIZED_FOR
    per_retry_run = RETRY_SECONDS * SIZED_FOR
    with tempfile.TemporaryDirectory() as tmp:
        policies = os.path.join(tmp, "policies")
        os.mkdir(policies)
        with open(os.path.join(policies, "bench.cedar"), "w") as f:
            f.write(POLICIES)
        data = os.path.join(tmp, "data")
        config = os.path.join(tmp, "ztinfra.toml")
        with open(config, "w") as f:
            f.write('[approvals.groups.sre]\nmembers = ["alice"]\n')
        server = subprocess.Popen([BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--policies", policies,
                                   "--data-dir", data, "--no-watch"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = server.stdout.readline()
            if not line.startswith("ztinfra listening on "):
                sys.exit(f"the server did not start: {line!r}")
            base = line.removeprefix("ztinfra listening on ").strip()
            addr = base.rsplit("/", 1)[-1]
            admin = open(os.path.join(data, "admin.token")).read().strip()
            broker = run(BIN, "credentials", "add", "launcher", "--role", "broker", "--data-dir", data).strip()
            alice = run(BIN, "credentials", "add", "alice", "--role", "approver", "--data-dir", data).strip()
            call(base, "/v1/agents", admin, {"name": "ops-bot", "owner": "bench"})
            token = call(base, "/v1/sessions", broker, {"agent": "ops-bot", "on_behalf_of": "frank", "ttl": 3600})["access_token"]

            def drop(resource):
                return {"action": "db.tables.drop", "resource": resource}

            # Approved approvals for every round's retries: asked and approved, 8 at a time.
            def approved(i):
                asked = call(base, "/v1/decide", token, drop(f"db://t/{i}"))
                aid = asked["approval"]["id"]
                call(base, f"/v1/approvals/{aid}/approve", alice, {"reason": "bench"})
                return json.dumps(drop(f"db://t/{i}")), f"zt-approval: {aid}"

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                retries = list(pool.map(approved, range(args.rounds * per_retry_run)))
            print(f"{len(retries)} approvals approved", file=sys.stderr)
            # The open approval the repeated request names.
            call(base, "/v1/decide", token, drop("db://open"))

            results = {}
            for n in range(args.rounds):
                chunk = retries[n * per_retry_run:(n + 1) * per_retry_run]
                kinds = [
                    ("a plain allow", dict(bodies=[json.dumps({"action": "db.tables.read", "resource": "db://x"})])),
                    ("approval_required, the open approval named", dict(bodies=[json.dumps(drop("db://open"))])),
                    ("approval_required, a new approval each", dict(
                        bodies=[json.dumps(drop(f"db://new/{n}/{i}")) for i in range(per_run)])),
                    ("approved retries, each used once", dict(
                        bodies=[b for b, _ in chunk], headers=[h for _, h in chunk], warmup=0)),
                ]
                for name, load_args in kinds:
                    seconds = RETRY_SECONDS if "retries" in name else args.seconds
                    r = load(addr, tmp, f"r{n}-{len(results)}-{name[:8]}", seconds, args.connections,
                             path="/v1/decide", token=token, **load_args)
                    if r["sent"] > len(load_args["bodies"]) and "each" in name:
                        sys.exit(f"{name}: the prepared requests ran out: raise SIZED_FOR")
                    results.setdefault(name, []).append(r)
                    print(f"round {n + 1} {name:>45}: {r['per_second']:>8.0f}/s p50 {r['p50_us']} us p99 {r['p99_us']} us",
                          file=sys.stderr)
            # The retries were allows that used their approvals: the first ones sent are used,
            # and sent again they are denied.
            for body, header in retries[:20]:
                aid = header.split()[1]
                shown = call(base, f"/v1/approvals/{aid}", alice)
                again = call(base, "/v1/decide", token, json.loads(body), headers={"zt-approval": aid})
                if not shown.get("used_by") or again["decision"] != "deny":
                    sys.exit(f"approval {aid} was not used by its retry: {shown} {again}")
        finally:
            server.terminate()
            server.wait(timeout=10)
    plain = statistics.median(r["p50_us"] for r in results["a plain allow"])
    print(f"| {args.connections} connections, durable evidence | decisions/s | p50 | p99 | p50 against a plain allow |")
    print("|---|---|---|---|---|")
    for name, rs in results.items():
        rate = statistics.median(r["per_second"] for r in rs)
        p50 = statistics.median(r["p50_us"] for r in rs)
        p99 = statistics.median(r["p99_us"] for r in rs)
        print(f"| {name} | {rate:,.0f} | {p50 / 1000:.2f} ms | {p99 / 1000:.2f} ms | {p50 / plain:.2f}x |")
    for name, rs in results.items():
        print(f"{name}: " + " / ".join(f"{r['per_second']:,.0f}" for r in rs), file=sys.stderr)


if __name__ == "__main__":
    main()
