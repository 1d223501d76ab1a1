"""Fixtures of the server tests: a model whose behaviour each request scripts."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest

from serving_image.server import artifact
from tests.server.estimators import ScriptedRegressor


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory around ``ScriptedRegressor``, with a matching manifest."""
    model_dir = tmp_path_factory.mktemp("scripted_model")
    joblib.dump(ScriptedRegressor(), model_dir / artifact.MODEL_FILE)
    manifest = {
        "manifest_version": artifact.MANIFEST_VERSION,
        "framework": "scikit-learn",
        "task": "regression",
        "target_classes": [],
        "features": [
            {"name": "x", "kind": "numeric", "nullable": False},
            {"name": "delay_s", "kind": "numeric", "nullable": False},
        ],
        "model_file": artifact.MODEL_FILE,
        "model_sha256": artifact.sha256_file(model_dir / artifact.MODEL_FILE),
    }
    (model_dir / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    artifact.write_jsonl(model_dir / artifact.INSTANCES_FILE, [{"x": 1.5, "delay_s": 0.0}])
    artifact.write_jsonl(model_dir / artifact.EXPECTED_FILE, [3.0])
    return model_dir
