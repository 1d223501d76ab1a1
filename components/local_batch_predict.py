"""The ``local_batch_predict`` component: the local stand-in for GCPC's ``ModelBatchPredictOp``.

The work is ``components.stand_ins.batch_predict_version`` (Vertex's batch semantics: retries,
split batches, resumable output); this module declares the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def local_batch_predict(
    model: Input[Artifact],
    registry_dir: str,
    instances: str,
    output_dir: str,
    batch_prediction_job: Output[Artifact],
    gcs_output_directory: Output[Artifact],
    instances_format: str = "jsonl",
    batch_size: int = 64,
    advised_batch_size: int = 0,
    workers: int = 4,
    key_field: str = "",
    included_fields: list = [],  # noqa: B006 (KFP needs a literal default)
    excluded_fields: list = [],  # noqa: B006
    model_parameters: dict = {},  # noqa: B006
    job_display_name: str = "",
):
    """Runs a local batch prediction job of a model version from the local registry.

    The local stand-in for GCPC's ``ModelBatchPredictOp`` (which ``kfp.local`` cannot run):
    it starts the version's serving container the way Vertex AI does for a batch job
    (``AIP_*`` variables, ``containerSpec``, the model mounted read-only), waits until its
    health route answers 200, sends the instances in batches of ``batch_size`` from
    ``workers`` concurrent requests (retrying 429/5xx/timeouts with backoff, splitting
    failing batches to isolate bad instances), then stops and removes the container, whatever
    happened. See ``components/stand_ins/batch_job.py``.

    As on Vertex, instances that fail become error lines and the job still succeeds; check
    ``completionStats.failedCount``. The task fails when the output does not account for
    every input line.

    Args:
        model: The ``local_model_upload`` output (its ``metadata.resourceName``,
            ``projects/local/locations/local/models/ID@VERSION``, is the version used).
        registry_dir: Directory of the local registry holding the model.
        instances: The instances file, or a glob pattern of files (``gcs_source_uris``).
        output_dir: Where the job's directory is created (``gcs_destination_output_uri_prefix``).
        instances_format: ``jsonl`` (each line's JSON value is an instance) or ``csv`` (header
            row; double-quoted values are strings, unquoted ones floats, empty ones null).
        batch_size: Instances per request to the server
            (``manual_batch_tuning_parameters_batch_size``); 0: ``advised_batch_size``.
        advised_batch_size: The capacity step's batch size, used when ``batch_size`` is 0
            (0 too: Vertex's default, 64).
        workers: Concurrent requests to the server.
        key_field: A field (column) removed from each instance and written as ``key`` in
            its output line instead of the instance.
        included_fields: Fields (columns) to send, in this order; the others are dropped.
        excluded_fields: Fields (columns) to drop; not together with ``included_fields``.
        model_parameters: Sent as ``parameters`` with every request (none when empty).
        job_display_name: The job's display name (default: ``<model>-batch-predict``).

    Returns:
        batch_prediction_job: The job. ``metadata`` mirrors Vertex's ``BatchPredictionJob``:
            ``resourceName`` (``projects/local/locations/local/batchPredictionJobs/ID``),
            ``outputInfo.gcsOutputDirectory``, ``completionStats`` (``successfulCount``,
            ``failedCount``, ``incompleteCount``), ``state``, times, and ``summary`` (the
            runner's counts, requests, retries and splits). ``uri`` is the results directory.
        gcs_output_directory: The results directory
            (``<output_dir>/prediction-<model display name>-<create time>/``), holding
            ``prediction.results-NNNNN-of-MMMMM`` and ``prediction.errors_stats-NNNNN-of-MMMMM``.
    """
    import logging

    from components.stand_ins import DEFAULT_BATCH_SIZE, BatchInputError, batch_predict_version

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one log line per request
    resource = model.metadata.get("resourceName")
    if not resource:
        raise BatchInputError(
            f"model ({model.uri}) has no metadata.resourceName; pass local_model_upload's output"
        )
    size = batch_size or advised_batch_size or DEFAULT_BATCH_SIZE
    print(
        f"batch size {size}"
        + ("" if batch_size else " (advised by the capacity step)" if advised_batch_size else "")
    )
    job = batch_predict_version(
        resource,
        registry_dir,
        instances,
        output_dir,
        instances_format=instances_format,
        batch_size=size,
        workers=workers,
        key_field=key_field,
        included_fields=included_fields,
        excluded_fields=excluded_fields,
        parameters=model_parameters or None,
        display_name=job_display_name,
    )
    results_dir = job["outputInfo"]["gcsOutputDirectory"]
    batch_prediction_job.uri = results_dir
    batch_prediction_job.metadata.update(
        {"resourceName": job.pop("name"), "gcsOutputDirectory": results_dir, **job}
    )
    gcs_output_directory.uri = results_dir
    stats = job["completionStats"]
    print(
        f"batch prediction {batch_prediction_job.metadata['resourceName']} of {resource}: "
        f"{stats['successfulCount']} predictions, {stats['failedCount']} errors in {results_dir}"
    )
