"""The sample a model is exported with: the instances the server self-checks and the contract
check sends, each with the prediction the fitted model gives in-process.

Evaluation rows (rows with missing values first, up to half of them) and, built from the
feature schema, the edge instances where training/serving skew hides: every feature missing
in turn, an unseen value for every categorical feature, and every number at the ends of its
training range. Each instance has a kind (``evaluation``, ``missing:<feature>``,
``unseen:<feature>``, ``min:<feature>``, ``max:<feature>``), recorded in the manifest's
``sample_kinds``, that reports name. The instances are objects, so the whole file stays one
valid request body; the edge instances' list form (values in the manifest's feature order)
is derived where the sample is sent (``artifact.read_sample``).
"""

from __future__ import annotations

from typing import Any

from serving_image.server.artifact import EVALUATION_KIND as EVALUATION


def evaluation_rows(x_eval: Any, sample_size: int) -> Any:
    """Up to ``sample_size`` evaluation rows, those with a missing value first (up to half):
    they exercise the imputers."""
    import pandas as pd

    has_missing = x_eval.isna().any(axis=1)
    with_missing = x_eval[has_missing].head(sample_size // 2)
    return pd.concat([with_missing, x_eval[~has_missing]]).head(sample_size)


def edge_rows(schema: list[dict[str, Any]], rows: Any) -> tuple[Any, list[str]]:
    """One row per edge case, each a copy of the first complete row of ``rows`` with one
    feature changed; the rows (a frame with ``rows``' columns and dtypes) and their kinds."""
    import pandas as pd

    complete = rows.dropna()
    base = (complete if len(complete) else rows).iloc[0]
    edges: list[dict[str, Any]] = []
    kinds: list[str] = []

    def vary(kind: str, name: str, value: Any) -> None:
        edges.append({**base.to_dict(), name: value})
        kinds.append(f"{kind}:{name}")

    for feature in schema:
        name = feature["name"]
        if feature.get("nullable", True):
            vary("missing", name, None)
        if feature["kind"] == "categorical":
            vary("unseen", name, f"unseen {name}")
        elif "min" in feature:
            vary("min", name, feature["min"])
            vary("max", name, feature["max"])
    frame = pd.DataFrame(edges, columns=rows.columns)
    for feature in schema:  # numbers as floats (NaN where missing), categories with None
        name = feature["name"]
        if feature["kind"] == "numeric":
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
        else:
            frame[name] = frame[name].astype(object).where(frame[name].notna(), None)
    return frame, kinds


def export_sample(
    schema: list[dict[str, Any]], x_eval: Any, sample_size: int
) -> tuple[list[Any], list[str]]:
    """The evaluation rows and the edge rows (two frames, each with its own dtypes), and
    each row's kind in that order."""
    evaluation = evaluation_rows(x_eval, sample_size)
    edges, kinds = edge_rows(schema, evaluation)
    return [evaluation, edges], [EVALUATION] * len(evaluation) + kinds
