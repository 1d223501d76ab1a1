"""A local batch prediction job: the stand-in for GCPC's ModelBatchPredictOp.

``kfp.local`` cannot run GCPC's container components, so ``compile.py run-local`` predicts a
file of instances here: ``batch_predict_version`` starts a registered model version's server
the way Vertex does for a batch job (``serving.start_serving``), runs ``batch_runner.run_batch``
against it, stops it whatever happens, and describes the job as Vertex's
``BatchPredictionJob`` resource.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.runners import RunnerError, detect_runner
from components.stand_ins.batch_runner import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, run_batch
from components.stand_ins.errors import BatchPredictError
from components.stand_ins.registry import RegisteredVersion, get_version
from components.stand_ins.resources import JOBS_PREFIX, new_resource_id, now_rfc3339, rfc3339
from components.stand_ins.serving import start_serving, stop_serving, wait_until_ready

JOB_LABEL = "io.train-to-serve.batch-prediction-job"
"""Server label holding the batch prediction job id."""


@contextlib.contextmanager
def serve_version(version: RegisteredVersion, job_id: str) -> Iterator[str]:
    """Run ``version``'s model server for batch job ``job_id`` and yield its predict URL; stop
    and remove it afterwards, whatever happens.

    The server is started like an endpoint's (``serving.start_serving``), labelled
    ``io.train-to-serve.batch-prediction-job=<job_id>``; in process mode it is a local process.

    Raises:
        EndpointError: the server did not start or never became healthy.
        RunnerNotFoundError: no podman or docker works.
    """
    served = start_serving(
        version,
        detect_runner(),
        resource_id=job_id,
        deployed_model_id=job_id,
        name=f"tts-batch-{job_id}",
        labels={JOB_LABEL: job_id},
    )
    try:
        wait_until_ready(served, f"batch prediction job {job_id} of {version.resource_name}")
        yield served.url
    finally:
        with contextlib.suppress(RunnerError):
            stop_serving(served.server)
        served.server.remove()


def results_directory_name(display_name: str, created: datetime) -> str:
    """``prediction-<model display name>-<create time>``, the time as Vertex writes it in
    output paths (``2026_01_31T12_00_00_123Z``)."""
    stamp = created.strftime("%Y_%m_%dT%H_%M_%S_") + f"{created.microsecond // 1000:03d}Z"
    return f"prediction-{display_name.replace('/', '_')}-{stamp}"


def batch_predict_version(
    model_resource: str,
    registry_dir: str | Path,
    instances: str | Sequence[str],
    output_dir: str | Path,
    *,
    instances_format: str = "jsonl",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    key_field: str = "",
    included_fields: Sequence[str] = (),
    excluded_fields: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    display_name: str = "",
    progress: bool = False,
) -> dict[str, Any]:
    """Run a local batch prediction job of a registered model version, as Vertex runs one.

    Results go to ``<output_dir>/prediction-<model display name>-<create time>/``.

    Returns:
        The job as a Vertex ``BatchPredictionJob`` resource (camelCase; counts as integers).

    Raises:
        RegistryError: unknown model version.
        BatchInputError, BatchPredictError: see ``run_batch``; also when the counts do not
            reconcile.
        EndpointError: the serving container did not start or become healthy.
    """
    version = get_version(registry_dir, model_resource)
    job_id = new_resource_id()
    created = datetime.now(timezone.utc)
    results_dir = Path(output_dir) / results_directory_name(version.display_name, created)
    job: dict[str, Any] = {
        "name": JOBS_PREFIX + job_id,
        "displayName": display_name or f"{version.display_name}-batch-predict",
        "model": version.resource_name,
        "modelVersionId": version.version_id,
        "inputConfig": {
            "instancesFormat": instances_format,
            "gcsSource": {"uris": [instances] if isinstance(instances, str) else list(instances)},
        },
        "instanceConfig": {
            "keyField": key_field,
            "includedFields": list(included_fields),
            "excludedFields": list(excluded_fields),
        },
        "modelParameters": parameters,
        "manualBatchTuningParameters": {"batchSize": batch_size},
        "outputInfo": {"gcsOutputDirectory": str(results_dir)},
        "createTime": rfc3339(created),
    }
    with serve_version(version, job_id) as url:
        job["startTime"] = now_rfc3339()
        summary = run_batch(
            url,
            instances,
            results_dir,
            instances_format=instances_format,
            batch_size=batch_size,
            workers=workers,
            parameters=parameters,
            key_field=key_field,
            included_fields=included_fields,
            excluded_fields=excluded_fields,
            progress=progress,
        )
    job["endTime"] = now_rfc3339()
    job["completionStats"] = {
        "successfulCount": summary.prediction_count,
        "failedCount": summary.error_count,
        "incompleteCount": summary.input_count - summary.prediction_count - summary.error_count,
    }
    job["state"] = "JOB_STATE_SUCCEEDED" if summary.reconciled else "JOB_STATE_FAILED"
    job["summary"] = summary.to_json()
    if not summary.reconciled:
        raise BatchPredictError(
            f"batch prediction job {job_id}: the output does not account for every input "
            f"({summary.describe()}; shards {summary.mismatched_shards}); see {results_dir}"
        )
    return job
