"""Choosing a runner: a container engine, or process mode when asked for by name."""

from __future__ import annotations

import os

from components.runners.base import ENGINE_ENV, PROCESS, ServerRunner
from components.runners.engine import detect_engine
from components.runners.process import ProcessRunner


def detect_runner(name: str | None = None) -> ServerRunner:
    """``name``, else ``$TRAIN_TO_SERVE_CONTAINER_ENGINE``: ``process`` gives process mode's
    runner; anything else, or nothing, a container engine (``detect_engine``).

    Raises:
        RunnerNotFoundError: the runner asked for, or any container engine, does not work.
    """
    requested = name or os.environ.get(ENGINE_ENV, "").strip() or None
    if requested == PROCESS:
        return ProcessRunner.create()
    return detect_engine(requested)
