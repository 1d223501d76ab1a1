"""The WSGI app behind gunicorn on port 5005: the toy model at /predict, health at /healthz.

Like many hand-written servers it trusts its input: bad JSON, a missing ``instances`` or a
wrong feature raises, and gunicorn answers 500. A contract check passes it with warnings.
"""

import json
from collections.abc import Callable, Iterable
from typing import Any

from toyserver import as_features, predict_one


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/healthz":
        body = b"ok"
    elif path == "/predict" and environ["REQUEST_METHOD"] == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = json.loads(environ["wsgi.input"].read(length))
        predictions = [predict_one(as_features(i)) for i in request["instances"]]
        body = json.dumps({"predictions": predictions}).encode()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
