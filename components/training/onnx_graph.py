"""The fitted scikit-learn pipeline as one ONNX graph (skl2onnx, with our own converters).

The graph takes one ``(n, 1)`` input per feature of the schema, named like it (float64 for a
numeric feature, string for a categorical one; ``serving_image/server/compiled.py`` says how
nulls arrive) and computes in float64 throughout: the scaler as a true division, as
scikit-learn's, and our imputers, one-hot encoder and trees by ``onnx_preprocessing`` and
``onnx_trees``; skl2onnx converts the rest (``ColumnTransformer``, ``Pipeline``, linear
models). A step without a converter, or one a converter refuses, raises ``NotCompilable``
naming the step by its path in the pipeline (``preprocess.categorical.one_hot``).
"""

from __future__ import annotations

from typing import Any

from components.training.fitting import NotCompilable
from components.training.onnx_preprocessing import (
    UnsupportedStep,
    convert_imputer,
    convert_one_hot,
    one_hot_shape,
    same_type_shape,
)
from components.training.onnx_trees import convert_forest, convert_histogram_boosting, tree_shape

CONVERTER_OPSETS = {"": 21, "ai.onnx.ml": 3}
"""Opsets skl2onnx converts to: 21 for string ``Equal``; ai.onnx.ml 3 is the highest it knows."""
ML_OPSET = 5
"""The graph's ai.onnx.ml opset, raised after conversion: float64 ``TreeEnsemble`` is in 5, and
the ai.onnx.ml operators skl2onnx writes for our steps are the same in 3 and 5
(``onnx.checker`` confirms it for every graph)."""


def pipeline_steps(estimator: Any, path: str = "") -> list[tuple[str, Any]]:
    """The fitted leaf steps of a ``Pipeline``/``ColumnTransformer``, each with its path."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        children = list(estimator.steps)
    elif isinstance(estimator, ColumnTransformer):
        children = [(name, step) for name, step, _ in estimator.transformers_]
    else:
        return [(path or type(estimator).__name__, estimator)]
    return [
        leaf
        for name, step in children
        if not isinstance(step, str)  # "drop", "passthrough"
        for leaf in pipeline_steps(step, f"{path}.{name}" if path else name)
    ]


def pipeline_graph(pipeline: Any, schema: list[dict[str, Any]]) -> Any:
    """The fitted ``pipeline`` as an ``onnx.ModelProto``; ``NotCompilable`` when a step
    does not convert."""
    import skl2onnx
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    ours = {
        SimpleImputer: (convert_imputer, same_type_shape),
        OneHotEncoder: (convert_one_hot, one_hot_shape),
        DecisionTreeClassifier: (convert_forest, tree_shape),
        DecisionTreeRegressor: (convert_forest, tree_shape),
        RandomForestClassifier: (convert_forest, tree_shape),
        RandomForestRegressor: (convert_forest, tree_shape),
        HistGradientBoostingClassifier: (convert_histogram_boosting, tree_shape),
        HistGradientBoostingRegressor: (convert_histogram_boosting, tree_shape),
    }
    steps = pipeline_steps(pipeline)
    for path, step in steps:
        if type(step) not in ours and type(step) not in sklearn_operator_name_map:
            raise NotCompilable(
                path,
                f"no ONNX converter for {type(step).__module__}.{type(step).__name__} "
                f"(skl2onnx {skl2onnx.__version__} has none)",
            )
    inputs = [
        (f["name"], (DoubleTensorType if f["kind"] == "numeric" else StringTensorType)([None, 1]))
        for f in schema
    ]
    options: dict[Any, Any] = {StandardScaler: {"div": "div"}}  # x / scale, not x * (1 / scale)
    if hasattr(pipeline, "predict_proba"):  # probabilities as a matrix, not a list of maps
        options[id(pipeline[-1])] = {"zipmap": False}
    try:
        graph = skl2onnx.convert_sklearn(
            pipeline,
            initial_types=inputs,
            target_opset=CONVERTER_OPSETS,
            options=options,
            custom_conversion_functions={cls: pair[0] for cls, pair in ours.items()},
            custom_shape_calculators={cls: pair[1] for cls, pair in ours.items()},
        )
    except UnsupportedStep as exc:
        step = next(path for path, fitted in steps if fitted is exc.estimator)
        raise NotCompilable(step, str(exc)) from None
    except Exception as exc:  # a converter's refusal, in its own words
        named = [path for path, fitted in steps if type(fitted).__name__ in str(exc)]
        raise NotCompilable(
            named[0] if named else "pipeline", f"{type(exc).__name__}: {exc}"
        ) from None
    return with_ml_opset(with_feature_names(graph, [f["name"] for f in schema]))


def with_feature_names(graph: Any, names: list[str]) -> Any:
    """``graph`` whose inputs take the features' own names again: skl2onnx makes them
    identifiers (``bill length (mm)`` -> ``bill_length__mm_``), and the server feeds the
    graph by feature name."""
    inputs = graph.graph.input
    if len(inputs) != len(names):
        raise NotCompilable(
            "pipeline", f"the graph has {len(inputs)} inputs for {len(names)} features"
        )
    renamed = {value.name: name for value, name in zip(inputs, names, strict=True)}
    taken = {tensor for node in graph.graph.node for tensor in node.output}
    taken |= {tensor.name for tensor in graph.graph.initializer}
    taken |= {value.name for value in graph.graph.output}
    clashes = sorted(new for old, new in renamed.items() if new != old and new in taken)
    if clashes:
        raise NotCompilable("pipeline", f"feature name(s) {clashes} also name tensors of the graph")
    for value in inputs:
        value.name = renamed[value.name]
    for node in graph.graph.node:
        node.input[:] = [renamed.get(tensor, tensor) for tensor in node.input]
    return graph


def with_ml_opset(graph: Any) -> Any:
    """``graph`` with its ai.onnx.ml opset raised to ``ML_OPSET``, checked by ``onnx.checker``
    (``NotCompilable`` naming what the raise broke)."""
    import onnx

    for entry in graph.opset_import:
        if entry.domain == "ai.onnx.ml":
            entry.version = ML_OPSET
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as exc:  # ValidationError, or shape inference's InferenceError
        raise NotCompilable("pipeline", f"the graph is not valid ONNX: {exc}") from None
    return graph
