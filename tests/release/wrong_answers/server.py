"""A model server that keeps Vertex's contract and answers wrong: the broken version of the
rollout tests. Health answers 200 at once; every prediction is "Gentoo" for sure, whatever the
instance (standard library only; the image needs no pip). With ``HOLD_MEMORY_MB`` it first
fills that much memory and keeps it: the memory-hungry model of the capacity tests.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = {"label": "Gentoo", "probabilities": {"Adelie": 0.0, "Chinstrap": 0.0, "Gentoo": 1.0}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, value: object) -> None:
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200 if self.path == os.environ["AIP_HEALTH_ROUTE"] else 404, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self._answer(200, {"predictions": [ANSWER] * len(body["instances"])})

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    held = bytearray(int(os.environ.get("HOLD_MEMORY_MB", "0")) * 2**20)
    for page in range(0, len(held), 4096):  # touch every page: resident, not just reserved
        held[page] = 1
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ["AIP_HTTP_PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
