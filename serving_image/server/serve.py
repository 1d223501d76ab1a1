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

Each worker runs uvicorn with uvloop and httptools, no ``Server`` header, and the app's
lifespan (which starts the background model load).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from .app import create_app
from .config import Config
from .logs import json_handler


class ServingWorker(UvicornWorker):
    """A uvicorn worker with the fastest event loop and HTTP parser, and lifespan on."""

    CONFIG_KWARGS = {  # noqa: RUF012 (UvicornWorker's own class attribute)
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "server_header": False,
    }


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
        }
        for name, value in settings.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        """Called in each worker after the fork: the app, whose lifespan starts the load."""
        return create_app(self.config, self.runtime_dir)
