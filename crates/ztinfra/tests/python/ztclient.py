"""What the Python tests of the `ztinfra` binary share: where it is, a running service, and a
JSON call."""

import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
ZTINFRA = os.environ.get("ZTINFRA_BIN", str(ROOT / "target/debug/ztinfra"))


@contextlib.contextmanager
def serving(config):
    """`ztinfra serve --config CONFIG` on a port of the system's choosing: yields its base URL,
    and stops it (SIGTERM) after."""
    server = subprocess.Popen(
        [ZTINFRA, "serve", "--config", config, "--listen", "127.0.0.1:0", "--no-watch"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("ztinfra listening on "), line
        yield line.removeprefix("ztinfra listening on ").strip()
    finally:
        server.terminate()
        server.wait(timeout=10)


def call(method: str, url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    """One JSON request, bearer `token` if given: the status and the parsed body."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
