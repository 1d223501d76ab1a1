"""Someone else's scikit-learn server: an image this project did not build, for the contract
check's ``foreign_image`` tests.

It behaves as a pre-built prediction container or a team's own server does, not as ours:

* it listens on port 9000 with the routes ``/ping`` and ``/v1/models/m:predict``, fixed in
  the code (the check must be told them: ``port``, ``health_route``, ``predict_route``);
* it loads ``model.joblib`` from the directory ``AIP_STORAGE_URI`` names (the check mounts
  the model directory there) before it listens;
* it takes ``{"instances": [[value, ...], ...]}``, lists in the order the pipeline was fitted
  with (``feature_names_in_``), and answers ``{"predictions": [label, ...]}``
  (``model.predict(...).tolist()``): no probabilities, no request parameters;
* anything wrong in a request raises, and it answers 500 with the error.

Variants, by variable: ``SKEW_ZEROED=<feature>`` sets that feature to 0 before predicting, as
a server that drops or mis-maps a column does (skew); ``NO_MISSING=1`` refuses an instance
with a null value (500), as a server that turns instances into floats does. The process
tests set ``FIXTURE_PORT`` to a free port instead of 9000.
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

PORT = int(os.environ.get("FIXTURE_PORT", "9000"))
HEALTH_ROUTE = "/ping"
PREDICT_ROUTE = "/v1/models/m:predict"
MODEL = joblib.load(Path(os.environ["AIP_STORAGE_URI"]) / "model.joblib")
ZEROED = os.environ.get("SKEW_ZEROED", "")
NO_MISSING = os.environ.get("NO_MISSING") == "1"


def predict(instances: list[list[Any]]) -> list[Any]:
    if NO_MISSING and any(value is None for row in instances for value in row):
        raise ValueError("a missing value: this server takes numbers and strings only")
    frame = pd.DataFrame(instances, columns=MODEL.feature_names_in_)
    if ZEROED:
        frame[ZEROED] = 0
    return MODEL.predict(frame).tolist()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.reply(200 if self.path == HEALTH_ROUTE else 404, {})

    def do_POST(self) -> None:
        if self.path != PREDICT_ROUTE:
            self.reply(404, {})
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            predictions = predict(json.loads(body)["instances"])
        except Exception as exc:  # a hand-written server: every fault is a 500
            self.reply(500, {"error": repr(exc)})
            return
        self.reply(200, {"predictions": predictions})

    def reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 gets no default handler
    print(f"model loaded, listening on 0.0.0.0:{PORT}", flush=True)
    server.serve_forever()
