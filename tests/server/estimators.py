"""A picklable toy estimator for the server tests; no tests here.

The server process unpickles it, so it lives in a module of its own that the server imports
as ``tests.server.estimators`` (the repository root is on its ``PYTHONPATH``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class ScriptedRegressor:
    """A regressor whose behaviour the request chooses, to test the server's edges.

    Features ``x`` and ``delay_s``: predicts ``2 * x`` after sleeping ``max(delay_s)``
    seconds (an in-flight request for the shutdown tests), and raises ``RuntimeError`` when
    any ``x`` is negative (the 500 path).
    """

    def predict(self, frame: Any) -> np.ndarray:
        x = frame["x"].to_numpy(dtype=float)
        if (x < 0).any():
            raise RuntimeError("scripted failure: x must not be negative")
        time.sleep(float(frame["delay_s"].max()))
        return 2 * x
