"""Requests through Envoy with ZT-Infra's ext_authz filter, against the same Envoy without it.

    bench/extauthz.sh [ROUNDS] [SECONDS]   (builds release binaries and installs Envoy first)

One Envoy (`--concurrency 1`) with two listeners answering every request itself
(`direct_response`, so no upstream's cost is in either number): `plain`, with no filter, and
`guarded`, whose ext_authz filter asks `ztinfra serve` (release build, authenticated callers,
durable evidence on disk in a temporary data directory) about each request. zt-loadgen sends
`POST /v1/invoices/inv-7` with an agent session's token in `ZT-Agent-Token`: each request through
`guarded` is a decision for that session, allowed by policy and on record before Envoy answers.

A third side, `decide`, asks the HTTP API for the same decision directly (`POST /v1/decide`
with Envoy's credential and the session's token in `ZT-Agent-Token`), so the cost of the Envoy
and gRPC hops can be told from the decision's own.

Closed loop (16 connections, as many requests as the stack answers) gives requests per second;
open loop at a fixed rate (1000/s) gives latency without queueing. Rounds alternate plain and
guarded so that drift on the machine hits both alike; medians over the rounds are printed. With
taskset and two CPUs, Envoy and ztinfra share CPU 0 (the proxy host) and the load generator has
CPU 1.
"""

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ZTINFRA = ROOT / "target/release/ztinfra"
LOADGEN = ROOT / "target/release/zt-loadgen"
ENVOY = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
RATE = 1000
PIN_SERVER, PIN_LOAD = (["taskset", "-c", "0"], ["taskset", "-c", "1"]) if shutil.which("taskset") else ([], [])

POLICY = 'permit (principal == Agent::"billing-bot", action == Action::"http.invoices.post", resource);\n'
CONFIG = """data_dir = "data"
policies = "policies"
no_watch = true
[ext_authz]
listen = "127.0.0.1:0"
service = "invoices"
[[ext_authz.routes]]
path = "/v1/invoices/{id}"
methods = ["POST"]
resource = "invoice/{id}"
"""


def listener(name: str, port: int, guarded: bool, ext_port: int, pep: str) -> dict:
    # The buffer filter reads each request's body before the direct response (Envoy would
    # otherwise answer early and close the connection); both sides have it.
    filters = [{"name": "envoy.filters.http.buffer", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 65536}},
               {"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    if guarded:
        filters.insert(1, {"name": "envoy.filters.http.ext_authz", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3", "failure_mode_allow": False,
            "grpc_service": {"envoy_grpc": {"cluster_name": "ztinfra"}, "timeout": "2s",
                             "initial_metadata": [{"key": "authorization", "value": f"Bearer {pep}"}]}}})
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
            "http_filters": filters}}]}],
    }


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadgen(port: int, path: str, token_file: Path, bodies: Path, *extra: str) -> dict:
    done = subprocess.run(
        [*PIN_LOAD, str(LOADGEN), "--addr", f"127.0.0.1:{port}", "--path", path,
         "--bodies", str(bodies), "--agent-token-file", str(token_file), "--duration", str(SECONDS),
         "--warmup", "1", "--json", *extra],
        capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"zt-loadgen failed on port {port}:\n{done.stderr}")
    result = json.loads(done.stdout)
    assert result["errors"] == 0, result
    return result


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="zt-extauthz-bench-"))
    processes = []
    try:
        (work / "policies").mkdir()
        (work / "policies/policies.cedar").write_text(POLICY)
        (work / "ztinfra.toml").write_text(CONFIG)
        zt = subprocess.Popen([*PIN_SERVER, str(ZTINFRA), "serve", "--config", "ztinfra.toml", "--listen", "127.0.0.1:0"],
                              cwd=work, stdout=subprocess.PIPE, stderr=open(work / "ztinfra.log", "w"), text=True)
        processes.append(zt)
        base = zt.stdout.readline().removeprefix("ztinfra listening on ").strip()
        ext_port = int(zt.stdout.readline().strip().rsplit(":", 1)[1])
        credential = lambda name, role: subprocess.run(
            [str(ZTINFRA), "credentials", "add", name, "--role", role, "--data-dir", str(work / "data")],
            check=True, capture_output=True, text=True).stdout.strip()
        admin = (work / "data/admin.token").read_text().strip()
        pep, broker = credential("envoy", "pep"), credential("launcher", "broker")
        assert httpx.post(f"{base}/v1/agents", json={"name": "billing-bot", "owner": "bench"},
                          headers={"authorization": f"Bearer {admin}"}).status_code == 201
        session = httpx.post(f"{base}/v1/sessions", json={"agent": "billing-bot", "on_behalf_of": "bench", "ttl": 3600},
                             headers={"authorization": f"Bearer {broker}"})
        assert session.status_code == 201, session.text
        token_file = work / "agent.token"
        token_file.write_text(session.json()["access_token"])
        bodies = work / "bodies.jsonl"
        bodies.write_text('{"amount": 120}\n')
        # The same decision asked of the HTTP API directly (Envoy's credential, the session's
        # token beside it): what the gRPC hop and Envoy add to a decision.
        decide_bodies = work / "decide.jsonl"
        decide_bodies.write_text('{"action": "http.invoices.post", "resource": "invoice/inv-7"}\n')
        pep_file = work / "pep.token"
        pep_file.write_text(pep)
        http_port = int(base.rsplit(":", 1)[1])

        plain, guarded = free_port(), free_port()
        config = {"static_resources": {
            "listeners": [listener("plain", plain, False, ext_port, pep), listener("guarded", guarded, True, ext_port, pep)],
            "clusters": [{"name": "ztinfra", "type": "STATIC",
                          "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                              "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                              "explicit_http_config": {"http2_protocol_options": {}}}},
                          "load_assignment": {"cluster_name": "ztinfra", "endpoints": [{"lb_endpoints": [{"endpoint": {
                              "address": {"socket_address": {"address": "127.0.0.1", "port_value": ext_port}}}}]}]}}],
        }}
        (work / "envoy.json").write_text(json.dumps(config))
        envoy = subprocess.Popen([*PIN_SERVER, ENVOY, "-c", str(work / "envoy.json"), "--disable-hot-restart",
                                  "--concurrency", "1", "--log-level", "error"],
                                 stdout=subprocess.DEVNULL, stderr=open(work / "envoy.log", "w"))
        processes.append(envoy)
        headers = {"zt-agent-token": token_file.read_text()}
        for _ in range(100):
            try:
                if httpx.post(f"http://127.0.0.1:{guarded}/v1/invoices/inv-7", headers=headers).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        # Each side must answer as intended before it is measured: guarded allows this session
        # (and refuses a request without its token), plain answers anyone.
        assert httpx.post(f"http://127.0.0.1:{guarded}/v1/invoices/inv-7", headers=headers).status_code == 200
        assert httpx.post(f"http://127.0.0.1:{guarded}/v1/invoices/inv-7").status_code == 401
        assert httpx.post(f"http://127.0.0.1:{plain}/v1/invoices/inv-7").status_code == 200

        sides = {
            "plain": (plain, "/v1/invoices/inv-7", bodies, []),
            "guarded": (guarded, "/v1/invoices/inv-7", bodies, []),
            "decide": (http_port, "/v1/decide", decide_bodies, ["--token-file", str(pep_file)]),
        }
        results = {side: {"closed": [], "open": []} for side in sides}
        for round in range(ROUNDS):
            for side, (port, path, body_file, extra) in sides.items():
                results[side]["closed"].append(loadgen(port, path, token_file, body_file, *extra,
                                                       "--connections", "16"))
                results[side]["open"].append(loadgen(port, path, token_file, body_file, *extra,
                                                     "--connections", "16", "--rate", str(RATE)))
            print(f"round {round + 1}/{ROUNDS} done", file=sys.stderr)
        med = lambda runs, key: statistics.median(r[key] for r in runs)
        print(f"{ROUNDS} rounds of {SECONDS} s; medians over the rounds")
        print(f"{'side':<10}{'closed req/s':>14}{'closed p50':>12}{'closed p99':>12}"
              f"{'open p50 @' + str(RATE):>16}{'open p99':>11}{'open p99.9':>12}")
        for side in sides:
            c, o = results[side]["closed"], results[side]["open"]
            print(f"{side:<10}{med(c, 'per_second'):>14.0f}{med(c, 'p50_us'):>10.0f}us{med(c, 'p99_us'):>10.0f}us"
                  f"{med(o, 'p50_us'):>14.0f}us{med(o, 'p99_us'):>9.0f}us{med(o, 'p999_us'):>10.0f}us")
        ratio = med(results["guarded"]["closed"], "per_second") / med(results["plain"]["closed"], "per_second")
        added = med(results["guarded"]["open"], "p50_us") - med(results["plain"]["open"], "p50_us")
        print(f"guarded/plain throughput: {ratio:.2f}; added p50 at {RATE}/s: {added:.0f}us")
        # Every guarded request is a decision on record.
        auth = {"authorization": f"Bearer {admin}"}
        newest = httpx.get(f"{base}/v1/evidence", params={"limit": "1"}, headers=auth).json()["records"][0]
        print(f"evidence records written: {newest['seq']}")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
