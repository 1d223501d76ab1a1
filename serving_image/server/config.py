"""Server settings, read once from the environment into a frozen dataclass.

Two groups of variables:

* ``AIP_*``: set by Vertex AI on the container (custom-container contract). The server only
  reads them and never sets one; an empty value counts as unset, as Vertex sets
  ``AIP_STORAGE_URI=""`` for a model uploaded without ``artifactUri``.
* ``SERVING_*``: this server's own knobs, with defaults that suit a Vertex replica. They can be
  baked into the image (Dockerfile ``ENV``) or given in ``containerSpec.env``.

Every value is checked here so that a bad setting stops the server at once with a message
that names the variable, instead of surfacing later as a confusing runtime error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .compiled import AUTO, PREDICTOR_CHOICES
from .storage import DEFAULT_RETRY_S

DEFAULT_PORT = 8080
DEFAULT_HEALTH_ROUTE = "/health"
DEFAULT_PREDICT_ROUTE = "/predict"
DEFAULT_MODEL_DIR = "/model"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # the largest body Vertex forwards to a container
DEFAULT_DRAIN_S = 1  # long enough for a request sent at the instant of SIGTERM
DEFAULT_MAX_BATCH_INSTANCES = 1000  # a merged penguins call: ~13 ms instead of ~7.5 ms
DEFAULT_GRACE_PERIOD_S = 20  # below Kubernetes' default 30 s terminationGracePeriodSeconds
DEFAULT_WORKER_TIMEOUT_S = 60  # Vertex's inference timeout on shared endpoints
DEFAULT_KEEP_ALIVE_S = 65  # longer than common proxy idle timeouts, as KServe does
DEFAULT_LOAD_WAIT_S = 30  # well inside Vertex's 60 s inference timeout
DEFAULT_MODEL_NAME = "model"
GRPC_PORT_VARIABLE = "SERVING_GRPC_PORT"
"""Turns gRPC on, on this port (the callers that start the server set it by this name)."""
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """An environment variable has a value the server cannot use; the message names it."""


@dataclass(frozen=True)
class Config:
    """Everything the server process needs to know, resolved from the environment."""

    port: int = DEFAULT_PORT
    """``AIP_HTTP_PORT``: the port to listen on, on all interfaces."""
    health_route: str = DEFAULT_HEALTH_ROUTE
    """``AIP_HEALTH_ROUTE``: GET here answers 200 once the model is loaded, 503 before."""
    predict_route: str = DEFAULT_PREDICT_ROUTE
    """``AIP_PREDICT_ROUTE``: POST ``{"instances": [...]}`` here for predictions."""
    storage_uri: str = ""
    """``AIP_STORAGE_URI``: ``gs://`` or local model directory; empty means ``model_dir``."""
    model_dir: str = DEFAULT_MODEL_DIR
    """``SERVING_MODEL_DIR``: model directory baked into the image, used without a storage URI."""
    workers: int = 1
    """``SERVING_WORKERS``: worker processes; default: the number of CPUs."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """``SERVING_MAX_BODY_BYTES``: larger request bodies get 413."""
    max_batch_instances: int = DEFAULT_MAX_BATCH_INSTANCES
    """``SERVING_MAX_BATCH_INSTANCES``: cap on instances per model call when concurrent
    requests are merged (see ``batching``); 1 turns merging off."""
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S
    """``SERVING_GRACE_PERIOD_S``: after SIGTERM, seconds in-flight requests may still take."""
    worker_timeout_s: int = DEFAULT_WORKER_TIMEOUT_S
    """``SERVING_WORKER_TIMEOUT_S``: a worker blocked this many seconds is killed and replaced."""
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S
    """``SERVING_KEEP_ALIVE_S``: idle keep-alive connections are closed after these seconds."""
    drain_s: int = DEFAULT_DRAIN_S
    """``SERVING_DRAIN_S``: after SIGTERM, seconds a worker keeps accepting and answering
    (each answer with ``Connection: close``) before it stops; 0 stops at once."""
    load_wait_s: int = DEFAULT_LOAD_WAIT_S
    """``SERVING_LOAD_WAIT_S``: how long a prediction sent to a worker whose model is still
    loading waits for it before answering 503. Health turns 200 as soon as one worker is
    ready, so Vertex may route to a sibling (or a freshly replaced worker) still loading."""
    storage_retry_s: int = DEFAULT_RETRY_S
    """``SERVING_STORAGE_RETRY_S``: how long a ``gs://`` model download retries transient
    failures (unreachable host, 5xx, 429) before the load fails with the reason."""
    grpc_port: int = 0
    """``SERVING_GRPC_PORT``: also serve gRPC here (the Open Inference Protocol,
    ``grpc.health.v1``, reflection; ``containerSpec.grpcPorts``); 0: off."""
    model_name: str = DEFAULT_MODEL_NAME
    """``SERVING_MODEL_NAME``: the model's name in gRPC requests (``""`` there also names it)."""
    access_log: bool = False
    """``SERVING_ACCESS_LOG``: one log line per request when true."""
    log_level: str = "info"
    """``SERVING_LOG_LEVEL``: one of ``LOG_LEVELS``."""
    predictor: str = AUTO
    """``SERVING_PREDICTOR``: which path answers (``compiled.PREDICTOR_CHOICES``): ``auto``
    (the compiled graph when the export verified it and it passes the self-check, else
    scikit-learn; a graph that fails its check is logged once and not used), ``compiled``
    (the graph or a failed load) or ``scikit-learn``."""

    @property
    def model_source(self) -> str:
        """Where the model comes from: the storage URI if set, else the baked-in directory."""
        return self.storage_uri or self.model_dir

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build the config from ``environ`` (default ``os.environ``); raise ``ConfigError``."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        grace_s = reader.integer("SERVING_GRACE_PERIOD_S", DEFAULT_GRACE_PERIOD_S, minimum=1)
        config = cls(
            port=reader.integer("AIP_HTTP_PORT", DEFAULT_PORT, minimum=1, maximum=65535),
            health_route=reader.route("AIP_HEALTH_ROUTE", DEFAULT_HEALTH_ROUTE),
            predict_route=reader.route("AIP_PREDICT_ROUTE", DEFAULT_PREDICT_ROUTE),
            storage_uri=reader.text("AIP_STORAGE_URI", ""),
            model_dir=reader.text("SERVING_MODEL_DIR", DEFAULT_MODEL_DIR),
            workers=reader.integer("SERVING_WORKERS", os.cpu_count() or 1, minimum=1),
            max_body_bytes=reader.integer(
                "SERVING_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1
            ),
            max_batch_instances=reader.integer(
                "SERVING_MAX_BATCH_INSTANCES", DEFAULT_MAX_BATCH_INSTANCES, minimum=1
            ),
            grace_period_s=grace_s,
            worker_timeout_s=reader.integer(
                "SERVING_WORKER_TIMEOUT_S", DEFAULT_WORKER_TIMEOUT_S, minimum=1
            ),
            keep_alive_s=reader.integer("SERVING_KEEP_ALIVE_S", DEFAULT_KEEP_ALIVE_S, minimum=1),
            # By default the drain leaves at least a second of the grace period to finish in.
            drain_s=reader.integer("SERVING_DRAIN_S", min(DEFAULT_DRAIN_S, grace_s - 1), minimum=0),
            load_wait_s=reader.integer("SERVING_LOAD_WAIT_S", DEFAULT_LOAD_WAIT_S, minimum=0),
            storage_retry_s=reader.integer("SERVING_STORAGE_RETRY_S", DEFAULT_RETRY_S, minimum=1),
            grpc_port=reader.integer(GRPC_PORT_VARIABLE, 0, minimum=0, maximum=65535),
            model_name=reader.text("SERVING_MODEL_NAME", DEFAULT_MODEL_NAME),
            access_log=reader.boolean("SERVING_ACCESS_LOG", False),
            log_level=reader.choice("SERVING_LOG_LEVEL", "info", LOG_LEVELS),
            predictor=reader.choice("SERVING_PREDICTOR", AUTO, PREDICTOR_CHOICES),
        )
        if config.drain_s >= config.grace_period_s:
            raise ConfigError(
                f"SERVING_DRAIN_S={config.drain_s} must be below SERVING_GRACE_PERIOD_S="
                f"{config.grace_period_s}: the drain is part of the grace period"
            )
        if config.grpc_port == config.port:
            raise ConfigError(
                f"SERVING_GRPC_PORT={config.grpc_port} is AIP_HTTP_PORT too: gRPC needs a port "
                "of its own (containerSpec.grpcPorts)"
            )
        if config.storage_uri.startswith("gs://") and len(config.storage_uri) <= len("gs://"):
            raise ConfigError("AIP_STORAGE_URI='gs://' names no bucket")
        return config


class _Reader:
    """Typed access to environment variables; empty values count as unset."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        return self._env.get(name, "").strip() or default

    def integer(self, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
        raw = self.text(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
            raise ConfigError(f"{name}={value} must be {bounds}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "").lower()
        if not raw:
            return default
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean; use one of {_TRUE + _FALSE}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.text(name, default).lower()
        if raw not in choices:
            raise ConfigError(f"{name}={raw!r} is not one of {choices}")
        return raw

    def route(self, name: str, default: str) -> str:
        raw = self.text(name, default)
        if not raw.startswith("/") or any(c.isspace() or c in "?#" for c in raw):
            raise ConfigError(
                f"{name}={raw!r} must be a URL path starting with '/' without spaces, '?' or '#'"
            )
        return raw
