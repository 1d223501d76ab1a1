"""Compile at export: each estimator's graph against scikit-learn, steps without a converter,
a graph that disagrees.

The scikit-learn side is the exported ``model.joblib`` on the trainer's frames; the compiled
side is ``model.onnx`` through the server's own encoding (``compiled.CompiledGraph``), fed
the rows as a client's JSON values.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from palmerpenguins import load_penguins
from sklearn.preprocessing import FunctionTransformer

from components.training import scikit_learn, train_and_export
from components.training.export import check_training_inputs, split_rows
from components.training.inputs import json_value
from components.training.verification import GENERATED_ROWS, generated_rows
from serving_image.server import artifact
from serving_image.server.compiled import MISSING_STRING, CompiledGraph
from serving_image.server.predictions import (
    SELF_CHECK_ABS_TOL,
    SELF_CHECK_REL_TOL,
    json_difference,
)
from serving_image.server.predictor import (
    SklearnPredictor,
    load_predictor,
)

ESTIMATORS = [
    *(("classification", "species", name) for name in scikit_learn.CLASSIFIERS),
    *(("regression", "body_mass_g", name) for name in scikit_learn.REGRESSORS),
    # Two classes take other paths (a logistic function, not a softmax).
    ("classification", "sex", "logistic_regression"),
    ("classification", "sex", "gradient_boosting"),
]


def client_columns(frame: Any) -> dict[str, list[Any]]:
    """A frame's columns as a client sends them (JSON values, null for missing)."""
    return {name: [json_value(value) for value in frame[name].tolist()] for name in frame}


def compare(graph: CompiledGraph, pipeline: Any, frame: Any) -> None:
    """The graph answers ``frame`` as the fitted pipeline does, within the tolerance."""
    values, probabilities = graph.predict(graph.feed(client_columns(frame)))
    if graph.task == "classification":
        assert values.tolist() == pipeline.predict(frame).tolist()
        got, want = probabilities.tolist(), pipeline.predict_proba(frame).tolist()
    else:
        got, want = values.tolist(), pipeline.predict(frame).tolist()
    difference = json_difference(want, got, rel_tol=SELF_CHECK_REL_TOL, abs_tol=SELF_CHECK_ABS_TOL)
    assert difference is None, difference


@pytest.mark.parametrize(("task", "target", "estimator"), ESTIMATORS)
def test_each_estimator_compiles_and_answers_as_scikit_learn(
    task: str, target: str, estimator: str, tmp_path: Path
) -> None:
    train_and_export("penguins", tmp_path, target=target, task=task, estimator=estimator)
    manifest = artifact.read_manifest(tmp_path)
    compiled = manifest["compiled"]
    assert compiled["status"] == "verified", compiled
    assert compiled["model_sha256"] == artifact.sha256_file(tmp_path / artifact.ONNX_FILE)

    frame, target, features, _ = check_training_inputs(
        "penguins", target, task, None, "scikit-learn", estimator, {}, 42
    )
    _, _, x_eval, _, _ = split_rows(frame, target, task, features, 0.2, 42)
    pipeline = joblib.load(tmp_path / artifact.MODEL_FILE)
    graph = CompiledGraph(tmp_path / artifact.ONNX_FILE, manifest["features"], task)
    compare(graph, pipeline, x_eval)
    compare(graph, pipeline, generated_rows(manifest["features"], 300, seed=7))

    verification = compiled["verification"]
    assert verification["tolerance"] == {"rel": SELF_CHECK_REL_TOL, "abs": SELF_CHECK_ABS_TOL}
    assert verification["rows"] == {
        "sample": len(manifest["sample_kinds"]),
        "evaluation": len(x_eval),
        "generated": GENERATED_ROWS,
    }
    assert verification["label_mismatches"] == verification["outside_tolerance"] == 0
    print(f"\n{task} {target} {estimator}: {verification['largest_difference']}")


def test_the_graph_takes_the_features_own_names(tmp_path: Path) -> None:
    """skl2onnx would make them identifiers; the server feeds the graph by feature name."""
    odd = {"bill_length_mm": "bill length (mm)", "island": "island.name", "sex": "séx"}
    load_penguins().rename(columns=odd).to_csv(tmp_path / "odd.csv", index=False)
    train_and_export(str(tmp_path / "odd.csv"), tmp_path / "model", target="species")
    manifest = artifact.read_manifest(tmp_path / "model")
    assert manifest["compiled"]["status"] == "verified", manifest["compiled"]
    graph = CompiledGraph(
        tmp_path / "model" / artifact.ONNX_FILE, manifest["features"], "classification"
    )
    assert {node.name for node in graph.session.get_inputs()} >= set(odd.values())


def test_generated_rows_hold_nulls_unseen_categories_and_the_null_marker() -> None:
    schema = [
        {"name": "x", "kind": "numeric", "min": 0.0, "max": 10.0},
        {"name": "c", "kind": "categorical", "categories": ["a", "b"]},
    ]
    rows = generated_rows(schema, 400, seed=1)
    assert rows["x"].isna().any() and (rows["x"] < 0).any() and (rows["x"] > 10).any()
    seen = set(rows["c"].tolist())
    assert {None, "a", "b", "unseen c", MISSING_STRING} <= seen
    assert rows["c"].dtype == object and rows["x"].dtype == np.float64


ORIGINAL_BUILD_PIPELINE = scikit_learn.build_pipeline


def with_tanh(schema: list[dict[str, Any]], estimator: Any) -> Any:
    """Our pipeline with ``tanh`` after the numeric scaling: a step skl2onnx cannot convert."""
    pipeline = ORIGINAL_BUILD_PIPELINE(schema, estimator)
    numeric = pipeline.named_steps["preprocess"].transformers[0][1]
    numeric.steps.append(("tanh", FunctionTransformer(np.tanh)))
    return pipeline


@pytest.mark.parametrize(
    ("change", "estimator", "step", "reason"),
    [
        ("tanh", "ridge", "preprocess.numeric.tanh", "FunctionTransformer is not supported"),
        (
            "kernel_ridge",
            "kernel_ridge",
            "estimator",
            "no ONNX converter for sklearn.kernel_ridge.KernelRidge",
        ),
    ],
)
def test_a_step_without_a_converter_exports_without_a_graph(
    change: str,
    estimator: str,
    step: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if change == "tanh":
        monkeypatch.setattr(scikit_learn, "build_pipeline", with_tanh)
    else:
        monkeypatch.setitem(
            scikit_learn.REGRESSORS, "kernel_ridge", "sklearn.kernel_ridge.KernelRidge"
        )
    train_and_export(
        "penguins", tmp_path, target="body_mass_g", task="regression", estimator=estimator
    )
    assert not (tmp_path / artifact.ONNX_FILE).exists()
    compiled = artifact.read_manifest(tmp_path)["compiled"]
    assert compiled["status"] == "not_compiled"
    assert compiled["step"] == step and reason in compiled["reason"], compiled

    predictor, summary = load_predictor(tmp_path)
    assert isinstance(predictor, SklearnPredictor)
    assert summary["predictor"] == "scikit-learn" and not summary["fallback"]
    assert "not_compiled" in summary["predictor_reason"] and reason in summary["predictor_reason"]


def test_a_graph_that_disagrees_is_not_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The graph of another fitted model (same inputs and outputs) stands in for the real one."""
    train_and_export("penguins", tmp_path / "tree", estimator="decision_tree")
    other = joblib.load(tmp_path / "tree" / artifact.MODEL_FILE)
    other_graph = scikit_learn.pipeline_graph
    monkeypatch.setattr(
        scikit_learn.SklearnModel,
        "onnx_graph",
        lambda self, schema: other_graph(other, schema),
    )
    with caplog.at_level(logging.WARNING):
        train_and_export("penguins", tmp_path / "model")

    assert not (tmp_path / "model" / artifact.ONNX_FILE).exists()
    compiled = artifact.read_manifest(tmp_path / "model")["compiled"]
    assert compiled["status"] == "disagrees"
    assert compiled["reason"].startswith("the graph disagrees with scikit-learn")
    verification = compiled["verification"]
    assert verification["label_mismatches"] + verification["outside_tolerance"] > 0
    assert verification["largest_difference"]["absolute"] > 0.01
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"model.onnx is not exported: {compiled['reason']}; the model serves with scikit-learn"
    ]
    _, summary = load_predictor(tmp_path / "model")
    assert summary["predictor"] == "scikit-learn" and "disagrees" in summary["predictor_reason"]
