"""Load the model in a background thread of each worker, so health can answer meanwhile.

A worker binds nothing itself (the gunicorn master already listens) but must answer the
health route from its first moment: 503 while loading, 200 once the model is loaded and
self-checked, and 503 for good if loading failed. Loading happens in a daemon thread
because it is mostly import and unpickling work that would otherwise stall the event loop
for seconds.

A failure is logged once per container, not once per worker: the first worker to fail
creates a marker file in the shared runtime directory and logs the reason at ERROR; the
others (and replacement workers) log it at DEBUG. The server does not exit on a failed load
(exiting makes Vertex restart the container in a loop that hides the reason); it keeps
answering 503 with the reason in the health body and the log.

Which path answers (the compiled graph, or the framework's predictor, and why: see
``predictor.load_predictor``) is logged once per container the same way: at INFO, or at
WARNING when a compiled graph failed its check and scikit-learn serves instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from . import artifact
from .compiled import AUTO, COMPILED
from .logs import log_fields
from .predictor import ModelLoadError, Predictor, load_predictor
from .storage import DEFAULT_RETRY_S, StorageError, local_model_dir

log = logging.getLogger(__name__)

FAILURE_MARKER = "load-failure-reported"
PREDICTOR_MARKER = "predictor-reported"


class ModelState:
    """This worker's model: ``predictor`` is set once loaded, ``error`` once failed."""

    def __init__(
        self,
        source: str,
        runtime_dir: Path,
        retry_s: int = DEFAULT_RETRY_S,
        predictor_choice: str = AUTO,
    ) -> None:
        self.source = source
        self.runtime_dir = runtime_dir
        self.retry_s = retry_s
        self.predictor_choice = predictor_choice
        """Which path serves (``SERVING_PREDICTOR``, ``Config.predictor``)."""
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.manifest: dict[str, Any] | None = None
        """The loaded model's manifest (framework, task, classes)."""

    @property
    def status(self) -> str:
        """``"ready"``, ``"failed"`` or ``"loading"``."""
        if self.predictor is not None:
            return "ready"
        return "failed" if self.error is not None else "loading"

    async def wait_until_settled(self, timeout_s: float, poll_s: float = 0.02) -> None:
        """Wait (without blocking the event loop) until loading ends or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while self.status == "loading" and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)

    def start(self) -> threading.Thread:
        """Start loading in a daemon thread (it must not keep a stopping worker alive)."""
        thread = threading.Thread(target=self.load, name="model-loader", daemon=True)
        thread.start()
        return thread

    def load(self) -> None:
        """Fetch, verify and load the model; record the predictor or the error."""
        try:
            model_dir = local_model_dir(self.source, self.runtime_dir, retry_s=self.retry_s)
            predictor, summary = load_predictor(model_dir, self.predictor_choice)
        except (ModelLoadError, StorageError) as exc:
            self._fail(str(exc), unexpected=None)
        except Exception as exc:  # a bug or an environment problem: keep the traceback
            self._fail(f"{type(exc).__name__}: {exc}", unexpected=exc)
        else:
            self.manifest = artifact.read_manifest(model_dir)
            self.predictor = predictor
            _report_path(self.runtime_dir, summary)
            log.info("model loaded; health is now 200", extra=log_fields(**summary))

    def _fail(self, reason: str, unexpected: Exception | None) -> None:
        self.error = reason
        first = _claim(self.runtime_dir / FAILURE_MARKER)
        log.log(
            logging.ERROR if first else logging.DEBUG,
            f"model failed to load: {reason}. Health stays 503 and "
            "predictions are refused until the container is restarted with a servable model",
            exc_info=unexpected,
            extra=log_fields(model_source=self.source, error=reason),
        )


def _report_path(runtime_dir: Path, summary: dict[str, Any]) -> None:
    """Say which path serves and why, once per container (the other workers at DEBUG)."""
    predictor, reason = summary["predictor"], summary["predictor_reason"]
    if summary["fallback"]:
        level, message = logging.WARNING, f"serving with {predictor}, not the compiled graph: "
    else:
        path = "the compiled graph (onnxruntime)" if predictor == COMPILED else predictor
        level, message = logging.INFO, f"serving with {path}: "
    log.log(
        level if _claim(runtime_dir / PREDICTOR_MARKER) else logging.DEBUG,
        message + reason,
        extra=log_fields(predictor=predictor, predictor_reason=reason),
    )


def _claim(marker: Path) -> bool:
    """True for the first process to create ``marker`` (atomically, O_EXCL)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
