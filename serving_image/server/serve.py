"""Run the ASGI app under gunicorn with uvicorn workers: the production process model.

Why gunicorn + ``uvicorn_worker.UvicornWorker`` rather than ``uvicorn --workers``:

* gunicorn's master binds the port before any worker exists, so Vertex's TCP liveness probe
  passes at once, and the master holds the socket while workers come and go;
* workers are forked from a master that has imported only gunicorn, uvicorn and this
  package (~0.3 s); ``uvicorn --workers`` spawns fresh interpreters instead;
* mature supervision: a worker that dies is replaced, a worker whose event loop is blocked
  longer than ``SERVING_WORKER_TIMEOUT_S`` is killed and replaced (heartbeat), and SIGTERM
  closes the listener, lets every worker finish its in-flight requests and kills whatever
  is left after ``SERVING_GRACE_PERIOD_S`` (``graceful_timeout``), then exits 0.

At SIGTERM a worker first drains for ``SERVING_DRAIN_S``: it keeps accepting and answering,
each answer with ``Connection: close``, so that a request a client sends on an idle
keep-alive connection at that instant is answered rather than cut off; then it stops.

Once the master listens (``when_ready``), it imports what a scikit-learn model's workers
will need (``predictor.preimport``) before it forks them: two workers no longer import
numpy, pandas and scikit-learn each, side by side on the same cores.

Each worker runs uvicorn with uvloop and httptools, no ``Server`` header, and the app's
lifespan (which starts the background model load).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn import Server
from uvicorn_worker import UvicornWorker

from .app import ServingApp, create_app
from .config import Config
from .logs import json_handler, log_fields
from .predictor import preimport

log = logging.getLogger(__name__)


class DrainingServer(Server):
    """uvicorn's server, which at SIGTERM serves on for ``drain_s`` before it stops."""

    def __init__(self, config: Any, app: ServingApp, drain_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_s = drain_s
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_s > 0 and self.drain_until is None:
            self._captured_signals.append(sig)  # re-raised once serving ends, as uvicorn does
            self.drain_until = time.monotonic() + self.drain_s
            self.app.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            return True
        return await super().on_tick(counter)


class ServingWorker(UvicornWorker):
    """A uvicorn worker with the fastest event loop and HTTP parser, lifespan on, and a
    drain at SIGTERM."""

    CONFIG_KWARGS = {  # noqa: RUF012 (UvicornWorker's own class attribute)
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "server_header": False,
    }

    async def _serve(self) -> None:
        """``UvicornWorker._serve`` with the draining server."""
        self.config.app = self.wsgi
        drain_s = self.app.config.drain_s  # type: ignore[attr-defined]
        server = DrainingServer(self.config, self.wsgi, drain_s)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)


class JsonGunicornLogger(glogging.Logger):
    """gunicorn's logger with its handlers replaced by the JSON stdout handler.

    ``UvicornWorker`` hands these handlers to uvicorn's ``uvicorn.error`` and
    ``uvicorn.access`` loggers too; with no access handler, uvicorn skips access logging.
    """

    def setup(self, cfg: Any) -> None:
        handler = json_handler()
        self.error_log.handlers = [handler]
        self.error_log.setLevel(cfg.loglevel.upper())
        self.access_log.handlers = [handler] if cfg.accesslog else []
        self.access_log.setLevel(logging.INFO)


class ServingApplication(BaseApplication):
    """gunicorn configured from ``Config`` in code (no config file, no CLI parsing)."""

    def __init__(self, config: Config, runtime_dir: Path) -> None:
        self.config = config
        self.runtime_dir = runtime_dir
        super().__init__()

    def load_config(self) -> None:
        config = self.config
        settings: dict[str, Any] = {
            "bind": [f"0.0.0.0:{config.port}"],
            "workers": config.workers,
            "worker_class": ServingWorker,
            "graceful_timeout": config.grace_period_s,
            "timeout": config.worker_timeout_s,
            "keepalive": config.keep_alive_s,
            "logger_class": JsonGunicornLogger,
            "loglevel": config.log_level,
            "accesslog": "-" if config.access_log else None,
            "proc_name": "model-server",
            # The heartbeat file is touched often; keep it in memory where available.
            "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
            # gunicornc's control socket is a management surface this server does not use.
            "control_socket_disable": True,
            "when_ready": self.when_ready,
        }
        for name, value in settings.items():
            self.cfg.set(name, value)

    def when_ready(self, arbiter: Arbiter) -> None:
        """Listening already: import what the workers' model needs before forking them."""
        started = time.monotonic()
        modules = preimport(self.config.model_source, self.config.predictor)
        if modules:
            seconds = round(time.monotonic() - started, 3)
            extra = log_fields(modules=modules, seconds=seconds)
            log.info("imported before forking the workers", extra=extra)

    def load(self) -> Any:
        """Called in each worker after the fork: the app, whose lifespan starts the load."""
        return create_app(self.config, self.runtime_dir)
