"""The scikit-learn fit step: one ``Pipeline`` (ColumnTransformer + estimator) in ``model.joblib``.

Numeric features: median impute, then standard scale; categorical: one-hot ignoring categories
unseen in training, a missing value (``None``) being a category of its own (the most-frequent
imputer in front replaces only NaN, which neither the trainer nor the server passes); then the
named estimator. The fitted pipeline
also compiles to an ONNX graph where its steps convert (``onnx_graph``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.training.fitting import FittedModel, Fitter
from components.training.inputs import TrainingInputError
from components.training.onnx_graph import pipeline_graph
from serving_image.server import artifact

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


def estimator_for(task: str, name: str, hyperparameters: dict[str, Any]) -> Any:
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


def build_pipeline(schema: list[dict[str, Any]], estimator: Any) -> Any:
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
    """A fitted scikit-learn ``Pipeline`` (or, exported from elsewhere, a bare estimator),
    saved with joblib."""

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

        joblib.dump(self.pipeline, model_dir / artifact.MODEL_FILE)
        return artifact.MODEL_FILE

    def onnx_graph(self, schema: list[dict[str, Any]]) -> Any:
        return pipeline_graph(self.pipeline, schema)

    def manifest_fields(self) -> dict[str, Any]:
        import joblib
        import numpy as np
        import pandas as pd
        import sklearn

        steps = hasattr(self.pipeline, "steps")  # a Pipeline, or a bare estimator
        estimator = self.pipeline[-1] if steps else self.pipeline
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
    model = estimator_for(task, estimator, hyperparameters)
    if "random_state" in model.get_params() and "random_state" not in hyperparameters:
        model.set_params(random_state=seed)
    name = estimator if estimator != "auto" else DEFAULT_ESTIMATORS[task]

    def fit(schema: list[dict[str, Any]], x_train: Any, y_train: Any) -> FittedModel:
        pipeline = build_pipeline(schema, model)
        pipeline.fit(x_train, y_train)
        return SklearnModel(pipeline, name, hyperparameters)

    return fit
