#!/usr/bin/env python3
"""Least agency, measured in one run: token exchanges/s; decisions with a delegated token four
hops deep against a session's own token (the bound check, and with counted uses a store write
per decision); and plan step decisions/s, each step marked used once in the store.

A release server runs on loopback with durable evidence (SQLite) and a policy set that allows
the exchanges and the reads, so that what is measured is the delegation machinery, not a deny.
ROUNDS rounds interleave the decision measurements; the table gives medians and the ratio to
the session's own token.

    python3 bench/delegation.py [--seconds 8] [--rounds 3] [--connections 16]

Needs the release binaries (`cargo build --release -p ztinfra -p zt-loadgen`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ztinfra")
LOADGEN = os.path.join(ROOT, "target", "release", "zt-loadgen")
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
POLICIES = """
@id("delegation-allowed") permit (principal, action == Action::"ztinfra.token.exchange", resource);
@id("reads") permit (principal, action in Action::"crm", resource);
"""
READ = {"action": "crm.invoices.read", "resource": "crm://invoices/1"}


def run(*args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def call(base, path, token=None, body=None, form=None, headers=None):
    headers = dict(headers or {})
    data = None
    if body is not None:
        headers["content-type"] = "application/json"
        data = json.dumps(body).encode()
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, headers=headers, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def exchange_form(subject, actor, details):
    return {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS,
            "actor_token": actor, "actor_token_type": ACCESS, "authorization_details": json.dumps(details)}


def load(addr, tmp, name, seconds, connections, bodies, path, token=None, form=False, headers=None, warmup=2):
    body_file = os.path.join(tmp, f"{name}.bodies")
    with open(body_file, "w") as f:
        f.write("\n".join(bodies) + "\n")
    args = [LOADGEN, "--addr", addr, "--connections", connections, "--duration", seconds, "--warmup", warmup,
            "--json", "--bodies", body_file, "--path", path]
    if token:
        token_file = os.path.join(tmp, f"{name}.token")
        with open(token_file, "w") as f:
            f.write(token)
        args += ["--token-file", token_file]
    if form:
        args.append("--form")
    if headers:
        header_file = os.path.join(tmp, f"{name}.headers")
        with open(header_file, "w") as f:
            f.write("\n".join(headers) + "\n")
        args += ["--headers", header_file]
    result = json.loads(run(*args))
    if result["errors"]:
        sys.exit(f"{name}: {result['errors']} requests failed")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policies = os.path.join(tmp, "policies")
        os.mkdir(policies)
        with open(os.path.join(policies, "bench.cedar"), "w") as f:
            f.write(POLICIES)
        data = os.path.join(tmp, "data")
        server = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", "--policies", policies,
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
            agents = ["orchestrator", "planner", "retrieval", "summarizer", "tool", "executor"]
            for agent in agents:
                call(base, "/v1/agents", admin, {"name": agent, "owner": "bench"})
            tokens = {a: call(base, "/v1/sessions", broker, {"agent": a, "on_behalf_of": "alice", "ttl": 3600})
                      for a in agents}

            # A chain four delegations deep, each narrower.
            wide = [{"type": "ztinfra_action", "actions": ["crm.invoices"], "locations": ["crm://invoices/*"]}]
            chain = tokens["orchestrator"]["access_token"]
            for agent in ["planner", "retrieval", "summarizer", "tool"]:
                chain = call(base, "/oauth2/token", form=exchange_form(chain, tokens[agent]["access_token"], wide))["access_token"]
            counted = [{**wide[0], "max_uses": 1_000_000_000}]
            counted_chain = tokens["orchestrator"]["access_token"]
            for agent in ["planner", "retrieval", "summarizer", "tool"]:
                counted_chain = call(base, "/oauth2/token",
                                     form=exchange_form(counted_chain, tokens[agent]["access_token"], counted))["access_token"]
            own = tokens["tool"]["access_token"]
            read = [json.dumps(READ)]
            forms = [urllib.parse.urlencode(exchange_form(tokens["orchestrator"]["access_token"],
                                                          tokens["retrieval"]["access_token"], wide))]

            # Plans: enough single-use steps for every run.
            planner, executor = tokens["planner"], tokens["executor"]
            step_bodies, step_headers = [], []
            # Enough for 8,000 steps/s through every run and its warm-up.
            for p in range(args.rounds * (args.seconds + 2) * 8000 // 64 + 1):
                steps = [{"action": "crm.invoices.read", "resource": f"crm://invoices/{p}-{i}"} for i in range(64)]
                plan = call(base, "/v1/plans", planner["access_token"], {"executor": executor["session_id"], "steps": steps, "ttl": 3000})
                for i, step in enumerate(steps):
                    step_bodies.append(json.dumps({"action": step["action"], "resource": step["resource"]}))
                    step_headers.append(f"zt-plan-step: {plan['plan']}/{i}")
            print(f"{len(step_bodies)} plan steps ready", file=sys.stderr)

            results = {}
            kinds = [
                ("a session's own token", dict(bodies=read, path="/v1/decide", token=own)),
                ("a delegated token, depth 4", dict(bodies=read, path="/v1/decide", token=chain)),
                ("a delegated token, depth 4, counted uses", dict(bodies=read, path="/v1/decide", token=counted_chain)),
                ("token exchanges", dict(bodies=forms, path="/oauth2/token", form=True)),
            ]
            used_steps = 0
            for n in range(args.rounds):
                for name, load_args in kinds:
                    r = load(addr, tmp, f"r{n}-{len(results)}", args.seconds, args.connections, **load_args)
                    results.setdefault(name, []).append(r)
                    print(f"round {n + 1} {name:>42}: {r['per_second']:>8.0f}/s p50 {r['p50_us']} us p99 {r['p99_us']} us",
                          file=sys.stderr)
                # Each round takes steps no earlier round took.
                start = used_steps
                r = load(addr, tmp, f"steps{n}", args.seconds, args.connections,
                         bodies=step_bodies[start:], headers=step_headers[start:], path="/v1/decide",
                         token=executor["access_token"])
                used_steps += r["sent"]
                if used_steps > len(step_bodies):
                    sys.exit("the plan steps ran out: make more (a longer run needs more plans)")
                results.setdefault("plan steps (each used once)", []).append(r)
                print(f"round {n + 1} {'plan steps':>42}: {r['per_second']:>8.0f}/s p50 {r['p50_us']} us", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(timeout=10)
    own_rate = statistics.median(r["per_second"] for r in results["a session's own token"])
    own_p50 = statistics.median(r["p50_us"] for r in results["a session's own token"])
    print(f"| {args.connections} connections, durable evidence | /s | p50 | p99 | p50 against a session's own token |")
    print("|---|---|---|---|---|")
    for name, rs in results.items():
        rate = statistics.median(r["per_second"] for r in rs)
        p50 = statistics.median(r["p50_us"] for r in rs)
        p99 = statistics.median(r["p99_us"] for r in rs)
        ratio = f"{p50 / own_p50:.2f}x" if name.startswith("a ") else ""
        print(f"| {name} | {rate:,.0f} | {p50:.0f} us | {p99:.0f} us | {ratio} |")


if __name__ == "__main__":
    main()
