"""XGBoost and LightGBM models, as a user trains them elsewhere and exports them; no tests here.

Each is a scikit-learn ``Pipeline`` (imputation and scaling of the numbers, one-hot encoding of
the category) whose last step is the library's scikit-learn-API classifier, exported with
``export_model``: its manifest records the library and its version (``libraries``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.training import export_model

LIBRARIES = ("xgboost", "lightgbm")
TARGET = "size"


def labelled_rows(rows: int = 300, seed: int = 7) -> pd.DataFrame:
    """Two numbers (one with gaps), a category and a label that depends on all three."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "length": rng.normal(40, 5, rows),
            "depth": rng.normal(17, 2, rows),
            "island": rng.choice(["Biscoe", "Dream", "Torgersen"], rows),
        }
    )
    frame.loc[::17, "depth"] = np.nan
    score = frame["length"] + 3 * (frame["island"] == "Dream") - frame["depth"].fillna(17) / 4
    frame[TARGET] = np.where(score > 36.5, "big", "small")
    return frame


def boosted_pipeline(library: str, frame: pd.DataFrame) -> Any:
    """The fitted pipeline ending in ``library``'s classifier. XGBoost's takes only the
    labels 0..n-1, so its model predicts 0 and 1; LightGBM's predicts the strings."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    preprocess = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(), StandardScaler()), ["length", "depth"]),
            ("category", OneHotEncoder(handle_unknown="ignore"), ["island"]),
        ]
    )
    labels = frame[TARGET]
    if library == "xgboost":
        from xgboost import XGBClassifier

        classifier: Any = XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1)
        labels = (labels == "big").astype(int)
    else:
        from lightgbm import LGBMClassifier

        classifier = LGBMClassifier(n_estimators=20, num_leaves=7, n_jobs=1, verbose=-1)
    pipeline = Pipeline([("preprocess", preprocess), ("classifier", classifier)])
    return pipeline.fit(frame.drop(columns=TARGET), labels)


def export_boosted(library: str, model_dir: Path) -> Path:
    """Fit ``library``'s pipeline and export it to ``model_dir`` (its sample: the labelled
    rows, labels as the model predicts them)."""
    frame = labelled_rows()
    pipeline = boosted_pipeline(library, frame)
    if library == "xgboost":
        frame[TARGET] = (frame[TARGET] == "big").astype(int)
    export_model(pipeline, frame, model_dir, target=TARGET, sample_size=40)
    return model_dir
