"""A model server that answers with its own name, for the router tests.

``POST`` on any path with ``{"instances": [...]}`` answers 200
``{"predictions": [NAME, ...], "server": NAME, "path": PATH}`` (one prediction per instance);
with ``{"status": N}`` (or ``"parameters": {"status": N}``) it answers ``N`` and
``{"error": "asked for N", "server": NAME}`` instead.
``GET`` answers 200. Keep-alive, as a real server. Standard library only. It listens on a free
127.0.0.1 port and prints ``listening on PORT`` once ready.

    python id_server.py --name NAME
"""

import argparse
import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    name = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, payload: Any) -> None:
        """Status line, headers and body in one write: a kill leaves a whole answer or none."""
        body = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.wfile.write(head.encode() + body)

    def do_GET(self) -> None:
        self._answer(200, {"server": self.name})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        status = request.get("status") or (request.get("parameters") or {}).get("status")
        if status:
            status = int(status)
            self._answer(status, {"error": f"asked for {status}", "server": self.name})
            return
        predictions = [self.name for _ in request.get("instances", [])]
        self._answer(200, {"predictions": predictions, "server": self.name, "path": self.path})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    Handler.name = args.name
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
