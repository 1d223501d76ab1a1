"""What the export-from-elsewhere tests share: penguins models fitted as a team outside would
fit them, and the server's answers for an exported sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from palmerpenguins import load_penguins
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from serving_image.server import artifact
from serving_image.server.predictor import load_predictor
from serving_image.server.validation import parse_predict_request
from tests.training.penguins import FEATURES

CATEGORICAL = ["island", "sex"]
NUMERIC = [name for name in FEATURES if name not in CATEGORICAL]


def penguins(complete: bool = False) -> Any:
    """The penguins table (``species`` and the features); only complete rows if asked."""
    frame = load_penguins()
    return frame.dropna().reset_index(drop=True) if complete else frame


def preprocess(handle_unknown: str = "ignore", scale: bool = True) -> ColumnTransformer:
    """Impute (and scale) the numbers, impute and one-hot the categories."""
    numeric: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if scale:
        numeric.append(("scale", StandardScaler()))
    one_hot = OneHotEncoder(handle_unknown=handle_unknown, sparse_output=False)
    categorical = Pipeline(
        [("impute", SimpleImputer(strategy="most_frequent")), ("one_hot", one_hot)]
    )
    return ColumnTransformer(
        [("numeric", Pipeline(numeric), NUMERIC), ("categorical", categorical, CATEGORICAL)]
    )


def fitted(estimator: Any, frame: Any, labels: Any = None, **preprocessing: Any) -> Pipeline:
    """``preprocess`` then ``estimator``, fitted on ``frame``'s features and species (or
    ``labels``)."""
    pipeline = Pipeline([("preprocess", preprocess(**preprocessing)), ("model", estimator)])
    return pipeline.fit(frame[FEATURES], frame["species"] if labels is None else labels)


def logistic_regression(frame: Any, **preprocessing: Any) -> Pipeline:
    """The plain scikit-learn pipeline the tests export."""
    return fitted(LogisticRegression(max_iter=1000), frame, **preprocessing)


def server_answers(model_dir: Path, choice: str = "scikit-learn") -> tuple[list[Any], dict]:
    """Load the artifact as the server does (sha256, self-check) on the predictor ``choice``
    and answer its exported instances in one request; the answers and the load summary."""
    predictor, summary = load_predictor(model_dir, choice)
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    request = parse_predict_request(orjson.dumps({"instances": instances}), predictor.schema)
    return predictor(request), summary
