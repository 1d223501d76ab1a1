"""``tcp_accepts`` on a container's published port: true only when the server in the container
listens, whichever engine publishes the port.

podman forwards 127.0.0.1:PORT with iptables, so a connection to a port nothing listens on is
refused. docker's userland proxy (``docker-proxy``) accepts every connection itself and closes
it at once when nothing listens behind it: a connect alone said "listening" there, and the
contract check passed liveness for servers that never listened (this test under docker, and
``tests/contract/test_broken_images.py``, show it no longer does).
"""

from __future__ import annotations

import time

import pytest

from components.runners import Engine, ServerSpec, start_server, tcp_accepts

HTTP_SERVER = (
    "import http.server as h; h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"
)
LABELS = {"test": "runner-tcp-accepts"}


def python_spec(image: str, code: str) -> ServerSpec:
    """The base image running ``code`` with ``python -c``, port 8080 published."""
    return ServerSpec(
        image, entrypoint="python", args=("-c", code), labels=LABELS, init=True, stop_timeout_s=5
    )


@pytest.mark.container
def test_a_published_port_with_nothing_listening_does_not_accept(
    engine: Engine, base_image: str
) -> None:
    with start_server(engine, python_spec(base_image, "import time; time.sleep(120)")) as idle:
        time.sleep(1.0)  # running, its port published, nothing listening
        assert idle.state().running
        assert not tcp_accepts(idle.url), f"{engine.name} said a port nobody listens on accepts"


@pytest.mark.container
def test_a_published_port_with_a_server_listening_accepts(engine: Engine, base_image: str) -> None:
    with start_server(engine, python_spec(base_image, HTTP_SERVER)) as serving:
        deadline = time.monotonic() + 30
        while not tcp_accepts(serving.url):
            assert time.monotonic() < deadline, serving.logs()
            assert serving.state().running, serving.logs()
            time.sleep(0.2)
