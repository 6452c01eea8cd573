"""Side-by-side benchmark of ZT-Infra and peer decision points, in one run on this machine.

    bench/compare.sh [--smoke] [--workloads W1,W2,W3,W4,W5] [--systems NAME,...] [--write]

Systems: `ztinfra` (durable, signed evidence on), `ztinfra-no-evidence` (`--unsafe-no-evidence`,
to measure what evidence costs), `cedar-agent` (Cedar over HTTP, no audit), `cerbos-audit`
(Cerbos with its local audit log on) and `cerbos` (audit off). Peers are installed by
bench/compare.sh into a cache folder outside the repository, pinned; a peer that is missing is
skipped with a message.

Each system gets the same workload, expressed in its own policy language, and the harness checks
that every system gives the expected decision for every distinct request before measuring.
Method: the server is pinned to CPU 0 and the load generator (zt-loadgen, open loop, latency from
the scheduled send time into an HDR histogram) to CPU 1. The highest offered rate whose p99 stays
under 2 ms, and under 10 ms, is searched with short probes (3 s after 1 s of warm-up); then three
runs of 5 s at a fixed 1,000/s give medians of p50, p99, p99.9 and max, CPU milliseconds per 1,000
decisions (from /proc) and the server's peak RSS. The table prints ratios against ZT-Infra with
evidence on; `--write` puts it in BENCHMARKS.md. W5 replaces the policy set twice a second
throughout (ztinfra: file rewritten, then POST /v1/policies/reload; cedar-agent: PUT /v1/policies;
Cerbos: its directory watch), and a failed reload fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ZTINFRA_BENCH_CACHE", Path.home() / ".cache" / "ztinfra-bench"))
# Release binaries; the test suite's smoke run points this at the debug ones.
BIN = Path(os.environ.get("ZTINFRA_BENCH_BIN_DIR", ROOT / "target" / "release"))
ZTINFRA = BIN / "ztinfra"
LOADGEN = BIN / "zt-loadgen"
CEDAR_AGENT = CACHE / "cedar-agent" / "bin" / "cedar-agent"
CERBOS = CACHE / "cerbos" / "node_modules" / "@cerbos" / "cerbos-linux-x64" / "cerbos-linux-x64"
CONNECTIONS = 32
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Workloads: each is a list of requests (actor, action, resource, context, expected decision) and
# the policies that decide them, written once per policy language.


@dataclass
class Request:
    actor: str
    action: str
    resource: str
    context: dict
    allow: bool


@dataclass
class Workload:
    name: str
    title: str
    requests: list[Request]
    cedar: list[str]  # Cedar policies over Agent/Action/Resource
    cerbos_rules: list[dict]  # rules of one Cerbos resource policy (kind "resource")
    reload_every: float = 0.0  # seconds between policy reloads while measuring (W5); 0: none


def w1() -> Workload:
    return Workload(
        "W1",
        "simple allow, one policy",
        [Request("agent-1", "read", "doc-1", {}, True)],
        ['permit(principal, action == Action::"read", resource);'],
        [{"actions": ["read"], "effect": "EFFECT_ALLOW", "roles": ["agent"]}],
    )


def w2() -> Workload:
    n = 1000
    cedar = [f'permit(principal == Agent::"agent-{i % 50}", action == Action::"act{i}", resource);' for i in range(n)]
    rules = [
        {
            "actions": [f"act{i}"],
            "effect": "EFFECT_ALLOW",
            "roles": ["agent"],
            "condition": {"match": {"expr": f'request.principal.id == "agent-{i % 50}"'}},
        }
        for i in range(n)
    ]
    requests = []
    for i in range(0, n, 7):
        requests.append(Request(f"agent-{i % 50}", f"act{i}", "doc-1", {}, True))
        requests.append(Request(f"agent-{(i + 1) % 50}", f"act{i}", "doc-1", {}, False))
    return Workload("W2", "1,000 policies over 1,000 actions, half matching", requests, cedar, rules)


def w3() -> Workload:
    # 100 string attributes of about 80 bytes: an 8 KB context; the policy reads 5 of them.
    context = {f"attr{i:03}": f"value-{i:03}-" + "x" * 66 for i in range(100)}
    reads = [7, 23, 42, 61, 99]
    cedar_cond = " && ".join(f'context.attr{i:03} == "{context[f"attr{i:03}"]}"' for i in reads)
    cerbos_cond = " && ".join(f'request.resource.attr.attr{i:03} == "{context[f"attr{i:03}"]}"' for i in reads)
    denied = dict(context, attr042="something-else")
    return Workload(
        "W3",
        "heavy context: 8 KB, 100 attributes, the policy reads 5",
        [Request("agent-1", "read", "doc-1", context, True), Request("agent-1", "read", "doc-2", denied, False)],
        [f'permit(principal, action == Action::"read", resource) when {{ {cedar_cond} }};'],
        [{"actions": ["read"], "effect": "EFFECT_ALLOW", "roles": ["agent"], "condition": {"match": {"expr": cerbos_cond}}}],
    )


def w4() -> Workload:
    requests = []
    for i in range(1000):
        requests.append(Request(f"agent-{i}", "delete" if i % 10 == 9 else "read", f"doc-{i % 97}", {}, i % 10 != 9))
    return Workload(
        "W4",
        "90% allow / 10% deny over 1,000 actors",
        requests,
        ['permit(principal, action == Action::"read", resource);'],
        [{"actions": ["read"], "effect": "EFFECT_ALLOW", "roles": ["agent"]}],
    )


def w5() -> Workload:
    # W2's 1,000 policies and requests, with the whole set replaced twice a second while the load
    # runs: every system parses, validates and swaps in the set (the same policies each time, so
    # the answers do not change and are still checked).
    base = w2()
    return Workload("W5", "W2 with its 1,000-policy set reloaded every 0.5 s under load", base.requests,
                    base.cedar, base.cerbos_rules, reload_every=0.5)


WORKLOADS = {"W1": w1, "W2": w2, "W3": w3, "W4": w4, "W5": w5}


# ---------------------------------------------------------------------------------------------
# Systems: how to lay out a workload for each, start it, ask it, and read its answer.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace_file(path: Path, text: str) -> None:
    """Writes a file atomically, so that a watcher never reads half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Reloader(threading.Thread):
    """Reloads a system's policies every `every` seconds until stopped (W5)."""

    def __init__(self, system: System, workload: Workload, port: int, work: Path):
        super().__init__(daemon=True)
        self.args = (workload, port, work)
        self.system, self.every = system, workload.reload_every
        self.done, self.error = 0, None
        self.halt = threading.Event()

    def run(self):
        while not self.halt.wait(self.every):
            try:
                self.system.reload(*self.args, self.done + 1)
                self.done += 1
            except Exception as e:  # reported by stop()
                self.error = e
                return

    def stop(self) -> int:
        self.halt.set()
        self.join()
        if self.error is not None:
            raise RuntimeError(f"{self.system.name}: a policy reload failed: {self.error}")
        return self.done


def post(url: str, body: bytes, timeout: float = 10, token: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


class System:
    name = ""
    path = ""

    def available(self) -> str | None:
        """None, or why the system cannot run here."""
        return None

    def prepare(self, workload: Workload, work: Path) -> None:
        raise NotImplementedError

    def command(self, port: int, work: Path) -> list[str]:
        raise NotImplementedError

    def body(self, r: Request) -> dict:
        raise NotImplementedError

    def allowed(self, status: int, answer: dict) -> bool:
        raise NotImplementedError

    def reload(self, workload: Workload, port: int, work: Path, generation: int) -> None:
        """Replaces the policy set with an equivalent one (its text differs by `generation`)."""
        raise NotImplementedError


class ZtInfra(System):
    name = "ztinfra"
    path = "/v1/decide"
    extra: list[str] = []

    def available(self):
        return None if ZTINFRA.exists() else f"{ZTINFRA} is not built"

    def prepare(self, workload, work):
        policies = work / "policies"
        policies.mkdir()
        (policies / "bench.cedar").write_text("\n".join(workload.cedar) + "\n")
        # The schema validates policies (requests are not checked against it): declare the
        # context attributes the workload's policies read.
        attributes = sorted({key for r in workload.requests for key in r.context})
        context = ", ".join(f"{key}: String" for key in attributes)
        (policies / "bench.cedarschema").write_text(f"entity Agent;\nentity Resource;\ntype Context = {{{context}}};\n")

    def command(self, port, work):
        # Open callers, as the peers have: like for like (BENCHMARKS.md measures credentials).
        return [str(ZTINFRA), "serve", "--listen", f"127.0.0.1:{port}", "--policies", str(work / "policies"),
                "--data-dir", str(work / "data"), "--no-watch", "--callers", "open", *self.extra]

    def body(self, r):
        return {"actor": r.actor, "action": r.action, "resource": r.resource, "context": r.context}

    def allowed(self, status, answer):
        return status == 200 and answer.get("decision") == "allow"

    def reload(self, workload, port, work, generation):
        text = "\n".join(workload.cedar) + f"\n// generation {generation}\n"
        replace_file(work / "policies" / "bench.cedar", text)
        # A debug build (the smoke run) takes seconds to validate 1,000 policies.
        admin = (work / "data" / "admin.token").read_text().strip()
        status, answer = post(f"http://127.0.0.1:{port}/v1/policies/reload", b"", timeout=120, token=admin)
        if status != 200:
            raise RuntimeError(f"ztinfra reload answered {status}: {answer}")


class ZtInfraNoEvidence(ZtInfra):
    name = "ztinfra-no-evidence"
    extra = ["--unsafe-no-evidence"]


class CedarAgent(System):
    name = "cedar-agent"
    path = "/v1/is_authorized"

    def available(self):
        return None if CEDAR_AGENT.exists() else f"{CEDAR_AGENT} is not installed"

    def prepare(self, workload, work):
        policies = [{"id": f"p{i}", "content": text} for i, text in enumerate(workload.cedar)]
        (work / "policies.json").write_text(json.dumps(policies))
        (work / "data.json").write_text("[]")

    def command(self, port, work):
        return [str(CEDAR_AGENT), "--port", str(port), "--addr", "127.0.0.1", "--log-level", "error",
                "--policies", str(work / "policies.json"), "--data", str(work / "data.json")]

    def body(self, r):
        return {"principal": f'Agent::"{r.actor}"', "action": f'Action::"{r.action}"',
                "resource": f'Resource::"{r.resource}"', "context": r.context}

    def allowed(self, status, answer):
        return status == 200 and answer.get("decision") == "Allow"

    def reload(self, workload, port, work, generation):
        policies = [{"id": f"p{i}-{generation}", "content": text} for i, text in enumerate(workload.cedar)]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/policies", method="PUT",
                                         data=json.dumps(policies).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            if response.status != 200:
                raise RuntimeError(f"cedar-agent reload answered {response.status}")


class Cerbos(System):
    name = "cerbos"
    path = "/api/check/resources"
    audit = False

    def available(self):
        return None if CERBOS.exists() else f"{CERBOS} is not installed"

    def prepare(self, workload, work):
        policies = work / "policies"
        policies.mkdir()
        policy = {"apiVersion": "api.cerbos.dev/v1",
                  "resourcePolicy": {"version": "default", "resource": "resource", "rules": workload.cerbos_rules}}
        # JSON is YAML: Cerbos reads it as a .yaml file.
        (policies / "resource.yaml").write_text(json.dumps(policy))
        self.watch = workload.reload_every > 0

    def command(self, port, work):
        config = {
            "server": {"httpListenAddr": f"127.0.0.1:{port}", "grpcListenAddr": f"127.0.0.1:{free_port()}"},
            "storage": {"driver": "disk", "disk": {"directory": str(work / "policies"), "watchForChanges": self.watch}},
            "audit": {"enabled": self.audit, "accessLogsEnabled": False, "decisionLogsEnabled": self.audit,
                      "backend": "local", "local": {"storagePath": str(work / "audit")}},
        }
        (work / "cerbos.yaml").write_text(json.dumps(config))
        return [str(CERBOS), "server", f"--config={work / 'cerbos.yaml'}", "--log-level=error"]

    def body(self, r):
        return {"requestId": "bench", "principal": {"id": r.actor, "roles": ["agent"]},
                "resources": [{"actions": [r.action],
                               "resource": {"kind": "resource", "id": r.resource, "attr": r.context}}]}

    def allowed(self, status, answer):
        try:
            return status == 200 and "EFFECT_ALLOW" in answer["results"][0]["actions"].values()
        except (KeyError, IndexError, AttributeError):
            return False

    def reload(self, workload, port, work, generation):
        # Cerbos has no reload call without its admin API: it watches the directory.
        policy = {"apiVersion": "api.cerbos.dev/v1", "metadata": {"annotations": {"generation": str(generation)}},
                  "resourcePolicy": {"version": "default", "resource": "resource", "rules": workload.cerbos_rules}}
        replace_file(work / "policies" / "resource.yaml", json.dumps(policy))


class CerbosAudit(Cerbos):
    name = "cerbos-audit"
    audit = True


SYSTEMS = {s.name: s for s in (ZtInfra(), ZtInfraNoEvidence(), CedarAgent(), CerbosAudit(), Cerbos())}


# ---------------------------------------------------------------------------------------------
# Measurement.


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, system: System, bodies: Path, rate: int, seconds: int, warmup: int) -> dict:
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and os.cpu_count() >= 2 else []
    # Rate 0: closed loop, each connection sending as soon as it has its answer.
    pace = ["--rate", str(rate)] if rate else []
    out = subprocess.run(
        [*pin, str(LOADGEN), "--addr", f"127.0.0.1:{port}", "--connections", str(CONNECTIONS), *pace,
         "--duration", str(seconds), "--warmup", str(warmup), "--path", system.path, "--bodies", str(bodies), "--json"],
        capture_output=True, text=True, timeout=seconds + warmup + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"zt-loadgen failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


LIMITS_US = (2000, 10_000)  # p99 objectives: the 2 ms, and 10 ms to rank what cannot meet it
FIXED_RATE = 1000  # latency, CPU and memory are compared at the same offered load


def passes(result: dict, rate: int, limit_us: int) -> bool:
    return result["errors"] == 0 and result["p99_us"] < limit_us and result["per_second"] >= 0.97 * rate


@dataclass
class Row:
    system: str
    workload: str
    capacity: dict = field(default_factory=dict)  # p99 limit (us) -> highest rate meeting it
    saturation: float = 0  # closed loop, CONNECTIONS clients: decisions/s, median of three
    p50: float = 0
    p99: float = 0
    p999: float = 0
    max: float = 0
    cpu_ms_per_1k: float = 0
    rss_mb: float = 0
    reloads: int = 0  # policy reloads done while measuring (W5)
    note: str = ""


def capacities(probe) -> dict:
    """The highest offered rate whose p99 meets each limit: geometric steps up from 250/s, then
    three bisection steps between the last rate that met a limit and the first that did not. A
    short probe's p99 is one stall away from failing on a shared virtual machine, so a failed
    probe is tried once more, and the search goes on past one failed rate: a limit counts as
    exceeded at the second failed rate in a row."""
    passed = {limit: 0 for limit in LIMITS_US}
    failed: dict[int, int] = {}
    misses = {limit: 0 for limit in LIMITS_US}

    def meets(rate: int, limit: int, result: dict) -> bool:
        return passes(result, rate, limit) or passes(probe(rate), rate, limit)

    rate = 250
    while len(failed) < len(LIMITS_US) and rate <= 200_000:
        result = probe(rate)
        for limit in LIMITS_US:
            if limit in failed:
                continue
            if meets(rate, limit, result):
                passed[limit], misses[limit] = rate, 0
            else:
                misses[limit] += 1
                if misses[limit] >= 2:
                    failed[limit] = rate
        rate = int(rate * 1.5)
    for limit in LIMITS_US:
        low, high = passed[limit], failed.get(limit)
        for _ in range(3):
            if high is None or high <= low or high - low < max(50, low // 20):
                break
            mid = (low + high) // 2
            if meets(mid, limit, probe(mid)):
                low = mid
            else:
                high = mid
        passed[limit] = low
    return passed


def check(system: System, workload: Workload, port: int) -> None:
    """The same answers everywhere (before the load, and after it and any reloads), or the
    comparison means nothing."""
    for r in workload.requests[:50]:
        status, answer = post(f"http://127.0.0.1:{port}{system.path}", json.dumps(system.body(r)).encode())
        if system.allowed(status, answer) != r.allow:
            raise RuntimeError(f"{system.name} answered {status} {json.dumps(answer)[:300]} to "
                               f"{r.actor} {r.action}; expected {'allow' if r.allow else 'deny'}")


def measure(system: System, workload: Workload, smoke: bool) -> Row:
    row = Row(system.name, workload.name)
    with tempfile.TemporaryDirectory(prefix=f"zt-bench-{system.name}-") as tmp:
        work = Path(tmp)
        system.prepare(workload, work)
        bodies = work / "bodies.jsonl"
        bodies.write_text("".join(json.dumps(system.body(r)) + "\n" for r in workload.requests))
        port = free_port()
        pin = ["taskset", "-c", "0"] if shutil.which("taskset") and os.cpu_count() >= 2 else []
        server = subprocess.Popen([*pin, *system.command(port, work)], stdout=subprocess.DEVNULL,
                                  stderr=open(work / "server.err", "w"))
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"{system.name} exited: {(work / 'server.err').read_text()[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{system.name} did not listen")
                    time.sleep(0.1)
            check(system, workload, port)
            reloader = Reloader(system, workload, port, work) if workload.reload_every else None
            if reloader:
                reloader.start()
            if smoke:
                result = load(port, system, bodies, 200, 1, 0)
                row.reloads = reloader.stop() if reloader else 0
                if reloader and not row.reloads:
                    raise RuntimeError("no policy reload happened during the smoke run")
                check(system, workload, port)
                if result["errors"]:
                    raise RuntimeError(f"{result['errors']} errors")
                row.p50, row.p99 = result["p50_us"] / 1000, result["p99_us"] / 1000
                row.note = f"smoke: {result['requests']} requests at 200/s"
                return row
            row.capacity = capacities(lambda rate: load(port, system, bodies, rate, 2, 1))
            row.saturation = statistics.median(load(port, system, bodies, 0, 3, 1)["per_second"] for _ in range(3))
            runs, cpu = [], []
            for _ in range(3):
                before = cpu_seconds(server.pid)
                result = load(port, system, bodies, FIXED_RATE, 4, 1)
                used = cpu_seconds(server.pid) - before
                runs.append(result)
                # The CPU window includes the warm-up second; so does the count.
                cpu.append(used / (result["per_second"] * 5) * 1000 * 1000)
            pick = lambda key: statistics.median(r[key] for r in runs) / 1000
            row.p50, row.p99, row.p999, row.max = pick("p50_us"), pick("p99_us"), pick("p999_us"), pick("max_us")
            row.cpu_ms_per_1k = statistics.median(cpu)
            row.rss_mb = peak_rss_mb(server.pid)
            row.reloads = reloader.stop() if reloader else 0
            check(system, workload, port)
            return row
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def table(rows: list[Row]) -> str:
    base = {r.workload: r.capacity for r in rows if r.system == "ztinfra"}
    top = {r.workload: r.saturation for r in rows if r.system == "ztinfra"}
    lines = [
        "| workload | system | decisions/s at p99 < 2 ms | ztinfra / system | decisions/s at p99 < 10 ms | ztinfra / system "
        f"| saturated, {CONNECTIONS} clients: decisions/s | ztinfra / system "
        f"| at {FIXED_RATE:,}/s: p50 ms | p99 ms | p99.9 ms | max ms | CPU ms per 1k | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        workload = f"{r.workload} ({r.reloads:,} reloads)" if r.reloads else r.workload
        if r.note:
            lines.append(f"| {workload} | {r.system} | {r.note} | | | | | | {r.p50:.2f} | {r.p99:.2f} | | | | |")
            continue
        cells = []
        for limit in LIMITS_US:
            mine, zt = r.capacity.get(limit, 0), base.get(r.workload, {}).get(limit, 0)
            ratio = f"{zt / mine:.2f}x" if mine and zt else "—"
            cells += [f"{mine:,}" if mine else "none", ratio if r.system != "ztinfra" else "—"]
        zt = top.get(r.workload, 0)
        cells += [f"{r.saturation:,.0f}", f"{zt / r.saturation:.2f}x" if r.system != "ztinfra" and r.saturation else "—"]
        lines.append(
            f"| {workload} | {r.system} | {' | '.join(cells)} | {r.p50:.2f} | {r.p99:.2f} | {r.p999:.2f} | "
            f"{r.max:.2f} | {r.cpu_ms_per_1k:.0f} | {r.rss_mb:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one second per system and workload, no search")
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    args = parser.parse_args()
    rows, failures = [], []
    for w in args.workloads.split(","):
        workload = WORKLOADS[w]()
        for name in args.systems.split(","):
            system = SYSTEMS[name]
            missing = system.available()
            if missing:
                print(f"skip {name}: {missing}", file=sys.stderr)
                continue
            print(f"{workload.name} {name} ...", file=sys.stderr, flush=True)
            try:
                row = measure(system, workload, args.smoke)
            except Exception as e:  # noqa: BLE001: reported, and the run fails at the end
                failures.append(f"{workload.name} {name}: {e}")
                print(f"  FAILED: {e}", file=sys.stderr)
                continue
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)
    print(table(rows))
    if args.write and not args.smoke:
        write(rows, args)
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


def write(rows: list[Row], args) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
    command = "bench/compare.sh" + (f" --workloads {args.workloads}" if args.workloads != "W1,W2,W3,W4,W5" else "")
    block = (f"{begin}\nMeasured {time.strftime('%Y-%m-%d')} by `{command} --write`; workloads: "
             + "; ".join(f"{w}: {WORKLOADS[w]().title}" for w in args.workloads.split(","))
             + f".\n\n{table(rows)}\n{end}")
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
