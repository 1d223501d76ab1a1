"""Train a tabular model and export it together with its fitted preprocessing.

The exported artifact is one directory (see ``serving_image/server/manifest.py``): the model
with its preprocessing inside, its manifest, sample instances in Vertex's request shape and
the predictions they must give. Serving loads that one model and never re-fits or
re-implements preprocessing.

Two frameworks share everything but the fit step (reading, checks, split, feature schema,
metrics, sample export, manifest):

* ``scikit-learn`` (default, this module): one ``Pipeline`` (ColumnTransformer + estimator)
  in ``model.joblib``;
* ``tensorflow`` (``components/keras_model.py``): a Keras model whose preprocessing layers
  were adapted on the training data, exported as a SavedModel directory ``saved_model/``.

A framework's fit step is a *fitter*: ``make_fitter(task, estimator, hyperparameters, seed)``
checks the estimator and hyper-parameters (before any training) and returns
``fit(schema, x_train, y_train) -> FittedModel``.

``train_and_export`` is the plain function (importable and testable without kfp);
``train`` is the KFP v2 component around it.
"""

import json
import math
import platform
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kfp.dsl import ClassificationMetrics, Metrics, Model, Output

# Imported from its module, not from kfp.dsl: inside a running component kfp sets
# _KFP_RUNTIME=true and kfp.dsl stops exporting ``component``, yet the component body imports
# this module to reach ``train_and_export``.
from kfp.dsl.component_decorator import component

from components.images import COMPONENTS_IMAGE

BUNDLED_DATASETS = {"penguins": "species"}
"""Data sets that ship with the project, by name, with their default target column."""

CLASSIFIERS = {
    "logistic_regression": "sklearn.linear_model.LogisticRegression",
    "random_forest": "sklearn.ensemble.RandomForestClassifier",
    "gradient_boosting": "sklearn.ensemble.HistGradientBoostingClassifier",
    "decision_tree": "sklearn.tree.DecisionTreeClassifier",
}
REGRESSORS = {
    "ridge": "sklearn.linear_model.Ridge",
    "linear_regression": "sklearn.linear_model.LinearRegression",
    "random_forest": "sklearn.ensemble.RandomForestRegressor",
    "gradient_boosting": "sklearn.ensemble.HistGradientBoostingRegressor",
    "decision_tree": "sklearn.tree.DecisionTreeRegressor",
}
DEFAULT_ESTIMATORS = {"classification": "logistic_regression", "regression": "ridge"}
TASKS = tuple(DEFAULT_ESTIMATORS)
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")
FRAMEWORKS = ("scikit-learn", "tensorflow")


class TrainingInputError(ValueError):
    """A training input is wrong; the message names it and says what to do."""


@dataclass
class TrainingResult:
    """What ``train_and_export`` produced, for callers and the KFP wrapper."""

    model_dir: Path
    manifest: dict[str, Any]
    metrics: dict[str, float]
    confusion_matrix: list[list[int]] = field(default_factory=list)
    roc_curve: dict[str, list[float]] = field(default_factory=dict)


class FittedModel(ABC):
    """A fitted model as the shared evaluation and export code sees it, whatever the framework.

    ``predict``/``predict_proba`` take a frame of raw feature columns shaped as
    ``train_and_export`` prepares them (numeric float/int with NaN, categorical object with
    ``None``) and return numpy arrays.
    """

    classes: list[Any]
    """Classification: the class labels, in ``predict_proba``'s column order; else ``[]``."""
    has_probabilities: bool = True

    @abstractmethod
    def predict(self, frame: Any) -> Any:
        """Predicted labels (classification) or values (regression), one per row."""

    @abstractmethod
    def predict_proba(self, frame: Any) -> Any:
        """Class probabilities, rows x ``classes``."""

    @abstractmethod
    def save(self, model_dir: Path) -> str:
        """Write the model into ``model_dir``; return its file (or directory) name."""

    @abstractmethod
    def manifest_fields(self) -> dict[str, Any]:
        """``framework``, ``framework_version``, ``libraries``, ``estimator`` and any
        framework-specific manifest keys."""


Fitter = Callable[[list[dict[str, Any]], Any, Any], FittedModel]
"""``fit(schema, x_train, y_train)``, made by a framework's ``make_fitter``."""


def load_table(data: str) -> tuple[Any, str | None]:
    """Read a CSV or Parquet table from a local path or URI, or a bundled data set by name.

    Returns the frame and, for a bundled data set, its default target column.
    """
    import pandas as pd

    if data in BUNDLED_DATASETS:
        from palmerpenguins import load_penguins

        return load_penguins(), BUNDLED_DATASETS[data]
    suffix = Path(data.split("?")[0]).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TrainingInputError(
            f"cannot read {data!r}: the file name must end in .csv or .parquet "
            f"(or use a bundled data set: {sorted(BUNDLED_DATASETS)})"
        )
    reader = pd.read_csv if suffix == ".csv" else pd.read_parquet
    try:
        return reader(data), None
    except FileNotFoundError:
        raise TrainingInputError(f"cannot read {data!r}: no such file") from None
    except PermissionError:
        raise TrainingInputError(f"cannot read {data!r}: permission denied") from None
    except ImportError as exc:
        raise TrainingInputError(
            f"cannot read {data!r}: a library for this location is missing ({exc}); "
            "install gcsfs for gs:// URIs"
        ) from None
    except Exception as exc:  # pandas, pyarrow and fsspec raise many unrelated types
        raise TrainingInputError(
            f"cannot read {data!r} as {suffix[1:]}: {type(exc).__name__}: {exc}"
        ) from None


def _estimator_for(task: str, name: str, hyperparameters: dict[str, Any]) -> Any:
    """Instantiate the named estimator, checking every hyper-parameter name first."""
    import importlib

    table = CLASSIFIERS if task == "classification" else REGRESSORS
    if name == "auto":
        name = DEFAULT_ESTIMATORS[task]
    if name not in table:
        raise TrainingInputError(
            f"unknown estimator {name!r} for {task}; choose one of {sorted(table)}"
        )
    module_name, class_name = table[name].rsplit(".", 1)
    estimator_class = getattr(importlib.import_module(module_name), class_name)
    known = estimator_class().get_params()
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise TrainingInputError(
            f"unknown hyper-parameter(s) {unknown} for estimator {name!r} "
            f"({table[name]}); valid names: {sorted(known)}"
        )
    try:
        estimator = estimator_class(**hyperparameters)
        if hasattr(estimator, "_validate_params"):  # sklearn's own check, run before fit
            estimator._validate_params()
    except (TypeError, ValueError) as exc:
        raise TrainingInputError(
            f"invalid hyper-parameter value for estimator {name!r}: {exc}"
        ) from None
    return estimator


def _feature_schema(frame: Any, features: list[str]) -> list[dict[str, Any]]:
    """Describe each feature column: its kind, dtype, the categories seen, and missing counts."""
    import pandas as pd

    schema = []
    for name in features:
        column = frame[name]
        numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
        entry: dict[str, Any] = {
            "name": name,
            "kind": "numeric" if numeric else "categorical",
            "dtype": str(column.dtype) if numeric else "string",
            "required": True,
            "nullable": True,
            "missing_in_training": int(column.isna().sum()),
        }
        if not numeric:
            entry["categories"] = sorted(str(value) for value in column.dropna().unique())
        schema.append(entry)
    return schema


def _build_pipeline(schema: list[dict[str, Any]], estimator: Any) -> Any:
    """One Pipeline: impute + scale numerics, impute + one-hot categoricals, then the estimator."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [f["name"] for f in schema if f["kind"] == "numeric"]
    categorical = [f["name"] for f in schema if f["kind"] == "categorical"]
    transformers = []
    if numeric:
        transformers.append(
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                numeric,
            )
        )
    if categorical:
        transformers.append(
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                    ]
                ),
                categorical,
            )
        )
    preprocess = ColumnTransformer(transformers, remainder="drop")
    return Pipeline([("preprocess", preprocess), ("estimator", estimator)])


class SklearnModel(FittedModel):
    """A fitted scikit-learn ``Pipeline``, saved with joblib."""

    def __init__(self, pipeline: Any, name: str, hyperparameters: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.name = name
        self.hyperparameters = hyperparameters
        classes = getattr(pipeline, "classes_", None)
        self.classes = [] if classes is None else classes.tolist()
        self.has_probabilities = hasattr(pipeline, "predict_proba")

    def predict(self, frame: Any) -> Any:
        return self.pipeline.predict(frame)

    def predict_proba(self, frame: Any) -> Any:
        return self.pipeline.predict_proba(frame)

    def save(self, model_dir: Path) -> str:
        import joblib

        from serving_image.server import manifest as contract

        joblib.dump(self.pipeline, model_dir / contract.MODEL_FILE)
        return contract.MODEL_FILE

    def manifest_fields(self) -> dict[str, Any]:
        import joblib
        import numpy as np
        import pandas as pd
        import sklearn

        estimator = self.pipeline[-1]
        return {
            "framework": "scikit-learn",
            "framework_version": sklearn.__version__,
            "libraries": {
                "scikit-learn": sklearn.__version__,
                "numpy": np.__version__,
                "pandas": pd.__version__,
                "joblib": joblib.__version__,
            },
            "estimator": {
                "name": self.name,
                "class": type(estimator).__module__ + "." + type(estimator).__name__,
                "hyperparameters": self.hyperparameters,
            },
        }


def make_sklearn_fitter(
    task: str, estimator: str, hyperparameters: dict[str, Any], seed: int
) -> Fitter:
    """Check the named estimator and its hyper-parameters now; fit the Pipeline later."""
    model = _estimator_for(task, estimator, hyperparameters)
    if "random_state" in model.get_params() and "random_state" not in hyperparameters:
        model.set_params(random_state=seed)
    name = estimator if estimator != "auto" else DEFAULT_ESTIMATORS[task]

    def fit(schema: list[dict[str, Any]], x_train: Any, y_train: Any) -> FittedModel:
        pipeline = _build_pipeline(schema, model)
        pipeline.fit(x_train, y_train)
        return SklearnModel(pipeline, name, hyperparameters)

    return fit


def make_fitter(
    framework: str, task: str, estimator: str, hyperparameters: dict[str, Any], seed: int
) -> Fitter:
    """The fit step of ``framework`` (checking estimator and hyper-parameters first)."""
    if framework == "scikit-learn":
        return make_sklearn_fitter(task, estimator, hyperparameters, seed)
    if framework == "tensorflow":
        try:
            from components.keras_model import make_keras_fitter
        except ImportError as exc:
            raise TrainingInputError(
                f"framework 'tensorflow' needs TensorFlow, which is not installed ({exc}); "
                "install the project's tensorflow extra: pip install -e '.[tensorflow]'"
            ) from None
        return make_keras_fitter(task, estimator, hyperparameters, seed)
    raise TrainingInputError(f"unknown framework {framework!r}; choose one of {FRAMEWORKS}")


def _check_inputs(frame: Any, target: str, task: str, features: list[str], source: str) -> None:
    """Reject bad training inputs before any training, naming the column or value at fault."""
    if task not in TASKS:
        raise TrainingInputError(f"unknown task {task!r}; choose 'classification' or 'regression'")
    if frame.empty:
        raise TrainingInputError(f"the data set {source!r} has no rows")
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise TrainingInputError(
            f"target column {target!r} is not in {source!r}; its columns are {columns}"
        )
    unknown = [name for name in features if name not in columns]
    if unknown:
        raise TrainingInputError(
            f"feature column(s) {unknown} are not in {source!r}; its columns are {columns}"
        )
    if target in features:
        raise TrainingInputError(f"the target column {target!r} cannot also be a feature")
    if not features:
        raise TrainingInputError(f"no feature columns left in {source!r} besides the target")
    empty = [name for name in features if frame[name].isna().all()]
    if empty:
        raise TrainingInputError(
            f"feature column(s) {empty} are entirely missing (every value is empty) in "
            f"{source!r}; drop them with feature_columns or fix the data"
        )
    labelled = frame[target].dropna()
    if labelled.empty:
        raise TrainingInputError(f"target column {target!r} has no values in {source!r}")
    if task == "classification" and labelled.nunique() < 2:
        only = labelled.iloc[0]
        raise TrainingInputError(
            f"target column {target!r} has a single class ({only!r}) in {source!r}; "
            "classification needs at least two"
        )
    if task == "regression":
        import pandas as pd

        if not pd.api.types.is_numeric_dtype(labelled):
            raise TrainingInputError(
                f"target column {target!r} is not numeric ({labelled.dtype}); "
                "use task='classification' or a numeric target"
            )


def _json_value(value: Any) -> Any:
    """A pandas cell as the JSON value a client would send: NaN/NA become null."""
    if value is None:
        return None
    try:
        if value != value:  # NaN, pd.NA raises TypeError below
            return None
    except TypeError:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def _evaluate(task: str, model: FittedModel, x_eval: Any, y_eval: Any) -> TrainingResult:
    """Compute evaluation metrics (and the confusion matrix and ROC curve for classifiers)."""
    import numpy as np
    from sklearn import metrics as skm
    from sklearn.preprocessing import label_binarize

    result = TrainingResult(model_dir=Path(), manifest={}, metrics={})
    predicted = model.predict(x_eval)
    if task == "regression":
        result.metrics = {
            "rmse": float(math.sqrt(skm.mean_squared_error(y_eval, predicted))),
            "mae": float(skm.mean_absolute_error(y_eval, predicted)),
            "r2": float(skm.r2_score(y_eval, predicted)),
        }
        return result
    classes = model.classes
    result.metrics = {
        "accuracy": float(skm.accuracy_score(y_eval, predicted)),
        "f1_macro": float(skm.f1_score(y_eval, predicted, average="macro")),
    }
    result.confusion_matrix = skm.confusion_matrix(y_eval, predicted, labels=classes).tolist()
    if model.has_probabilities:
        proba = model.predict_proba(x_eval)
        if len(classes) == 2:
            truth = (np.asarray(y_eval) == classes[1]).astype(int)
            scores = proba[:, 1]
            result.metrics["roc_auc"] = float(skm.roc_auc_score(truth, scores))
        else:
            truth = label_binarize(y_eval, classes=classes)
            scores = proba
            result.metrics["roc_auc"] = float(
                skm.roc_auc_score(y_eval, proba, multi_class="ovr", labels=classes)
            )
        # One curve for the UI: micro-averaged one-vs-rest over all classes.
        fpr, tpr, thresholds = skm.roc_curve(np.ravel(truth), np.ravel(scores))
        thresholds = np.minimum(thresholds, 1.0)  # sklearn puts +inf first; the UI needs finite
        result.roc_curve = {
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": thresholds.tolist(),
        }
    return result


def _expected_predictions(task: str, model: FittedModel, rows: Any) -> list[Any]:
    """What the saved model predicts for ``rows``, in the server's default answer shape."""
    from serving_image.server.predictions import format_classification, format_regression

    if task == "regression":
        return format_regression(model.predict(rows).tolist())
    proba = model.predict_proba(rows).tolist() if model.has_probabilities else None
    return format_classification(
        model.predict(rows).tolist(),
        proba,
        model.classes,
        output="both" if proba is not None else "label",
    )


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
    sample_size: int = 10,
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
            ``REGRESSORS``; for TensorFlow ``"mlp"`` (see ``components.keras_model``).
        hyperparameters: scikit-learn: the estimator's keyword arguments, checked against its
            parameters; TensorFlow: ``keras_model.HYPERPARAMETERS`` (epochs, batch_size,
            learning_rate, hidden_units).
        eval_fraction: share of rows held out for evaluation (0 < x < 1), split with ``seed``.
        seed: random seed for the split and the estimator (when it takes ``random_state``).
        sample_size: how many evaluation rows to export as sample instances.
        framework: ``"scikit-learn"`` (``model.joblib``) or ``"tensorflow"`` (a Keras model
            exported as ``saved_model/``; needs the project's ``tensorflow`` extra).

    Raises:
        TrainingInputError: any bad input, before training starts.
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from serving_image.server import manifest as contract

    hyperparameters = dict(hyperparameters or {})
    if not 0 < eval_fraction < 1:
        raise TrainingInputError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    if sample_size < 1:
        raise TrainingInputError(f"sample_size must be at least 1, got {sample_size}")
    frame, default_target = load_table(data)
    frame.columns = [str(c) for c in frame.columns]
    target = target or default_target or ""
    if not target:
        raise TrainingInputError(f"no target column given for {data!r}; pass target=<column>")
    features = list(feature_columns or [c for c in frame.columns if c != target])
    _check_inputs(frame, target, task, features, data)
    fit = make_fitter(framework, task, estimator, hyperparameters, seed)

    frame = frame[frame[target].notna()].reset_index(drop=True)
    # Text columns as plain object dtype, missing as None: what a request's JSON gives the server.
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
    schema = _feature_schema(x_train, features)
    model = fit(schema, x_train, y_train)
    result = _evaluate(task, model, x_eval, y_eval)

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_file = model.save(out)
    # Rows with missing values first (up to half the sample): they exercise the imputers.
    has_missing = x_eval.isna().any(axis=1)
    with_missing = x_eval[has_missing].head(sample_size // 2)
    sample = pd.concat([with_missing, x_eval[~has_missing]]).head(sample_size)
    instances = [
        {name: _json_value(value) for name, value in row.items()}
        for row in sample.to_dict(orient="records")
    ]
    contract.write_jsonl(out / contract.INSTANCES_FILE, instances)
    contract.write_jsonl(out / contract.EXPECTED_FILE, _expected_predictions(task, model, sample))
    fields = model.manifest_fields()
    manifest = {
        "manifest_version": contract.MANIFEST_VERSION,
        "framework": fields.pop("framework"),
        "framework_version": fields.pop("framework_version"),
        "python_version": platform.python_version(),
        "libraries": fields.pop("libraries"),
        "task": task,
        "target": target,
        "target_classes": model.classes if task == "classification" else [],
        "features": schema,
        "estimator": fields.pop("estimator"),
        **fields,
        "model_file": model_file,
        "model_sha256": contract.sha256_path(out / model_file),
        "training": {
            "data": data,
            "rows": len(frame),
            "train_rows": len(x_train),
            "eval_rows": len(x_eval),
            "eval_fraction": eval_fraction,
            "seed": seed,
        },
        "metrics": result.metrics,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_with": {"python": sys.version.split()[0]},
    }
    (out / contract.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    result.model_dir = out
    result.manifest = manifest
    return result


@component(base_image=COMPONENTS_IMAGE)
def train(
    model: Output[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    data: str = "penguins",
    target: str = "",
    task: str = "classification",
    feature_columns: list = [],  # noqa: B006 (KFP needs a literal default)
    estimator: str = "auto",
    hyperparameters: dict = {},  # noqa: B006
    eval_fraction: float = 0.2,
    seed: int = 42,
    sample_size: int = 10,
    framework: str = "scikit-learn",
):
    """Train a tabular model and export it with its fitted preprocessing.

    Reads a CSV or Parquet table (local path, ``gs://`` URI, or the bundled ``penguins``
    data set), fits on a seeded split and evaluates on the hold-out rows. ``framework``
    ``"scikit-learn"`` fits one ``Pipeline`` (numeric: median impute + scale; categorical:
    most-frequent impute + one-hot ignoring unknown categories; then the named estimator);
    ``"tensorflow"`` fits a Keras model whose layers do the preprocessing (numeric: NaN ->
    training mean, then ``Normalization``; categorical: ``StringLookup`` one-hot, null -> all
    zeros, unknown -> an out-of-vocabulary slot), exported as a SavedModel. It writes:

    Args:
        data: CSV/Parquet path or URI, or ``"penguins"``.
        target: column to predict (empty: the bundled data set's default).
        task: ``"classification"`` or ``"regression"``.
        feature_columns: feature columns; empty means all columns but the target.
        estimator: ``"auto"`` or a name. scikit-learn: classification
            ``logistic_regression``, ``random_forest``, ``gradient_boosting``,
            ``decision_tree``; regression ``ridge``, ``linear_regression``,
            ``random_forest``, ``gradient_boosting``, ``decision_tree``. TensorFlow: ``mlp``.
        hyperparameters: estimator keyword arguments (names are checked); TensorFlow:
            ``epochs``, ``batch_size``, ``learning_rate``, ``hidden_units``.
        eval_fraction: hold-out share for evaluation.
        seed: seed for the split and the estimator.
        sample_size: number of evaluation rows exported as sample instances.
        framework: ``"scikit-learn"`` (default) or ``"tensorflow"``.

    Returns:
        model: directory with ``model.joblib`` (or ``saved_model/``), ``model_manifest.json``,
            ``instances_sample.jsonl`` and ``expected_predictions.jsonl``.
        metrics: accuracy, F1 (macro) and ROC AUC, or RMSE, MAE and R².
        classification_metrics: confusion matrix and ROC curve (classification only).
    """
    from components.train import train_and_export

    result = train_and_export(
        data=data,
        model_dir=model.path,
        target=target,
        task=task,
        feature_columns=list(feature_columns),
        estimator=estimator,
        hyperparameters=dict(hyperparameters),
        eval_fraction=eval_fraction,
        seed=seed,
        sample_size=sample_size,
        framework=framework,
    )
    manifest = result.manifest
    model.metadata.update(
        {
            "framework": manifest["framework"],
            "framework_version": manifest["framework_version"],
            "task": manifest["task"],
            "target": manifest["target"],
            "model_sha256": manifest["model_sha256"],
        }
    )
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    if result.confusion_matrix:
        classification_metrics.log_confusion_matrix(
            [str(c) for c in manifest["target_classes"]], result.confusion_matrix
        )
    if result.roc_curve:
        classification_metrics.log_roc_curve(
            result.roc_curve["fpr"], result.roc_curve["tpr"], result.roc_curve["thresholds"]
        )
