"""Models trained elsewhere, through the scikit-learn API: checked, adapted and probed for export.

``export.export_model`` takes a fitted scikit-learn estimator or ``Pipeline`` (XGBoost's
``XGBClassifier``/``XGBRegressor`` and LightGBM's ``LGBMClassifier``/``LGBMRegressor``, bare
or as a pipeline's last step, are scikit-learn-API models) and a frame of raw feature rows.
This module refuses what the server could not serve (``ExportError``, naming the fault and
what to do), shapes the rows as the trainer's and the server's frames are (``normalise``),
and wraps the model as a ``FittedModel`` (``ExternalModel``, a ``SklearnModel``: the server
serves it with scikit-learn). Edge instances the model cannot answer are dropped from the
sample (``refused_edges``), not a failed export: a model trained elsewhere may refuse an
unseen category by design.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from components.training.evaluation import expected_predictions
from components.training.fitting import FittedModel, NotCompilable
from components.training.inputs import TrainingInputError
from components.training.onnx_graph import pipeline_graph
from components.training.scikit_learn import SklearnModel
from components.training.verification import GENERATED_ROWS, generated_rows
from serving_image.server.artifact import TASKS

SUPPORTED = (
    "a fitted scikit-learn estimator or Pipeline (XGBoost's XGBClassifier/XGBRegressor and "
    "LightGBM's LGBMClassifier/LGBMRegressor through their scikit-learn API, bare or as a "
    "Pipeline's last step)"
)
BOOSTING_LIBRARIES = ("xgboost", "lightgbm")
"""Packages whose estimators a model may hold; their versions go into the manifest's
``libraries`` (the serving image must install the same to unpickle the model)."""


class ExportError(TrainingInputError):
    """A model trained elsewhere cannot be exported as it is; the message says why and what
    to do."""


def type_name(value: Any) -> str:
    """``module.Class`` of ``value``'s type."""
    return f"{type(value).__module__}.{type(value).__qualname__}"


def check_model(model: Any, task: str | None) -> str:
    """Refuse a model the server cannot serve with scikit-learn; return the task, ``task``
    when given (checked against the model), else inferred (a classifier: classification)."""
    from sklearn.base import BaseEstimator, is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    sklearn_api = isinstance(model, BaseEstimator) or (
        hasattr(model, "fit") and hasattr(model, "get_params")
    )
    if not sklearn_api:
        raise ExportError(
            f"a {type_name(model)} is not supported: export_model takes {SUPPORTED}; "
            "for a Keras model use train(framework='tensorflow')"
        )
    if not hasattr(model, "predict"):
        raise ExportError(
            f"the {type(model).__name__} has no predict() method (a transformer, or a Pipeline "
            "that ends in one); export the whole fitted Pipeline, ending in the estimator"
        )
    try:
        check_is_fitted(model)
    except NotFittedError:
        raise ExportError(
            f"the {type(model).__name__} is not fitted; fit it first, then export it"
        ) from None
    classifier = is_classifier(model)
    inferred = "classification" if classifier else "regression"
    if not task:  # None or empty: the model says
        return inferred
    if task not in TASKS:
        raise ExportError(f"unknown task {task!r}; choose 'classification' or 'regression'")
    if task != inferred:
        kind = "a classifier" if classifier else "not a classifier"
        raise ExportError(
            f"task {task!r} contradicts the model: the {type(model).__name__} is {kind}; "
            f"pass task={inferred!r} or leave task empty"
        )
    return task


def feature_names(model: Any, columns: list[str], target: str) -> list[str]:
    """The features the model takes: those it was fitted on, else the sample's columns but
    the target. Refuses a sample that lacks one, or has columns the model does not take."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is None:
        return [name for name in columns if name != target]
    features = [str(name) for name in fitted]
    missing = [name for name in features if name not in columns]
    if missing:
        raise ExportError(
            f"the sample lacks column(s) {missing} that the model takes (it was fitted on "
            f"{features}); add them to the sample"
        )
    extra = [name for name in columns if name not in features and name != target]
    if extra:
        hint = "" if target else ", or pass target=<column> if one of them is the label"
        raise ExportError(
            f"sample columns that the model does not take: {extra} (it was fitted on "
            f"{features}); drop them{hint}"
        )
    return features


def normalise(frame: Any, features: list[str], what: str) -> Any:
    """``frame``'s features as the server builds them from JSON (``SklearnPredictor``):
    numbers float64 with NaN for missing, anything else object dtype with ``None``. Refuses
    non-numeric values that are not strings: the server takes only strings for them."""
    import pandas as pd

    rows = frame[features].reset_index(drop=True).copy()
    for name in features:
        column = rows[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            rows[name] = column.astype("float64")
            continue
        rows[name] = column.astype(object).where(column.notna(), None)
        odd = sorted({type(v).__name__ for v in rows[name] if v is not None and type(v) is not str})
        if odd:
            raise ExportError(
                f"{what} column {name!r} holds {', '.join(odd)} values; the server takes a "
                "number or a string for each feature: make the column numeric or text (and "
                "fit the model on that)"
            )
    return rows


def check_predicts(model: FittedModel, task: str, rows: Any, what: str) -> None:
    """Refuse a model that fails on ``rows`` as the server would call it."""
    try:
        expected_predictions(task, model, rows)
    except Exception as exc:  # whatever the model's own code raises
        raise ExportError(
            f"the model cannot predict the {what} ({type(exc).__name__}: {exc}); the server "
            "would fail the same way and Vertex would answer 500. The server gives the model "
            "numbers as float64 with NaN for null and text as object with None for null: fix "
            "the model (or the rows) to take those"
        ) from None


def refused_edges(
    model: FittedModel, task: str, edges: Any, kinds: list[str]
) -> tuple[Any, list[str], dict[str, str]]:
    """The edge rows the model can answer, each tried alone, with their kinds; and the
    kinds it refuses, each with its error (``type: message`` on one line)."""
    keep: list[int] = []
    refused: dict[str, str] = {}
    for position, kind in enumerate(kinds):
        try:
            expected_predictions(task, model, edges.iloc[[position]])
        except Exception as exc:  # the model's own refusal (unseen category, missing value)
            refused[kind] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line
        else:
            keep.append(position)
    return edges.iloc[keep].reset_index(drop=True), [kinds[i] for i in keep], refused


def snake_case(name: str) -> str:
    """A class name in snake case: ``XGBClassifier`` -> ``xgb_classifier``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def json_parameters(estimator: Any) -> dict[str, Any]:
    """The estimator's own parameters (``get_params(deep=False)``) whose values are JSON
    scalars: None, booleans, finite numbers, strings. Objects and NaN are left out."""
    import numpy as np

    parameters = {}
    for name, value in estimator.get_params(deep=False).items():
        value = value.item() if isinstance(value, np.generic) else value
        finite = isinstance(value, int | float) and math.isfinite(value)
        if value is None or isinstance(value, bool | str) or finite:
            parameters[name] = value
    return parameters


class ExternalModel(SklearnModel):
    """A fitted scikit-learn-API model from elsewhere, bare or a ``Pipeline``: a
    ``SklearnModel`` whose manifest names its own final estimator and the boosting libraries
    it holds, and that compiles only where it answers every row the graph is verified on."""

    def __init__(self, model: Any, seed: int) -> None:
        final = model[-1] if hasattr(model, "steps") else model
        super().__init__(model, snake_case(type(final).__name__), json_parameters(final))
        self.seed = seed

    def save(self, model_dir: Path) -> str:
        try:
            return super().save(model_dir)
        except Exception as exc:  # pickling: a lambda, a local class, an open handle
            raise ExportError(
                f"cannot save the model with joblib ({type(exc).__name__}: {exc}); the server "
                "loads model.joblib, so every step must pickle (no lambdas or local classes)"
            ) from None

    def onnx_graph(self, schema: list[dict[str, Any]]) -> Any:
        from sklearn.pipeline import Pipeline

        rows = generated_rows(schema, GENERATED_ROWS, self.seed)
        try:  # the rows export_compiled verifies the graph on: scikit-learn must answer them
            self.predict(rows)
            if self.has_probabilities and self.classes:
                self.predict_proba(rows)
        except Exception as exc:
            raise NotCompilable(
                "pipeline",
                f"the model fails on rows drawn from the schema ({type(exc).__name__}: {exc}), "
                "so a graph could not be verified against it",
            ) from None
        pipeline = self.pipeline
        if not hasattr(pipeline, "steps"):  # the converter's options name the last step
            pipeline = Pipeline([(type(pipeline).__name__, pipeline)])
        return pipeline_graph(pipeline, schema)

    def manifest_fields(self) -> dict[str, Any]:
        import importlib

        fields = super().manifest_fields()
        # Every estimator the model holds, however nested (a Pipeline's steps, a
        # ColumnTransformer's transformers, a VotingClassifier's estimators): their deep params.
        held = [self.pipeline, *self.pipeline.get_params(deep=True).values()]
        for estimator in held:
            package = type(estimator).__module__.split(".")[0]
            if package in BOOSTING_LIBRARIES and hasattr(estimator, "get_params"):
                fields["libraries"][package] = importlib.import_module(package).__version__
        return fields
