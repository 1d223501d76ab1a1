"""Talking to a model server's port: one HTTP request with a bounded timeout, or a TCP connect.

Failures are recorded, not raised: a refused connection, a reset or a timeout is evidence the
contract check reports and a runner waits through.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PREVIEW_CHARS = 300


def preview(data: bytes | str, limit: int = PREVIEW_CHARS) -> str:
    """A body as text for people: decoded, and cut to ``limit`` characters with its size."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(data):,} bytes)"


@dataclass
class Exchange:
    """One HTTP request sent to the server and what came back."""

    method: str
    route: str
    body: bytes | None = None
    body_note: str = ""
    """Shown instead of the body when the body itself would not help (e.g. 1.6 MB of JSON)."""
    status: int | None = None
    reason: str = ""
    response: bytes = b""
    error: str = ""
    """Why no HTTP response came back (refused, reset, timeout); empty when one did."""
    elapsed_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    """The response's headers, names in lowercase."""

    @property
    def ok(self) -> bool:
        """Whether the server answered 200."""
        return self.status == 200

    def request_text(self) -> str:
        """``POST /predict with body '...'`` for messages."""
        if self.body is None:
            return f"{self.method} {self.route}"
        shown = self.body_note or preview(self.body)
        return f"{self.method} {self.route} with body {shown}"

    def response_text(self) -> str:
        """``404 Not Found, body '...' after 0.003 s`` or the connection error, for messages."""
        if self.status is None:
            return f"no HTTP response: {self.error} (after {self.elapsed_s:.3f} s)"
        return (
            f"{self.status} {self.reason}, body {preview(self.response)} "
            f"(after {self.elapsed_s:.3f} s)"
        )

    def json(self) -> Any:
        """The response body parsed as JSON; raises ``ValueError`` when it is not JSON."""
        return json.loads(self.response)


def split_url(base_url: str) -> tuple[str, int]:
    """Host and port of an ``http://host:port`` base URL."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"expected a base URL like http://127.0.0.1:8080, got {base_url!r}")
    return parts.hostname, parts.port or 80


def send(
    base_url: str,
    method: str,
    route: str,
    timeout_s: float,
    body: bytes | None = None,
    body_note: str = "",
    headers: dict[str, str] | None = None,
) -> Exchange:
    """Send one request with a bounded timeout; connection failures are recorded, not raised."""
    host, port = split_url(base_url)
    exchange = Exchange(method, route, body, body_note)
    headers = {
        **({"Content-Type": "application/json"} if body is not None else {}),
        **(headers or {}),
    }
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    started = time.monotonic()
    try:
        # The server may answer (413) before reading the whole body: read the answer anyway.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(method, route, body=body, headers=headers)
        response = connection.getresponse()
        exchange.response = response.read()
        exchange.status, exchange.reason = response.status, response.reason
        exchange.headers = {name.lower(): value for name, value in response.getheaders()}
    except ConnectionRefusedError:
        exchange.error = f"connection refused on {host}:{port}"
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        exchange.error = "the server closed the connection without answering (reset)"
    except TimeoutError:
        exchange.error = f"no answer within {timeout_s:g} s"
    except (OSError, http.client.HTTPException) as exc:
        exchange.error = f"{type(exc).__name__}: {exc}"
    finally:
        exchange.elapsed_s = time.monotonic() - started
        connection.close()
    return exchange


PROXY_CLOSE_S = 0.2
"""How long a new connection must stay open to count as accepted by the server itself."""


def tcp_accepts(base_url: str, timeout_s: float = 1.0) -> bool:
    """Whether a server accepts TCP connections on the base URL's host and port: a connection
    succeeds and is not closed by the far end, with nothing sent, within ``PROXY_CLOSE_S``.

    A connect alone proves nothing behind docker's userland proxy (``docker-proxy``, which
    publishes a container's port on 127.0.0.1): it accepts every connection itself and closes
    it within milliseconds when nothing listens in the container. A server waits for the
    request instead, so the connection stays open (or it speaks first).
    """
    try:
        with socket.create_connection(split_url(base_url), timeout=timeout_s) as conn:
            conn.settimeout(PROXY_CLOSE_S)
            try:
                return conn.recv(1) != b""
            except TimeoutError:  # still open and quiet: the server waits for a request
                return True
    except OSError:  # refused, reset, or no connection in time
        return False


def free_local_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
