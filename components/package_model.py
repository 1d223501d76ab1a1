"""The ``package_model`` component: a model trained elsewhere, exported as ``train`` exports.

The work is ``components.training.package_model``; this module declares the KFP component
around it.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def package_model(
    packaged: Output[Model],
    metrics: Output[Metrics],
    model: Input[Model] = None,
    model_uri: str = "",
    sample: Input[Dataset] = None,
    sample_uri: str = "",
    target: str = "",
    task: str = "",
):
    """Package a model trained elsewhere for ``build_image``, ``contract_check`` and serving.

    Takes a fitted scikit-learn estimator or ``Pipeline`` saved with joblib or pickle
    (XGBoost's and LightGBM's scikit-learn-API models, bare or as the pipeline's last step,
    included) and a table of raw feature rows. The feature schema comes from the rows, the
    expected predictions from the model on them as the server shapes a request; edge
    instances the model refuses are left out of the sample (the manifest's
    ``sample_refused``). Exactly one of ``model``/``model_uri`` and one of
    ``sample``/``sample_uri`` must be given.

    Args:
        model: a ``Model`` artifact: a model file, or a directory holding exactly one
            ``.joblib``/``.pkl``/``.pickle`` file.
        model_uri: the same as a path or ``gs://`` URI (read at Vertex's ``/gcs/`` mount).
        sample: a ``Dataset`` artifact: a CSV or Parquet table of raw feature rows, or a
            directory holding exactly one.
        sample_uri: the same as a path or ``gs://`` URI.
        target: the label column in the sample, if it has one: its labelled rows give the
            metrics.
        task: ``"classification"``, ``"regression"``, or empty to infer it from the model.

    Returns:
        packaged: directory with ``model.joblib``, ``model_manifest.json``,
            ``instances_sample.jsonl`` and ``expected_predictions.jsonl`` (and ``model.onnx``
            where the model compiles and verifies), as ``train`` writes it.
        metrics: accuracy, F1 (macro) and ROC AUC, or RMSE, MAE and R², on the labelled rows;
            none without labels.
    """
    from components.training import one_source
    from components.training import package_model as package

    result = package(
        model_path=one_source(model.path if model else "", model_uri, "model"),
        sample_path=one_source(sample.path if sample else "", sample_uri, "sample"),
        model_dir=packaged.path,
        target=target,
        task=task,
    )
    packaged.metadata.update(result.artifact_metadata())
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
