"""ONNX converters for our preprocessing steps, exact in float64 and true to how we feed nulls.

skl2onnx's own converters do not fit our pipeline: its ``SimpleImputer`` uses onnxruntime's
``Imputer`` kernel (float32 and int64 only) and refuses string columns whose missing value is
NaN, and its ``OneHotEncoder`` writes a ``None`` category as the string ``"None"`` (so a
client's ``"None"`` would take that column). These replace them, for one
``convert_sklearn`` call (``onnx_graph``):

* ``SimpleImputer`` on numbers: ``Where(IsNaN(x), statistics, x)`` in float64. On strings:
  our frames hold a null category as ``None``, which the fitted imputer
  (``missing_values=NaN``) leaves alone, so the graph passes the column through; an imputer
  fitted for ``None`` or a string replaces that value (``MISSING_STRING`` for ``None``).
* ``OneHotEncoder`` (``handle_unknown="ignore"``, no ``drop``, no infrequent categories): one
  ``ai.onnx.ml.OneHotEncoder`` per column over the fitted categories, ``None`` written as
  ``MISSING_STRING``, so an unseen value is all zeros; cast to float64.

A step they cannot express raises ``UnsupportedStep`` naming the estimator.
"""

from __future__ import annotations

import math
from typing import Any

from serving_image.server.compiled import MISSING_STRING, UNSEEN_STRING


class UnsupportedStep(ValueError):
    """``estimator`` (a fitted step of the pipeline) has no exact ONNX form: ``message`` why."""

    def __init__(self, estimator: Any, message: str) -> None:
        super().__init__(message)
        self.estimator = estimator


def concat_inputs(scope: Any, operator: Any, container: Any) -> str:
    """The operator's inputs side by side (``Concat``, which keeps their type); its name."""
    names = [variable.full_name for variable in operator.inputs]
    if len(names) == 1:
        return names[0]
    joined = scope.get_unique_variable_name("joined")
    container.add_node(
        "Concat", names, [joined], axis=1, name=scope.get_unique_operator_name("Concat")
    )
    return joined


def same_type_shape(operator: Any) -> None:
    """Shape calculator: the inputs' type, as many columns as they have together."""
    first = operator.inputs[0]
    width = sum(variable.get_second_dimension() for variable in operator.inputs)
    operator.outputs[0].type = type(first.type)([first.get_first_dimension(), width])


def convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """``SimpleImputer``: see the module docstring."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import StringTensorType

    imputer = operator.raw_operator
    x = concat_inputs(scope, operator, container)
    out = operator.outputs[0].full_name
    statistics = list(imputer.statistics_)
    missing = imputer.missing_values
    fill = scope.get_unique_variable_name("fill")
    mask = scope.get_unique_variable_name("missing")
    if isinstance(operator.inputs[0].type, StringTensorType):
        if not (missing is None or isinstance(missing, str)):  # NaN: a string input has none
            container.add_node("Identity", [x], [out], name=scope.get_unique_operator_name("Id"))
            return
        marker = scope.get_unique_variable_name("marker")
        container.add_initializer(
            marker,
            TensorProto.STRING,
            [],
            [(MISSING_STRING if missing is None else missing).encode()],
        )
        container.add_initializer(
            fill, TensorProto.STRING, [1, len(statistics)], [str(s).encode() for s in statistics]
        )
        container.add_node("Equal", [x, marker], [mask], name=scope.get_unique_operator_name("Eq"))
    else:
        if not (isinstance(missing, float) and math.isnan(missing)):
            raise UnsupportedStep(imputer, f"SimpleImputer(missing_values={missing!r}) on numbers")
        if any(math.isnan(value) for value in statistics):
            raise UnsupportedStep(
                imputer, "SimpleImputer learnt no value for a column missing in every training row"
            )
        container.add_initializer(fill, TensorProto.DOUBLE, [1, len(statistics)], statistics)
        container.add_node("IsNaN", [x], [mask], name=scope.get_unique_operator_name("IsNaN"))
    container.add_node(
        "Where", [mask, fill, x], [out], name=scope.get_unique_operator_name("Where")
    )


def one_hot_shape(operator: Any) -> None:
    """Shape calculator: float64, one column per fitted category."""
    from skl2onnx.common.data_types import DoubleTensorType

    width = sum(len(categories) for categories in operator.raw_operator.categories_)
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = DoubleTensorType([rows, width])


def convert_one_hot(scope: Any, operator: Any, container: Any) -> None:
    """``OneHotEncoder``: see the module docstring."""
    from onnx import TensorProto

    encoder = operator.raw_operator
    if encoder.handle_unknown != "ignore" or encoder.drop is not None:
        raise UnsupportedStep(
            encoder,
            f"OneHotEncoder(handle_unknown={encoder.handle_unknown!r}, drop={encoder.drop!r}): "
            "only handle_unknown='ignore' without drop is compiled",
        )
    if getattr(encoder, "_infrequent_enabled", False):
        raise UnsupportedStep(encoder, "OneHotEncoder with infrequent categories")
    x = concat_inputs(scope, operator, container)
    columns = []
    for index, categories in enumerate(encoder.categories_):
        strings = [_category_string(encoder, category) for category in categories]
        position = scope.get_unique_variable_name("position")
        container.add_initializer(position, TensorProto.INT64, [1], [index])
        column = scope.get_unique_variable_name("column")
        container.add_node(
            "Gather", [x, position], [column], axis=1, name=scope.get_unique_operator_name("Gather")
        )
        encoded = scope.get_unique_variable_name("encoded")  # (n, 1, categories), float32
        container.add_node(
            "OneHotEncoder",
            [column],
            [encoded],
            op_domain="ai.onnx.ml",
            cats_strings=[s.encode() for s in strings],
            zeros=1,
            name=scope.get_unique_operator_name("OneHotEncoder"),
        )
        shape = scope.get_unique_variable_name("shape")
        container.add_initializer(shape, TensorProto.INT64, [2], [-1, len(strings)])
        flat = scope.get_unique_variable_name("flat")
        container.add_node(
            "Reshape", [encoded, shape], [flat], name=scope.get_unique_operator_name("Reshape")
        )
        columns.append(scope.get_unique_variable_name("one_hot"))  # 0 and 1 are exact in float32
        container.add_node(
            "Cast",
            [flat],
            [columns[-1]],
            to=TensorProto.DOUBLE,
            name=scope.get_unique_operator_name("Cast"),
        )
    container.add_node(
        "Concat",
        columns,
        [operator.outputs[0].full_name],
        axis=1,
        name=scope.get_unique_operator_name("Concat"),
    )


def _category_string(encoder: Any, category: Any) -> str:
    """A fitted category as the graph's input spells it (``None``: ``MISSING_STRING``)."""
    if category is None:
        return MISSING_STRING
    if not isinstance(category, str):
        raise UnsupportedStep(
            encoder,
            f"OneHotEncoder category {category!r} is a {type(category).__name__}, not a string",
        )
    if category in (MISSING_STRING, UNSEEN_STRING):
        raise UnsupportedStep(
            encoder, f"OneHotEncoder category {category!r} is the graph's marker for null or unseen"
        )
    return category
