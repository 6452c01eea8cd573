#!/usr/bin/env python3
"""One, two and three replicas on one PostgreSQL database, in one run; and how long a pushed
policy version takes to be active on every replica.

Each replica gets a load generator of its own (closed loop, CONNECTIONS connections, on
loopback); the table gives total decisions/s, the worst replica's p99, the decisions denied
because their evidence could not be committed (`ztinfra_evidence_commit_failures_total`), and
what PostgreSQL did per decision: commits, WAL bytes, and table bytes (records, checkpoints and
their indexes). The replicas take their policies from the store (`--policies-from-store`);
with the largest count, PUSHES versions are pushed one after the other (`ztinfra policy push`),
first with the replicas idle, then under the same load, and the delay from each push to its
activation on each replica (the replica's `loaded_at_ms` minus the version's `pushed_at_ms`) is
summarized.

    ZTINFRA_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \\
        python3 bench/scaleout.py [--seconds 10] [--connections 8]

Needs the release binaries (`cargo build --release -p ztinfra -p zt-loadgen`) and `psql`.
Each replica count runs on a schema of its own, dropped afterwards.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ztinfra")
LOADGEN = os.path.join(ROOT, "target", "release", "zt-loadgen")


def psql(url, sql):
    out = subprocess.run(["psql", url, "-qtAc", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def scoped(url, schema):
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-c%20search_path%3D{schema}"


DEMO = os.path.join(ROOT, "examples", "demo")


def push(store, directory):
    subprocess.run([BIN, "policy", "push", directory, "--store", store], check=True,
                   capture_output=True)


def policy_status(addr):
    import urllib.request
    return json.loads(urllib.request.urlopen(f"http://{addr}/v1/policies", timeout=5).read())


def push_delays(store, addrs, dirs, pushes, first):
    """Pushes `pushes` versions (alternating between `dirs`; the first gets number `first`),
    each once the previous is active everywhere; returns every (push, replica) delay in
    milliseconds."""
    delays = []
    for i in range(pushes):
        push(store, dirs[i % 2])
        want = first + i
        for addr in addrs:
            deadline = time.time() + 30
            while True:
                status = policy_status(addr)
                pushed = status.get("pushed") or {}
                if pushed.get("number", 0) >= want:
                    delays.append(status["loaded_at_ms"] - pushed["pushed_at_ms"])
                    break
                if time.time() > deadline:
                    sys.exit(f"version {want} did not become active on {addr}")
                time.sleep(0.002)
    return delays


def summary(values):
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"n": len(values), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": values[-1]}


def start(store, data, join=None):
    args = [BIN, "serve", "--policies-from-store", "--callers", "open", "--store", store,
            "--data-dir", data, "--listen", "127.0.0.1:0"]
    if join:
        args += ["--join", join]
    out = open(os.path.join(data, "out"), "w+")
    err = open(os.path.join(data, "err"), "w+")
    proc = subprocess.Popen(args, stdout=out, stderr=err)
    for _ in range(200):
        out.seek(0)
        m = re.search(r"ztinfra listening on http://(\S+)", out.read())
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    err.seek(0)
    sys.exit(f"a replica did not start: {err.read()}")


def commit_failures(addr):
    import urllib.request
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("ztinfra_evidence_commit_failures_total"))


def run(url, replicas, seconds, connections, pushes=0):
    schema = f"zt_bench_scaleout_{os.getpid()}_{replicas}"
    psql(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
    store = scoped(url, schema)
    push(store, DEMO)
    procs = []
    pushed = {}
    with tempfile.TemporaryDirectory() as work:
        try:
            addrs = []
            for i in range(replicas):
                data = os.path.join(work, f"r{i}")
                os.mkdir(data)
                proc, addr = start(store, data, join=None if i == 0 else f"r{i}")
                procs.append(proc)
                addrs.append(addr)
            db = psql(url, "SELECT current_database()")
            before = psql(url, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")
            lsn = psql(url, "SELECT pg_current_wal_lsn()")
            loads = [subprocess.Popen([LOADGEN, "--addr", a, "--connections", str(connections),
                                       "--duration", str(seconds), "--warmup", "2", "--json"],
                                      stdout=subprocess.PIPE, text=True) for a in addrs]
            results = [json.loads(p.communicate()[0]) for p in loads]
            after = psql(url, f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'")
            wal = psql(url, f"SELECT pg_current_wal_lsn() - '{lsn}'::pg_lsn")
            records = int(psql(url, f"SELECT COUNT(*) FROM {schema}.zt_evidence_records"))
            table_bytes = int(psql(url, f"SELECT pg_total_relation_size('{schema}.zt_evidence_records') "
                                        f"+ pg_total_relation_size('{schema}.zt_evidence_checkpoints')"))
            failures = sum(commit_failures(a) for a in addrs)
            if pushes:
                # A second set: the demo plus one permit, so that versions alternate.
                other = os.path.join(work, "other")
                shutil.copytree(DEMO, other)
                with open(os.path.join(other, "listing.cedar"), "w") as f:
                    f.write('permit(principal, action == Action::"aws.s3.list_buckets", resource);\n')
                # Version 1 is the demo set pushed before the replicas started.
                idle = push_delays(store, addrs, [other, DEMO], pushes, first=2)
                loads = [subprocess.Popen([LOADGEN, "--addr", a, "--connections", str(connections),
                                           "--duration", str(seconds * 3), "--warmup", "1", "--json"],
                                          stdout=subprocess.PIPE, text=True) for a in addrs]
                time.sleep(1.5)
                loaded = push_delays(store, addrs, [other, DEMO], pushes, first=pushes + 2)
                for p in loads:
                    p.communicate()
                pushed = {"idle": summary(idle), "loaded": summary(loaded)}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
            psql(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    # Requests made during warm-up are recorded too: the per-decision figures use every record.
    total = sum(r["per_second"] for r in results)
    return {
        "replicas": replicas,
        "decisions_per_s": total,
        "p99_us": max(r["p99_us"] for r in results),
        "p50_us": max(r["p50_us"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "commit_failures": failures,
        "records": records,
        "commits_per_decision": (int(after) - int(before)) / max(records, 1),
        "wal_bytes_per_decision": int(wal) / max(records, 1),
        "table_bytes_per_decision": table_bytes / max(records, 1),
        "push_to_activation": pushed,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--pushes", type=int, default=50)
    args = parser.parse_args()
    url = os.environ.get("ZTINFRA_BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    rows = [run(url, n, args.seconds, args.connections,
                pushes=args.pushes if n == args.max_replicas else 0)
            for n in range(1, args.max_replicas + 1)]
    base = rows[0]["decisions_per_s"]
    print(f"{args.connections} connections per replica, {args.seconds} s measured, one PostgreSQL database\n")
    print("| replicas | decisions/s | vs one | p50 (worst replica) | p99 (worst replica) | denied: not recorded | PG commits / decision | WAL bytes / decision | table bytes / decision |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['replicas']} | {r['decisions_per_s']:,.0f} | {r['decisions_per_s'] / base:.2f}x "
              f"| {r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms | {r['commit_failures']:.0f} "
              f"| {r['commits_per_decision']:.3f} | {r['wal_bytes_per_decision']:,.0f} | {r['table_bytes_per_decision']:,.0f} |")
    pushed = rows[-1]["push_to_activation"]
    if pushed:
        print()
        print(f"push to activation, {rows[-1]['replicas']} replicas, {pushed['idle']['n']} (push, replica) pairs each:")
        for when in ("idle", "loaded"):
            p = pushed[when]
            print(f"  {when:>6}: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms")
    print()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
