"""Added latency of a tools/call through the MCP gateway, against the same call made directly.

    bench/mcp.sh [CALLS]        (builds release binaries and installs the pinned peers first)

One client (the official Python SDK), one call in flight, `get_current_time` of mcp-server-time
over stdio: direct; through `ztinfra mcp-gateway` (in-process decisions, durable evidence in a
temporary data directory on disk); and through a gateway whose data directory is on tmpfs
(/dev/shm), where fsync costs nothing, which separates the gateway's own work from the disk's
commit. Blocks of calls alternate so that drift on the machine hits all alike. Prints p50/p99 of
each and the differences to direct.
"""
import os

import asyncio
import statistics
import sys
import tempfile
import time

from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

ZTINFRA, POLICIES = sys.argv[1], sys.argv[2]
CALLS = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
BLOCK = 100
TIME_SERVER = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(client: Client, n: int, into: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter()
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
        into.append((time.perf_counter() - start) * 1e3)
        assert not result.is_error, result


def gateway(data: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=ZTINFRA,
        args=["mcp-gateway", "--server-name", "time", "--actor", "bench-agent", "--policies", POLICIES,
              "--data-dir", data, "--", *TIME_SERVER],
    )


async def main() -> None:
    direct = StdioServerParameters(command=TIME_SERVER[0], args=TIME_SERVER[1:])
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory() as disk, tempfile.TemporaryDirectory(dir=shm) as memory:
        variants = {"direct": direct, "gateway": gateway(disk)}
        if shm:
            variants["gateway-tmpfs"] = gateway(memory)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        clients = {name: Client(params) for name, params in variants.items()}
        for client in clients.values():
            await client.__aenter__()
        try:
            for client in clients.values():
                await timed(client, 200, [])  # warm-up
            for _ in range(CALLS // BLOCK):
                for name, client in clients.items():
                    await timed(client, BLOCK, samples[name])
        finally:
            for client in reversed(list(clients.values())):
                await client.__aexit__(None, None, None)
    print(f"tools/call get_current_time, {CALLS // BLOCK * BLOCK} calls each, one in flight")
    print(f"{'':14} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'added p50':>10} {'added p99':>10}")
    for name, s in samples.items():
        added = [quantile(s, q) - quantile(samples["direct"], q) for q in (0.5, 0.99)]
        print(f"{name:14} {quantile(s, 0.5):8.3f} {quantile(s, 0.99):8.3f} {statistics.fmean(s):8.3f}"
              f" {added[0]:10.3f} {added[1]:10.3f}")


asyncio.run(main())
