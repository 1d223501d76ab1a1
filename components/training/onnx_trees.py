"""ONNX converters for our tree estimators, computing in float64 as scikit-learn does.

skl2onnx writes trees as ``TreeEnsembleClassifier``/``Regressor``, whose thresholds and
outputs are float32: random-forest probabilities then differ from scikit-learn's by up to
~4e-7 and a double input meets thresholds rounded to float, which sends rows down other
branches. These write one ``ai.onnx.ml.TreeEnsemble`` (opset 5, float64 thresholds and leaf
weights), one tree per (fitted tree, output column), summed, then what scikit-learn does after
the trees:

* ``DecisionTree*``, ``RandomForest*``: the input rounded to float32 first (scikit-learn's
  trees compare ``float32(x) <= threshold``); a leaf holds its class fractions (classifiers)
  or value; a forest divides the sum by its number of trees.
* ``HistGradientBoosting*`` (float64 input, as scikit-learn's): the leaf values summed plus
  the baseline, then softmax (several classes), the logistic function (two) or nothing
  (regression with an identity link; other losses are not compiled).

Classifiers answer ``label`` (``classes_`` at the most probable column, as ``predict``) and
``probabilities``; regressors ``variable``. No NaN reaches the trees: the imputers come
first. Anything else raises ``UnsupportedStep``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.training.onnx_preprocessing import UnsupportedStep

SUM = 1
"""``TreeEnsemble``'s ``aggregate_function`` for a sum."""
BRANCH_LEQ = 0
"""``TreeEnsemble``'s node mode for ``x <= threshold`` -> true (scikit-learn's left) branch."""


@dataclass
class Tree:
    """One fitted tree as plain arrays, nodes numbered from the root (0)."""

    left: Any
    right: Any
    feature: Any
    threshold: Any
    is_leaf: Any
    leaf_value: Any
    """Per node: what a leaf adds to its output column (ignored for split nodes)."""


@dataclass
class Ensemble:
    """The attributes of one ``TreeEnsemble`` node, filled tree by tree."""

    roots: list[int] = field(default_factory=list)
    features: list[int] = field(default_factory=list)
    splits: list[float] = field(default_factory=list)
    true_ids: list[int] = field(default_factory=list)
    true_leafs: list[int] = field(default_factory=list)
    false_ids: list[int] = field(default_factory=list)
    false_leafs: list[int] = field(default_factory=list)
    leaf_targets: list[int] = field(default_factory=list)
    leaf_weights: list[float] = field(default_factory=list)

    def add(self, tree: Tree, target: int) -> None:
        """Add ``tree``, its leaves adding to output column ``target``."""
        leaves = [int(n) for n in range(len(tree.is_leaf)) if tree.is_leaf[n]]
        splits = [int(n) for n in range(len(tree.is_leaf)) if not tree.is_leaf[n]]
        leaf_at = {node: len(self.leaf_weights) + i for i, node in enumerate(leaves)}
        split_at = {node: len(self.features) + i for i, node in enumerate(splits)}
        self.leaf_targets += [target] * len(leaves)
        self.leaf_weights += [float(tree.leaf_value[node]) for node in leaves]
        if not splits:  # a lone leaf: a split whose both branches reach it
            self.roots.append(len(self.features))
            self._split(0, 0.0, (leaf_at[0], 1), (leaf_at[0], 1))
            return
        self.roots.append(split_at[0])
        for node in splits:
            left, right = (int(tree.left[node]), int(tree.right[node]))
            self._split(
                int(tree.feature[node]),
                float(tree.threshold[node]),
                (leaf_at[left], 1) if tree.is_leaf[left] else (split_at[left], 0),
                (leaf_at[right], 1) if tree.is_leaf[right] else (split_at[right], 0),
            )

    def _split(
        self, feature: int, threshold: float, true: tuple[int, int], false: tuple[int, int]
    ) -> None:
        self.features.append(feature)
        self.splits.append(threshold)
        self.true_ids.append(true[0])
        self.true_leafs.append(true[1])
        self.false_ids.append(false[0])
        self.false_leafs.append(false[1])

    def node(self, scope: Any, container: Any, x: str, out: str, targets: int) -> None:
        """Write the ``TreeEnsemble`` node: ``x`` (float64) -> ``out`` (float64, targets)."""
        import numpy as np
        from onnx import numpy_helper

        container.add_node(
            "TreeEnsemble",
            [x],
            [out],
            op_domain="ai.onnx.ml",
            op_version=3,  # skl2onnx's highest; onnx_graph raises the graph's to 5, TreeEnsemble's
            name=scope.get_unique_operator_name("TreeEnsemble"),
            n_targets=targets,
            aggregate_function=SUM,
            tree_roots=self.roots,
            nodes_featureids=self.features,
            nodes_splits=numpy_helper.from_array(np.array(self.splits, dtype=np.float64)),
            nodes_modes=numpy_helper.from_array(
                np.full(len(self.features), BRANCH_LEQ, dtype=np.uint8)
            ),
            nodes_truenodeids=self.true_ids,
            nodes_trueleafs=self.true_leafs,
            nodes_falsenodeids=self.false_ids,
            nodes_falseleafs=self.false_leafs,
            leaf_targetids=self.leaf_targets,
            leaf_weights=numpy_helper.from_array(np.array(self.leaf_weights, dtype=np.float64)),
        )


def sklearn_tree(fitted: Any, column: int, classifier: bool) -> Tree:
    """A ``DecisionTree*``'s tree; a leaf's value: its fraction of class ``column``
    (normalised as ``predict_proba`` does) or its predicted value."""
    import numpy as np

    tree = fitted.tree_
    if fitted.n_outputs_ != 1:
        raise UnsupportedStep(fitted, f"{type(fitted).__name__} with {fitted.n_outputs_} outputs")
    values = tree.value[:, 0, :]
    if classifier:
        totals = values.sum(axis=1)
        totals[totals == 0.0] = 1.0
        leaf_value = values[:, column] / totals
    else:
        leaf_value = values[:, 0]
    return Tree(
        tree.children_left,
        tree.children_right,
        tree.feature,
        tree.threshold,
        tree.children_left == -1,
        np.asarray(leaf_value),
    )


def histogram_tree(fitted: Any, predictor: Any) -> Tree:
    """One tree of a ``HistGradientBoosting*``."""
    nodes = predictor.nodes
    if nodes["is_categorical"].any():
        raise UnsupportedStep(fitted, f"{type(fitted).__name__} with categorical splits")
    return Tree(
        nodes["left"],
        nodes["right"],
        nodes["feature_idx"],
        nodes["num_threshold"],
        nodes["is_leaf"].astype(bool),
        nodes["value"],
    )


def tree_shape(operator: Any) -> None:
    """Shape calculator: float64 ``probabilities`` (rows x classes) and ``label`` (int64 or
    string, as ``classes_``), or a float64 ``variable`` (rows x 1)."""
    import numpy as np
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

    fitted = operator.raw_operator
    rows = operator.inputs[0].get_first_dimension()
    if not hasattr(fitted, "classes_"):
        operator.outputs[0].type = DoubleTensorType([rows, 1])
        return
    integer = np.issubdtype(fitted.classes_.dtype, np.integer)
    operator.outputs[0].type = (Int64TensorType if integer else StringTensorType)([rows])
    operator.outputs[1].type = DoubleTensorType([rows, len(fitted.classes_)])


def convert_forest(scope: Any, operator: Any, container: Any) -> None:
    """``DecisionTreeClassifier/Regressor``, ``RandomForestClassifier/Regressor``."""
    from onnx import TensorProto

    fitted = operator.raw_operator
    trees = getattr(fitted, "estimators_", [fitted])
    classifier = hasattr(fitted, "classes_")
    targets = len(fitted.classes_) if classifier else 1
    ensemble = Ensemble()
    for estimator in trees:
        for column in range(targets):
            ensemble.add(sklearn_tree(estimator, column, classifier), column)
    # scikit-learn's trees compare float32(x) <= threshold (float64): x goes through float32.
    rounded = _cast(scope, container, operator.inputs[0].full_name, TensorProto.FLOAT)
    x = _cast(scope, container, rounded, TensorProto.DOUBLE)
    total = scope.get_unique_variable_name("total")
    ensemble.node(scope, container, x, total, targets)
    out = operator.outputs[-1].full_name
    if len(trees) == 1:
        container.add_node("Identity", [total], [out], name=scope.get_unique_operator_name("Id"))
    else:
        count = _constant(scope, container, [float(len(trees))])
        container.add_node("Div", [total, count], [out], name=scope.get_unique_operator_name("Div"))
    if classifier:
        _labels(scope, container, fitted, out, operator.outputs[0].full_name)


def convert_histogram_boosting(scope: Any, operator: Any, container: Any) -> None:
    """``HistGradientBoostingClassifier/Regressor``."""
    fitted = operator.raw_operator
    link = type(fitted._loss.link).__name__
    if fitted._preprocessor is not None:
        raise UnsupportedStep(fitted, f"{type(fitted).__name__} with categorical features")
    if link not in ("IdentityLink", "LogitLink", "MultinomialLogit"):
        raise UnsupportedStep(fitted, f"{type(fitted).__name__} with the {link} of its loss")
    targets = fitted.n_trees_per_iteration_
    ensemble = Ensemble()
    for iteration in fitted._predictors:
        for column, predictor in enumerate(iteration):
            ensemble.add(histogram_tree(fitted, predictor), column)
    total = scope.get_unique_variable_name("total")
    ensemble.node(scope, container, operator.inputs[0].full_name, total, targets)
    baseline = _constant(scope, container, fitted._baseline_prediction.reshape(-1).tolist())
    raw = operator.outputs[-1].full_name if link == "IdentityLink" else _name(scope, "raw")
    container.add_node("Add", [total, baseline], [raw], name=scope.get_unique_operator_name("Add"))
    if link == "IdentityLink":
        return
    probabilities = operator.outputs[1].full_name
    if link == "MultinomialLogit":
        container.add_node(
            "Softmax", [raw], [probabilities], axis=1, name=scope.get_unique_operator_name("Sm")
        )
    else:  # two classes: [1 - p, p] with p = logistic(raw), as scikit-learn's loss computes
        positive = _name(scope, "positive")
        container.add_node("Sigmoid", [raw], [positive], name=scope.get_unique_operator_name("Sg"))
        one = _constant(scope, container, [1.0])
        negative = _name(scope, "negative")
        container.add_node(
            "Sub", [one, positive], [negative], name=scope.get_unique_operator_name("Sub")
        )
        container.add_node(
            "Concat",
            [negative, positive],
            [probabilities],
            axis=1,
            name=scope.get_unique_operator_name("Concat"),
        )
    _labels(scope, container, fitted, probabilities, operator.outputs[0].full_name)


def _labels(scope: Any, container: Any, fitted: Any, probabilities: str, out: str) -> None:
    """``classes_`` at each row's most probable column (the first of equals, as argmax)."""
    import numpy as np
    from onnx import TensorProto

    classes = fitted.classes_
    index = _name(scope, "index")
    container.add_node(
        "ArgMax",
        [probabilities],
        [index],
        axis=1,
        keepdims=0,
        name=scope.get_unique_operator_name("ArgMax"),
    )
    table = _name(scope, "classes")
    if np.issubdtype(classes.dtype, np.integer):
        container.add_initializer(table, TensorProto.INT64, [len(classes)], classes.tolist())
    else:
        strings = [str(label).encode() for label in classes]
        container.add_initializer(table, TensorProto.STRING, [len(classes)], strings)
    container.add_node("Gather", [table, index], [out], name=scope.get_unique_operator_name("Ga"))


def _cast(scope: Any, container: Any, x: str, to: int) -> str:
    out = _name(scope, "cast")
    container.add_node("Cast", [x], [out], to=to, name=scope.get_unique_operator_name("Cast"))
    return out


def _constant(scope: Any, container: Any, values: list[float]) -> str:
    """A float64 ``(1, len(values))`` initializer, broadcast along rows; its name."""
    from onnx import TensorProto

    name = _name(scope, "constant")
    container.add_initializer(name, TensorProto.DOUBLE, [1, len(values)], values)
    return name


def _name(scope: Any, hint: str) -> str:
    return scope.get_unique_variable_name(hint)
