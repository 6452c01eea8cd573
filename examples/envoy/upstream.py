#!/usr/bin/env python3
"""The walkthrough's upstream: a stand-in invoices API behind Envoy.

It answers every request with what it received (method, path, the decision id Envoy added, and
whether an agent session token reached it), and prints one line per request on standard output,
so you can see that only the allowed requests got through.

    python3 upstream.py [PORT]    (default 8080; 0 picks a free port, printed first)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Invoices(BaseHTTPRequestHandler):
    def handle_one(self) -> None:
        seen = {
            "method": self.command,
            "path": self.path,
            "decision_id": self.headers.get("zt-decision-id"),
            "agent_token_forwarded": "zt-agent-token" in self.headers,
        }
        print(json.dumps(seen), flush=True)
        body = json.dumps({"upstream": "invoices", "seen": seen}).encode()
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_one

    def log_message(self, *args) -> None:  # one line per request is printed above
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8080), Invoices)
    print(f"upstream listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
