"""Revocation-to-deny latency on one node: how long after an admin asks to revoke a session
until a client that decides with it non-stop is refused.

    python3 bench/revocation.py BASE_URL DATA_DIR [ROUNDS] [DECIDE_URL]

With DECIDE_URL (another replica on the same PostgreSQL store), sessions are started and
revoked at BASE_URL and decided at DECIDE_URL: the time includes the change feed between them.

For each round: a broker starts a session; a thread decides with its token in a loop over a
keep-alive connection; the main thread revokes the session (noting the time it sent the
request) and the thread notes the time of the first refusal (401). Prints p50, p99 and max of
(first refusal - revocation sent), and of the revocation call itself. Needs a service with the
`demo-agent` agent registered and `DATA_DIR/broker.token`, as bench/identity.sh leaves them.
"""

import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

base = urlparse(sys.argv[1])
data = Path(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 200
decide_at = urlparse(sys.argv[4]) if len(sys.argv) > 4 else base
admin = (data / "admin.token").read_text().strip()
broker = (data / "broker.token").read_text().strip()
DECISION = json.dumps({"action": "aws.ec2.describe_instances", "resource": "i-1", "context": {"env": "prod"}})


def connect(at=base) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(at.hostname, at.port, timeout=10)


def call(conn, method, path, token, body=None):
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


control = connect()
to_deny, revoke_calls = [], []
# Each replica appends to its own evidence log: every start and revocation is recorded.
for _ in range(rounds):
    status, body = call(control, "POST", "/v1/sessions", broker,
                        json.dumps({"agent": "demo-agent", "on_behalf_of": "bench", "ttl": 300}))
    assert status == 201, body
    session = json.loads(body)
    started, refused_at = threading.Event(), []

    def decide(token=session["access_token"]):
        conn = connect(decide_at)
        while True:
            status, _ = call(conn, "POST", "/v1/decide", token, DECISION)
            if status == 401:
                refused_at.append(time.perf_counter())
                return
            assert status == 200, status
            started.set()

    worker = threading.Thread(target=decide)
    worker.start()
    started.wait()
    time.sleep(0.002)
    sent = time.perf_counter()
    status, _ = call(control, "POST", f"/v1/sessions/{session['session_id']}/revoke", admin, b"")
    answered = time.perf_counter()
    assert status == 200, status
    worker.join()
    to_deny.append((refused_at[0] - sent) * 1000)
    revoke_calls.append((answered - sent) * 1000)

for name, values in [("revocation sent -> first refusal", to_deny), ("revocation call", revoke_calls)]:
    print(f"{name}: p50 {statistics.median(values):.2f} ms, p99 {percentile(values, 0.99):.2f} ms, "
          f"max {max(values):.2f} ms ({len(values)} rounds)")
