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

A model fitted elsewhere through the scikit-learn API (``export_model``, checked and adapted
by ``external``) is written by the same writer (``_write_artifact``) as a trained one.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.training.compiling import export_compiled
from components.training.evaluation import Evaluation, evaluate, expected_predictions
from components.training.external import (
    ExportError,
    ExternalModel,
    check_model,
    check_predicts,
    feature_names,
    normalise,
    refused_edges,
    type_name,
)
from components.training.fitting import FittedModel, Fitter
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

log = logging.getLogger(__name__)

FRAMEWORKS = ("scikit-learn", "tensorflow")


@dataclass
class TrainingResult:
    """What ``train_and_export`` produced, for callers and the KFP wrapper."""

    model_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, float]
    confusion_matrix: list[list[int]] = field(default_factory=list)
    roc_curve: dict[str, list[float]] = field(default_factory=dict)

    def artifact_metadata(self) -> dict[str, Any]:
        """What the ``Model`` artifact's metadata shows of the manifest (the Vertex UI
        lists it): framework and version, task, target, the model's sha256."""
        keys = ("framework", "framework_version", "task", "target", "model_sha256")
        return {key: self.manifest[key] for key in keys}


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
    parts, kinds = export_sample(schema, x_eval, sample_size)
    training = {
        "data": data,
        "rows": rows,
        "train_rows": len(x_train),
        "eval_rows": len(x_eval),
        "eval_fraction": eval_fraction,
        "seed": seed,
    }
    return _write_artifact(
        model,
        Path(model_dir),
        task=task,
        target=target,
        schema=schema,
        sample=(parts, kinds),
        x_eval=x_eval,
        evaluation=evaluation,
        training=training,
        seed=seed,
    )


def export_model(
    model: Any,
    sample: Any,
    model_dir: str | Path,
    *,
    target: str = "",
    task: str | None = None,
    eval_data: Any = None,
    sample_size: int = 200,
    seed: int = 42,
    data: str = "external",
) -> TrainingResult:
    """Export a model trained elsewhere as the artifact ``train`` writes, for ``build_image``,
    ``contract_check`` and the server.

    The feature schema (names, kinds, the sample's categories and ranges) comes from
    ``sample``; the expected predictions are the model's, in-process, on the sample's rows
    shaped as the server shapes a request's JSON (numbers float64 with NaN, anything else
    object with ``None``). Edge instances the model refuses (an unseen category for a
    ``OneHotEncoder(handle_unknown="error")``) are dropped with one warning and recorded in
    the manifest's ``sample_refused`` (kind: error); the sample's own rows must predict.
    The manifest is train's, with ``estimator`` naming the final estimator (``name`` its
    class in snake case, ``class`` ``module.Class``, ``hyperparameters`` its JSON-scalar
    parameters), ``training`` ``{data, rows, eval_rows, seed}``, and ``libraries`` adding
    ``xgboost``/``lightgbm`` when a step comes from them.

    Args:
        model: a fitted scikit-learn estimator or ``Pipeline``; XGBoost's and LightGBM's
            scikit-learn-API models, bare or as the pipeline's last step, are served too.
        sample: a pandas DataFrame of raw feature rows (the ``target`` column may be there:
            it is dropped from the features and its labelled rows give the metrics).
        model_dir: directory to write the artifact into (created if missing).
        target: the label column, in ``sample`` or ``eval_data``; empty when there is none.
        task: ``"classification"`` or ``"regression"``; ``None`` infers it from the model (a
            classifier: classification), a contradicting one is refused.
        eval_data: a labelled frame (features and ``target``) for the metrics, instead of
            the sample's labels; without either, the metrics are ``{}``.
        sample_size: how many of the sample's rows to export as sample instances (the edge
            instances come on top).
        seed: seed of the rows the compiled graph is verified on.
        data: what the manifest's ``training.data`` records: where the model came from.

    Raises:
        ExportError: a model or rows the server could not serve, naming the fault.
    """
    import pandas as pd

    if sample_size < 1:
        raise ExportError(f"sample_size must be at least 1, got {sample_size}")
    task = check_model(model, task)
    if not isinstance(sample, pd.DataFrame):
        raise ExportError(
            f"sample must be a pandas DataFrame of raw feature rows, got {type_name(sample)}"
        )
    if sample.empty:
        raise ExportError("the sample has no rows; pass some of the rows the model takes")
    sample = sample.rename(columns=str)
    features = feature_names(model, list(sample.columns), target)
    if not features:
        raise ExportError(f"the sample has no feature columns besides the target {target!r}")
    schema = feature_schema(sample, features)
    fitted = ExternalModel(model, seed)
    rows = normalise(sample, features, "sample")
    check_predicts(fitted, task, rows, "sample's rows")
    evaluation, eval_rows = _external_metrics(fitted, task, target, features, sample, eval_data)

    (evaluation_part, edges), kinds = export_sample(schema, rows, sample_size)
    edges, edge_kinds, refused = refused_edges(fitted, task, edges, kinds[len(evaluation_part) :])
    if refused:
        errors = "; ".join(f"{kind} ({error})" for kind, error in refused.items())
        log.warning(f"the sample leaves out edge instance(s) the model cannot predict: {errors}")
    parts = [evaluation_part, edges] if len(edges) else [evaluation_part]
    training = {"data": data, "rows": len(rows), "eval_rows": eval_rows, "seed": seed}
    return _write_artifact(
        fitted,
        Path(model_dir),
        task=task,
        target=target,
        schema=schema,
        sample=(parts, kinds[: len(evaluation_part)] + edge_kinds),
        x_eval=rows,
        evaluation=evaluation,
        training=training,
        seed=seed,
        sample_refused=refused,
    )


def _external_metrics(
    model: FittedModel, task: str, target: str, features: list[str], sample: Any, eval_data: Any
) -> tuple[Evaluation, int]:
    """The metrics on ``eval_data``, else on the sample's labelled rows, else none; and how
    many rows they were computed on."""
    import pandas as pd

    what = "eval_data"
    if eval_data is None:
        if not target or target not in sample.columns:
            return Evaluation(metrics={}), 0
        labelled, what = sample[sample[target].notna()], "sample"
        if labelled.empty:
            return Evaluation(metrics={}), 0
    else:
        if not isinstance(eval_data, pd.DataFrame):
            raise ExportError(f"eval_data must be a pandas DataFrame, got {type_name(eval_data)}")
        if not target:
            raise ExportError("eval_data needs target=<its label column>")
        eval_data = eval_data.rename(columns=str)
        missing = [name for name in [*features, target] if name not in eval_data.columns]
        if missing:
            raise ExportError(f"eval_data lacks column(s) {missing}; add them")
        labelled = eval_data[eval_data[target].notna()]
        if labelled.empty:
            raise ExportError(f"eval_data has no labelled rows (target {target!r} is empty)")
    x_eval = normalise(labelled, features, what)
    check_predicts(model, task, x_eval, f"{what}'s labelled rows")
    try:
        evaluation = evaluate(task, model, x_eval, labelled[target].reset_index(drop=True))
    except (ValueError, TypeError) as exc:  # labels the metrics cannot compare
        raise ExportError(
            f"cannot compute the metrics on the {what}'s labels ({type(exc).__name__}: {exc}); "
            f"target {target!r} must hold what the model predicts"
        ) from None
    return evaluation, len(x_eval)


def _write_artifact(
    model: FittedModel,
    out: Path,
    *,
    task: str,
    target: str,
    schema: list[dict[str, Any]],
    sample: tuple[list[Any], list[str]],
    x_eval: Any,
    evaluation: Evaluation,
    training: dict[str, Any],
    seed: int,
    sample_refused: dict[str, str] | None = None,
) -> TrainingResult:
    """Write the artifact of a fitted model, trained here or elsewhere: the model, the
    sample (``(frames, kinds)``) with its expected predictions, the compiled graph where one
    verifies (on the sample, ``x_eval`` and rows generated with ``seed``) and the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    model_file = model.save(out)
    parts, kinds = sample
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
    refused = {"sample_refused": sample_refused} if sample_refused else {}
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
        **refused,
        "estimator": fields.pop("estimator"),
        **fields,
        "model_file": model_file,
        "model_sha256": artifact.sha256_path(out / model_file),
        "compiled": compiled,
        "training": training,
        "metrics": evaluation.metrics,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_with": {"python": sys.version.split()[0]},
    }
    (out / artifact.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return TrainingResult(
        out, manifest, evaluation.metrics, evaluation.confusion_matrix, evaluation.roc_curve
    )
