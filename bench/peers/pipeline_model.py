"""The model directory's pipeline as a peer server's shim serves it (benchmark only).

Vertex CPR's predictor and KServe's model (``cpr_predictor.py``, ``kserve_model.py``) share
this, so that each peer does the same work per request as our server: one DataFrame from the
v1 ``instances``, then ``predict`` and ``predict_proba``, answered as ``{"label",
"probabilities"}`` per instance (labels only with ``BENCH_PEER_OUTPUT=label``). It runs in
the peer's own venv, so it needs only pandas and joblib.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

LABELS_ONLY = os.environ.get("BENCH_PEER_OUTPUT") == "label"


class PipelineModel:
    """``model.joblib`` with its manifest's feature names, kinds and classes."""

    def __init__(self, model_dir: Path) -> None:
        self._model = joblib.load(model_dir / "model.joblib")
        manifest = json.loads((model_dir / "model_manifest.json").read_text())
        self._features = [f["name"] for f in manifest["features"]]
        self._categorical = [f["name"] for f in manifest["features"] if f["kind"] != "numeric"]
        self._classes = [str(c) for c in self._model.classes_]

    def frame(self, instances: list[dict[str, Any]]) -> pd.DataFrame:
        """A DataFrame from the instances, as CPR's guide builds one. pandas 3 infers a string
        column and turns a missing category into NaN where training had None (ours keeps
        None); pandas 2 keeps None."""
        frame = pd.DataFrame(instances, columns=self._features)
        return frame.astype({name: object for name in self._categorical})

    def predict(self, frame: pd.DataFrame) -> tuple[list[Any], list[list[float]] | None]:
        """Labels, and probabilities unless labels only (then one pipeline pass)."""
        labels = self._model.predict(frame).tolist()
        if LABELS_ONLY:
            return labels, None
        return labels, self._model.predict_proba(frame).tolist()

    def answers(self, labels: list[Any], probabilities: list[list[float]] | None) -> list[Any]:
        """One prediction per instance, in our server's shape."""
        if probabilities is None:
            return labels
        return [
            {"label": label, "probabilities": dict(zip(self._classes, row, strict=True))}
            for label, row in zip(labels, probabilities, strict=True)
        ]
