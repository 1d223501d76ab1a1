"""The ``train`` component: train a tabular model and export it with its fitted preprocessing.

The work is ``components.training.train_and_export``; this module declares the KFP component
around it.
"""

from kfp import dsl
from kfp.dsl import ClassificationMetrics, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def train(
    model: Output[Model],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    data: str = "penguins",
    target: str = "",
    task: str = "classification",
    feature_columns: list = [],  # noqa: B006 (KFP needs a literal default)
    estimator: str = "auto",
    hyperparameters: dict = {},  # noqa: B006
    eval_fraction: float = 0.2,
    seed: int = 42,
    sample_size: int = 200,
    framework: str = "scikit-learn",
):
    """Train a tabular model and export it with its fitted preprocessing.

    Reads a CSV or Parquet table (local path, ``gs://`` URI, or the bundled ``penguins``
    data set), fits on a seeded split and evaluates on the hold-out rows. ``framework``
    ``"scikit-learn"`` fits one ``Pipeline`` (numeric: median impute + scale; categorical:
    most-frequent impute + one-hot ignoring unknown categories; then the named estimator);
    ``"tensorflow"`` fits a Keras model whose layers do the preprocessing (numeric: NaN ->
    training mean, then ``Normalization``; categorical: ``StringLookup`` one-hot, null -> all
    zeros, unknown -> an out-of-vocabulary slot), exported as a SavedModel. It writes the
    model directory that ``build_image`` and ``contract_check`` take, and the metrics that
    ``evaluation_gate`` judges (see Returns).

    Args:
        data: CSV/Parquet path or URI, or ``"penguins"``.
        target: column to predict (empty: the bundled data set's default).
        task: ``"classification"`` or ``"regression"``.
        feature_columns: feature columns; empty means all columns but the target.
        estimator: ``"auto"`` or a name. scikit-learn: classification
            ``logistic_regression``, ``random_forest``, ``gradient_boosting``,
            ``decision_tree``; regression ``ridge``, ``linear_regression``,
            ``random_forest``, ``gradient_boosting``, ``decision_tree``. TensorFlow: ``mlp``.
        hyperparameters: estimator keyword arguments (names are checked); TensorFlow:
            ``epochs``, ``batch_size``, ``learning_rate``, ``hidden_units``.
        eval_fraction: hold-out share for evaluation.
        seed: seed for the split and the estimator.
        sample_size: how many evaluation rows are exported as sample instances; edge
            instances built from the schema (each feature missing, unseen categories,
            numbers at the training range's ends, the same as lists) come on top.
        framework: ``"scikit-learn"`` (default) or ``"tensorflow"``.

    Returns:
        model: directory with ``model.joblib`` (or ``saved_model/``), ``model_manifest.json``,
            ``instances_sample.jsonl`` and ``expected_predictions.jsonl``.
        metrics: accuracy, F1 (macro) and ROC AUC, or RMSE, MAE and R².
        classification_metrics: confusion matrix and ROC curve (classification only).
    """
    from components.training import train_and_export

    result = train_and_export(
        data=data,
        model_dir=model.path,
        target=target,
        task=task,
        feature_columns=list(feature_columns),
        estimator=estimator,
        hyperparameters=dict(hyperparameters),
        eval_fraction=eval_fraction,
        seed=seed,
        sample_size=sample_size,
        framework=framework,
    )
    model.metadata.update(result.artifact_metadata())
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    if result.confusion_matrix:
        classification_metrics.log_confusion_matrix(
            [str(c) for c in result.manifest["target_classes"]], result.confusion_matrix
        )
    if result.roc_curve:
        classification_metrics.log_roc_curve(
            result.roc_curve["fpr"], result.roc_curve["tpr"], result.roc_curve["thresholds"]
        )
