"""Train a tabular model and export it together with its fitted preprocessing.

The exported artifact is one directory (``serving_image/server/artifact.py``): the model with
its preprocessing inside, its manifest, sample instances in Vertex's request shape and the
predictions they must give. Serving loads that one model and never re-fits or re-implements
preprocessing.

Two frameworks share everything but the fit step (reading, checks, split, feature schema,
metrics, sample export, manifest): ``scikit-learn`` (``scikit_learn.py``, default) and
``tensorflow`` (``keras_model.py``: a Keras model whose preprocessing layers were adapted on
the training data, exported as a SavedModel). A scikit-learn pipeline is also compiled to an
ONNX graph, verified against the fitted pipeline and shipped only if it agrees
(``compiling``); the manifest's ``compiled`` entry says what happened.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.training.compiling import export_compiled
from components.training.evaluation import evaluate, expected_predictions
from components.training.fitting import Fitter
from components.training.inputs import (
    TrainingInputError,
    check_inputs,
    feature_schema,
    json_value,
    load_table,
)
from components.training.sample import export_sample
from components.training.scikit_learn import make_sklearn_fitter
from components.training.verification import GENERATED_ROWS, generated_rows
from serving_image.server import artifact

FRAMEWORKS = ("scikit-learn", "tensorflow")


@dataclass
class TrainingResult:
    """What ``train_and_export`` produced, for callers and the KFP wrapper."""

    model_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, float]
    confusion_matrix: list[list[int]] = field(default_factory=list)
    roc_curve: dict[str, list[float]] = field(default_factory=dict)


def make_fitter(
    framework: str, task: str, estimator: str, hyperparameters: dict[str, Any], seed: int
) -> Fitter:
    """The fit step of ``framework`` (checking estimator and hyper-parameters first)."""
    if framework == "scikit-learn":
        return make_sklearn_fitter(task, estimator, hyperparameters, seed)
    if framework == "tensorflow":
        try:
            from components.training.keras_model import make_keras_fitter
        except ImportError as exc:
            raise TrainingInputError(
                f"framework 'tensorflow' needs TensorFlow, which is not installed ({exc}); "
                "install the project's tensorflow extra: pip install -e '.[tensorflow]'"
            ) from None
        return make_keras_fitter(task, estimator, hyperparameters, seed)
    raise TrainingInputError(f"unknown framework {framework!r}; choose one of {FRAMEWORKS}")


def check_training_inputs(
    data: str,
    target: str,
    task: str,
    feature_columns: list[str] | None,
    framework: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
) -> tuple[Any, str, list[str], Fitter]:
    """Read the table and check everything training will use, before any fitting: the
    table, its target and feature columns against ``task``, the estimator and its
    hyper-parameters against ``framework``. Returns the table, the target, the features and
    the fit step. ``TrainingInputError`` names the fault (``run-local`` calls this first, so
    that a typo costs a second, not a build)."""
    frame, default_target = load_table(data)
    frame.columns = [str(c) for c in frame.columns]
    target = target or default_target or ""
    if not target:
        raise TrainingInputError(f"no target column given for {data!r}; pass target=<column>")
    features = list(feature_columns or [c for c in frame.columns if c != target])
    check_inputs(frame, target, task, features, data)
    return frame, target, features, make_fitter(framework, task, estimator, hyperparameters, seed)


def split_rows(
    frame: Any, target: str, task: str, features: list[str], eval_fraction: float, seed: int
) -> tuple[int, Any, Any, Any, Any]:
    """The labelled rows of a checked table split for training and evaluation (stratified
    for classification, seeded): their count, then ``x_train, x_eval, y_train, y_eval``.
    Text columns become object dtype with ``None`` for missing: what a request's JSON gives
    the server."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    frame = frame[frame[target].notna()].reset_index(drop=True)
    for name in features:
        if not pd.api.types.is_numeric_dtype(frame[name]):
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    x, y = frame[features], frame[target]
    if task == "classification":
        y = y.astype(str) if not pd.api.types.is_integer_dtype(y) else y
    stratify = y if task == "classification" and y.value_counts().min() >= 2 else None
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=eval_fraction, random_state=seed, stratify=stratify
    )
    return len(frame), x_train, x_eval, y_train, y_eval


def train_and_export(
    data: str,
    model_dir: str | Path,
    target: str = "",
    task: str = "classification",
    feature_columns: list[str] | None = None,
    estimator: str = "auto",
    hyperparameters: dict[str, Any] | None = None,
    eval_fraction: float = 0.2,
    seed: int = 42,
    sample_size: int = 200,
    framework: str = "scikit-learn",
) -> TrainingResult:
    """Train a model on a table and export it with its preprocessing.

    Args:
        data: CSV or Parquet path or URI (``gs://`` via gcsfs), or a bundled data set name
            (``"penguins"``).
        model_dir: directory to write the model artifact into (created if missing).
        target: the column to predict; may be empty for a bundled data set (its default).
        task: ``"classification"`` or ``"regression"``.
        feature_columns: the feature columns; ``None`` or empty means every other column.
        estimator: ``"auto"``, or for scikit-learn a name from ``CLASSIFIERS`` /
            ``REGRESSORS``; for TensorFlow ``"mlp"`` (see ``keras_model``).
        hyperparameters: scikit-learn: the estimator's keyword arguments, checked against its
            parameters; TensorFlow: ``keras_model.HYPERPARAMETERS`` (epochs, batch_size,
            learning_rate, hidden_units).
        eval_fraction: share of rows held out for evaluation (0 < x < 1), split with ``seed``.
        seed: random seed for the split and the estimator (when it takes ``random_state``).
        sample_size: how many evaluation rows to export as sample instances (the edge
            instances built from the schema come on top: see ``sample``).
        framework: ``"scikit-learn"`` (``model.joblib``) or ``"tensorflow"`` (a Keras model
            exported as ``saved_model/``; needs the project's ``tensorflow`` extra).

    Raises:
        TrainingInputError: any bad input, before training starts.
    """
    hyperparameters = dict(hyperparameters or {})
    if not 0 < eval_fraction < 1:
        raise TrainingInputError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    if sample_size < 1:
        raise TrainingInputError(f"sample_size must be at least 1, got {sample_size}")
    frame, target, features, fit = check_training_inputs(
        data, target, task, feature_columns, framework, estimator, hyperparameters, seed
    )

    rows, x_train, x_eval, y_train, y_eval = split_rows(
        frame, target, task, features, eval_fraction, seed
    )
    schema = feature_schema(x_train, features)
    model = fit(schema, x_train, y_train)
    evaluation = evaluate(task, model, x_eval, y_eval)

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_file = model.save(out)
    parts, kinds = export_sample(schema, x_eval, sample_size)
    instances = [
        {name: json_value(value) for name, value in row.items()}
        for part in parts
        for row in part.to_dict(orient="records")
    ]
    expected = [
        prediction for part in parts for prediction in expected_predictions(task, model, part)
    ]
    artifact.write_jsonl(out / artifact.INSTANCES_FILE, instances)
    artifact.write_jsonl(out / artifact.EXPECTED_FILE, expected)
    row_sets = [("sample", part) for part in parts] + [
        ("evaluation", x_eval),
        ("generated", generated_rows(schema, GENERATED_ROWS, seed)),
    ]
    compiled = export_compiled(model, schema, task, out, row_sets)
    fields = model.manifest_fields()
    manifest = {
        "manifest_version": artifact.MANIFEST_VERSION,
        "framework": fields.pop("framework"),
        "framework_version": fields.pop("framework_version"),
        "python_version": platform.python_version(),
        "libraries": fields.pop("libraries"),
        "task": task,
        "target": target,
        "target_classes": model.classes if task == "classification" else [],
        "features": schema,
        "sample_kinds": kinds,
        "estimator": fields.pop("estimator"),
        **fields,
        "model_file": model_file,
        "model_sha256": artifact.sha256_path(out / model_file),
        "compiled": compiled,
        "training": {
            "data": data,
            "rows": rows,
            "train_rows": len(x_train),
            "eval_rows": len(x_eval),
            "eval_fraction": eval_fraction,
            "seed": seed,
        },
        "metrics": evaluation.metrics,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_with": {"python": sys.version.split()[0]},
    }
    (out / artifact.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return TrainingResult(
        out, manifest, evaluation.metrics, evaluation.confusion_matrix, evaluation.roc_curve
    )
