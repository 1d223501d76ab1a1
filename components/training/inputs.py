"""Training inputs: reading the table, checking it, and describing its features.

Every bad input stops here, before any training, with a ``TrainingInputError`` that names the
column, value or path at fault.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from serving_image.server.artifact import TASKS

BUNDLED_DATASETS = {"penguins": "species"}
"""Data sets that ship with the project, by name, with their default target column."""
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".pq")


class TrainingInputError(ValueError):
    """A training input is wrong; the message names it and says what to do."""


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


def check_inputs(frame: Any, target: str, task: str, features: list[str], source: str) -> None:
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


def feature_schema(frame: Any, features: list[str]) -> list[dict[str, Any]]:
    """Describe each feature column: its kind, dtype, the categories or the range seen, and
    missing counts."""
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
        if numeric and column.notna().any():
            entry["min"], entry["max"] = json_value(column.min()), json_value(column.max())
        if not numeric:
            entry["categories"] = sorted(str(value) for value in column.dropna().unique())
        schema.append(entry)
    return schema


def json_value(value: Any) -> Any:
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
