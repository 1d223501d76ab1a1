"""export_model: a model fitted elsewhere becomes the artifact train writes, the server loads
and self-checks it and answers the exported instances as exported; and every refusal."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm
import pandas as pd
import pytest
import xgboost
from lightgbm import LGBMClassifier, LGBMRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.tree import DecisionTreeClassifier
from xgboost import XGBClassifier

from components.training import METRICS, ExportError, export_model
from serving_image.server import artifact
from tests.training.external_models import (
    NUMERIC,
    fitted,
    logistic_regression,
    penguins,
    server_answers,
)
from tests.training.penguins import FEATURES


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return penguins()


@pytest.fixture(scope="module")
def model(frame: pd.DataFrame) -> Pipeline:
    return logistic_regression(frame)


def test_a_scikit_learn_pipeline_exports_what_train_writes(
    frame: pd.DataFrame, model: Pipeline, penguins_model_dir: Path, tmp_path: Path
) -> None:
    result = export_model(model, frame, tmp_path, target="species")

    trained = artifact.read_manifest(penguins_model_dir)
    manifest = artifact.read_manifest(tmp_path)
    assert manifest == result.manifest
    assert list(manifest) == list(trained)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in penguins_model_dir.iterdir()
    )
    assert set(manifest["training"]) < set(trained["training"])
    assert manifest["training"] == {"data": "external", "rows": 344, "eval_rows": 344, "seed": 42}
    assert manifest["task"] == "classification"  # inferred: a classifier
    assert manifest["target_classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert [f["name"] for f in manifest["features"]] == FEATURES
    assert manifest["estimator"]["name"] == "logistic_regression"
    assert manifest["estimator"]["class"] == "sklearn.linear_model._logistic.LogisticRegression"
    assert manifest["estimator"]["hyperparameters"]["max_iter"] == 1000
    assert set(manifest["metrics"]) == set(METRICS["classification"])
    assert manifest["metrics"] == result.metrics and result.confusion_matrix
    assert set(manifest["libraries"]) == {"scikit-learn", "numpy", "pandas", "joblib"}
    assert manifest["compiled"]["status"] == "verified", manifest["compiled"]
    assert manifest["model_sha256"] == artifact.sha256_file(tmp_path / artifact.MODEL_FILE)
    assert "sample_refused" not in manifest

    answers, summary = server_answers(tmp_path)
    assert answers == artifact.read_jsonl(tmp_path / artifact.EXPECTED_FILE)
    edges = len(manifest["sample_kinds"]) - manifest["sample_kinds"].count("evaluation")
    assert summary["self_checked_instances"] == len(answers) + edges
    _, compiled = server_answers(tmp_path, "auto")
    assert compiled["predictor"] == "compiled"


@pytest.mark.parametrize(
    ("estimator", "library"),
    [
        (XGBClassifier(n_estimators=5, max_depth=2), xgboost),
        (LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1), lightgbm),
    ],
    ids=["xgboost", "lightgbm"],
)
def test_a_boosting_pipeline_exports_with_its_library_and_serves_uncompiled(
    estimator: Any, library: Any, frame: pd.DataFrame, tmp_path: Path
) -> None:
    labels = frame["species"].map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2})  # XGBoost: ints
    model = fitted(estimator, frame, labels, scale=False)
    export_model(model, frame.assign(species=labels), tmp_path, target="species")

    manifest = artifact.read_manifest(tmp_path)
    name = type(estimator).__name__
    assert manifest["libraries"][library.__name__] == library.__version__
    assert manifest["estimator"]["class"] == f"{library.__name__}.sklearn.{name}"
    assert manifest["estimator"]["name"] == {"XGBClassifier": "xgb_classifier"}.get(
        name, "lgbm_classifier"
    )
    assert manifest["estimator"]["hyperparameters"]["n_estimators"] == 5
    assert manifest["target_classes"] == [0, 1, 2]
    compiled = manifest["compiled"]
    assert compiled["status"] == "not_compiled" and compiled["step"] == "model"
    assert f"no ONNX converter for {library.__name__}.sklearn.{name}" in compiled["reason"]
    assert not (tmp_path / artifact.ONNX_FILE).exists()

    answers, summary = server_answers(tmp_path, "auto")
    assert summary["predictor"] == "scikit-learn" and not summary["fallback"]
    assert answers == artifact.read_jsonl(tmp_path / artifact.EXPECTED_FILE)


def test_boosting_libraries_nested_in_an_ensemble_are_recorded(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """A VotingClassifier of XGBoost and LightGBM: the image must install both."""
    from sklearn.ensemble import VotingClassifier

    labels = frame["species"].map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2})
    ensemble = VotingClassifier(
        [
            ("xgb", XGBClassifier(n_estimators=5, max_depth=2)),
            ("lgbm", LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1)),
        ],
        voting="soft",
    )
    model = fitted(ensemble, frame, labels, scale=False)
    manifest = export_model(
        model, frame.assign(species=labels), tmp_path, target="species"
    ).manifest

    assert manifest["libraries"]["xgboost"] == xgboost.__version__
    assert manifest["libraries"]["lightgbm"] == lightgbm.__version__


def test_a_bare_regressor_exports_without_labels(frame: pd.DataFrame, tmp_path: Path) -> None:
    """No Pipeline, numbers only (NaN left to LightGBM), no target: regression, no metrics."""
    labelled = frame[frame["body_mass_g"].notna()]
    features = [name for name in NUMERIC if name != "body_mass_g"]
    model = LGBMRegressor(n_estimators=5, num_leaves=4, verbose=-1)
    model.fit(labelled[features], labelled["body_mass_g"])
    result = export_model(model, frame[features], tmp_path)

    manifest = result.manifest
    assert manifest["task"] == "regression" and manifest["target"] == ""
    assert result.metrics == manifest["metrics"] == {}
    assert manifest["training"]["eval_rows"] == 0
    assert manifest["libraries"]["lightgbm"] == lightgbm.__version__
    assert manifest["compiled"]["step"] == "LGBMRegressor"
    answers, _ = server_answers(tmp_path)
    assert answers == artifact.read_jsonl(tmp_path / artifact.EXPECTED_FILE)


def test_eval_data_gives_the_metrics(frame: pd.DataFrame, model: Pipeline, tmp_path: Path) -> None:
    held_out = frame.sample(40, random_state=0)
    result = export_model(
        model, frame[FEATURES].head(100), tmp_path, target="species", eval_data=held_out
    )
    assert result.manifest["training"]["rows"] == 100
    assert result.manifest["training"]["eval_rows"] == 40
    accuracy = (model.predict(held_out[FEATURES]) == held_out["species"]).mean()
    assert result.metrics["accuracy"] == pytest.approx(accuracy)


def test_edge_instances_the_model_refuses_are_left_out_and_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    complete = penguins(complete=True)
    model = logistic_regression(complete, handle_unknown="error")
    with caplog.at_level(logging.WARNING):
        export_model(model, complete, tmp_path, target="species")

    manifest = artifact.read_manifest(tmp_path)
    refused = {f"{kind}:{name}" for kind in ("missing", "unseen") for name in ("island", "sex")}
    assert set(manifest["sample_refused"]) == refused
    assert all(
        error.startswith("ValueError: Found unknown categories")
        for error in manifest["sample_refused"].values()
    )
    assert not refused & set(manifest["sample_kinds"])
    assert {"min:bill_length_mm", "missing:bill_length_mm"} <= set(manifest["sample_kinds"])
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("the sample leaves out edge instance(s) the model cannot predict")
    assert all(kind in warning for kind in refused) and "ValueError" in warning
    assert manifest["compiled"]["status"] == "not_compiled"
    answers, _ = server_answers(tmp_path)
    assert answers == artifact.read_jsonl(tmp_path / artifact.EXPECTED_FILE)


class KerasLike:
    """A model with fit and predict but not scikit-learn's API (no get_params)."""

    def fit(self, x: Any, y: Any) -> None: ...

    def predict(self, x: Any) -> Any: ...


def unpicklable(frame: pd.DataFrame) -> Pipeline:
    """A pipeline with a lambda in it: it fits and predicts, but joblib cannot save it."""
    double = FunctionTransformer(lambda x: x * 2)
    pipeline = Pipeline([("double", double), ("model", DecisionTreeClassifier(max_depth=2))])
    return pipeline.fit(frame[NUMERIC].fillna(0), frame["species"])


def new_island(frame: pd.DataFrame) -> pd.DataFrame:
    """The features with an island the model never saw in the first row."""
    return frame[FEATURES].assign(island=frame["island"].where(frame.index > 0, "Atlantis"))


Case = Callable[[pd.DataFrame, Pipeline], tuple[Any, Any, dict[str, Any]]]
"""``(frame, fitted model) -> (model, sample, keyword arguments)`` for ``export_model``."""
REFUSALS: dict[str, tuple[Case, str]] = {
    "a function": (
        lambda frame, model: (len, frame[FEATURES], {}),
        r"a builtins\.builtin_function_or_method is not supported: export_model takes a fitted "
        r"scikit-learn estimator or Pipeline",
    ),
    "not scikit-learn's API": (
        lambda frame, model: (KerasLike(), frame[FEATURES], {}),
        r"a tests\.training\.test_export_model\.KerasLike is not supported.*for a Keras model "
        r"use train\(framework='tensorflow'\)",
    ),
    "no predict": (
        lambda frame, model: (StandardScaler().fit(frame[NUMERIC]), frame[FEATURES], {}),
        r"the StandardScaler has no predict\(\) method",
    ),
    "not fitted": (
        lambda frame, model: (Pipeline([("model", LGBMClassifier())]), frame[FEATURES], {}),
        r"the Pipeline is not fitted; fit it first",
    ),
    "a contradicting task": (
        lambda frame, model: (model, frame[FEATURES], {"task": "regression"}),
        r"task 'regression' contradicts the model: the Pipeline is a classifier; pass "
        r"task='classification'",
    ),
    "an unknown task": (
        lambda frame, model: (model, frame[FEATURES], {"task": "clustering"}),
        r"unknown task 'clustering'",
    ),
    "a sample that is not a frame": (
        lambda frame, model: (model, frame[FEATURES].to_dict("records"), {}),
        r"sample must be a pandas DataFrame of raw feature rows, got builtins\.list",
    ),
    "an empty sample": (
        lambda frame, model: (model, frame[FEATURES].iloc[:0], {}),
        r"the sample has no rows",
    ),
    "a missing column": (
        lambda frame, model: (model, frame[FEATURES].drop(columns=["island"]), {}),
        r"the sample lacks column\(s\) \['island'\] that the model takes",
    ),
    "an extra column": (
        lambda frame, model: (model, frame[FEATURES].assign(colour="blue"), {}),
        r"sample columns that the model does not take: \['colour'\].*pass target=<column>",
    ),
    "a bool column": (
        lambda frame, model: (model, frame[FEATURES].assign(sex=frame["sex"].notna()), {}),
        r"sample column 'sex' holds bool values; the server takes a number or a string",
    ),
    "rows the model cannot predict": (
        lambda frame, model: (
            logistic_regression(penguins(complete=True), handle_unknown="error"),
            new_island(frame),
            {},
        ),
        r"the model cannot predict the sample's rows \(ValueError: Found unknown categories "
        r"\['Atlantis'\].*Vertex would answer 500",
    ),
    "eval_data without a target": (
        lambda frame, model: (model, frame[FEATURES], {"eval_data": frame}),
        r"eval_data needs target=<its label column>",
    ),
    "eval_data without a feature": (
        lambda frame, model: (
            model,
            frame[FEATURES],
            {"eval_data": frame.drop(columns=["sex"]), "target": "species"},
        ),
        r"eval_data lacks column\(s\) \['sex'\]",
    ),
    "no sample instances": (
        lambda frame, model: (model, frame[FEATURES], {"sample_size": 0}),
        r"sample_size must be at least 1",
    ),
    "a model joblib cannot save": (
        lambda frame, model: (unpicklable(frame), frame[NUMERIC].fillna(0), {}),
        r"cannot save the model with joblib \(PicklingError: .*no lambdas",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refusal_names_the_fault(
    case: str, frame: pd.DataFrame, model: Pipeline, tmp_path: Path
) -> None:
    build, message = REFUSALS[case]
    bad_model, sample, arguments = build(frame, model)
    with pytest.raises(ExportError, match=message):
        export_model(bad_model, sample, tmp_path, **arguments)
    assert not (tmp_path / artifact.MANIFEST_FILE).exists()
