#!/usr/bin/env python3
"""Behaviour signals, measured in one run: decisions/s of an agent session's allows with
`context.behaviour` observed and given to the policies (the default) against the same server
with `[behaviour] enabled = false`, durable evidence on in all; and the memory each tracked
agent costs.

Three release servers run on loopback (SQLite): behaviour on with a policy that reads
`context.behaviour` (a permit and such a forbid), behaviour on with the permit alone (no policy
reads it, so it is only counted), and behaviour off with the forbid too; ROUNDS rounds take
them in turn, so each is measured while the others are idle. The table gives medians and the
ratio to off.

Memory: an enforcement point then declares AGENTS distinct actors, each deciding ACTIONS
distinct actions on as many resources, on both servers; the resident set's growth on the
server with behaviour on, less the growth on the one with it off (the same evidence), divided
by AGENTS, is what one tracked agent costs.

    python3 bench/behaviour.py [--seconds 5] [--rounds 3] [--connections 16] [--agents 5000]

Needs the release binaries (`cargo build --release -p ztinfra -p zt-loadgen`).
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

# The helpers of the delegation benchmark beside this file: run a command, call the API, drive
# zt-loadgen.
from delegation import BIN, call, load, run

PERMIT = """
@id("work") permit (principal, action in Action::"files", resource);
"""
POLICIES = PERMIT + """
@id("probing") forbid (principal, action, resource)
when { context has behaviour && context.behaviour.denies_recent >= 1000 && context.behaviour.novel_action };
"""
ACTIONS = 20


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def server(tmp, name, enabled, policy_text=POLICIES):
    policies = os.path.join(tmp, f"policies-{name}")
    os.makedirs(policies, exist_ok=True)
    with open(os.path.join(policies, "bench.cedar"), "w") as f:
        f.write(policy_text)
    data = os.path.join(tmp, f"data-{name}")
    config = os.path.join(tmp, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"[behaviour]\nenabled = {'true' if enabled else 'false'}\n")
    process = subprocess.Popen([BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--policies", policies,
                                "--data-dir", data, "--no-watch"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("ztinfra listening on "):
            sys.exit(f"the server did not start: {line!r}")
        base = line.removeprefix("ztinfra listening on ").strip()
        admin = open(os.path.join(data, "admin.token")).read().strip()
        broker = run(BIN, "credentials", "add", "launcher", "--role", "broker", "--data-dir", data).strip()
        pep = run(BIN, "credentials", "add", "gateway", "--role", "pep", "--data-dir", data).strip()
        call(base, "/v1/agents", admin, {"name": "files-bot", "owner": "bench"})
        token = call(base, "/v1/sessions", broker,
                     {"agent": "files-bot", "on_behalf_of": "dana", "ttl": 3600})["access_token"]
        yield {"base": base, "addr": base.rsplit("/", 1)[-1], "token": token, "pep": pep, "pid": process.pid,
               "admin": admin}
    finally:
        process.terminate()
        process.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--agents", type=int, default=5000)
    args = parser.parse_args()
    # An agent's everyday calls: a few actions on many resources.
    bodies = [json.dumps({"action": f"files.{['read', 'write', 'list'][i % 3]}", "resource": f"doc/{i}"})
              for i in range(1000)]
    with tempfile.TemporaryDirectory() as tmp, server(tmp, "on", True) as on, \
            server(tmp, "unread", True, PERMIT) as unread, server(tmp, "off", False) as off:
        results = {}
        for n in range(args.rounds):
            for name, s in (("behaviour on, read by a policy", on), ("behaviour on, read by none", unread),
                            ("behaviour off", off)):
                r = load(s["addr"], tmp, f"r{n}-{name[-3:]}", args.seconds, args.connections, bodies,
                         path="/v1/decide", token=s["token"])
                results.setdefault(name, []).append(r)
                print(f"round {n + 1} {name:>30}: {r['per_second']:>8.0f}/s p50 {r['p50_us']} us p99 {r['p99_us']} us",
                      file=sys.stderr)
        # Each decision was made with what was observed: the last one's record holds it (and
        # not where no policy reads it).
        for s, carried in ((on, True), (unread, False)):
            last = call(s["base"], "/v1/decide", s["token"], {"action": "files.read", "resource": "doc/1"})
            record = call(s["base"], f"/v1/evidence/{last['evidence']['seq']}", s["admin"])["record"]
            if last["decision"] != "allow" or ("behaviour" in record["request"]["context"]) != carried:
                sys.exit(f"unexpected decision or record: {last} {record}")

        # Memory per tracked agent: AGENTS declared actors, ACTIONS actions each.
        many = [json.dumps({"actor": f"agent-{a}", "action": f"files.a{k}", "resource": f"t{k}/{a}"})
                for a in range(args.agents) for k in range(ACTIONS)]
        grown = {}
        for name, s in (("on", on), ("off", off)):
            before = rss_kib(s["pid"])
            r = load(s["addr"], tmp, f"mem-{name}", len(many) // 2500 + 2, 8, many,
                     path="/v1/decide", token=s["pep"], warmup=0)
            if r["sent"] < len(many):
                sys.exit(f"the memory run sent {r['sent']} of {len(many)} requests: give it longer")
            grown[name] = rss_kib(s["pid"]) - before
            print(f"memory {name}: {r['sent']} decisions, resident set +{grown[name]} KiB", file=sys.stderr)
        tracked = 0
        with urllib_get(on["base"], "/metrics") as text:
            for line in text.splitlines():
                if line.startswith("ztinfra_behaviour_tracked_agents "):
                    tracked = int(float(line.split()[1]))
    base_rate = statistics.median(r["per_second"] for r in results["behaviour off"])
    print(f"| {args.connections} connections, durable evidence | decisions/s | p50 | p99 | decisions/s against off |")
    print("|---|---|---|---|---|")
    for name, rs in results.items():
        rate = statistics.median(r["per_second"] for r in rs)
        p50 = statistics.median(r["p50_us"] for r in rs)
        p99 = statistics.median(r["p99_us"] for r in rs)
        print(f"| {name} | {rate:,.0f} | {p50 / 1000:.2f} ms | {p99 / 1000:.2f} ms | {rate / base_rate:.2f}x |")
    per_agent = (grown["on"] - grown["off"]) * 1024 / args.agents
    print(f"\n{tracked} agents tracked; {ACTIONS} actions and resources each: "
          f"{per_agent / 1024:.1f} KiB per tracked agent (resident set +{grown['on']} KiB with behaviour on, "
          f"+{grown['off']} KiB off)")
    for name, rs in results.items():
        print(f"{name}: " + " / ".join(f"{r['per_second']:,.0f}" for r in rs), file=sys.stderr)


@contextlib.contextmanager
def urllib_get(base, path):
    import urllib.request
    with urllib.request.urlopen(base + path, timeout=10) as response:
        yield response.read().decode()


if __name__ == "__main__":
    main()
