"""The train-to-serve pipeline, for Vertex AI Pipelines and for kfp's local runner.

train -> build and contract-check the image -> evaluation gate -> upload (a new version of
an existing model, or a new model; the ``default`` alias not moved yet) -> in parallel: the
rollout on the endpoint, and a batch prediction job (on a GPU on Vertex; a TensorFlow model's
job runs the GPU variant of its image). The rollout: deploy next to the serving version at a
canary share -> (on Vertex) its CPU autoscaling target set -> smoke test through the endpoint
-> promote (traffic, ``default`` alias, the previous version undeployed, the promotion
record) or roll back (traffic as before, the new deployed model undeployed, the run failed
with the smoke test's findings). On Vertex the image is built, checked and pushed in one
Cloud Build (``build_and_check``: a task there has no container engine); locally
``build_image`` and ``contract_check`` run with podman or docker.

One factory, ``build_pipeline(components_image, backend)``, defines both variants from the
same first half (``_train_build_check_gate``); only the Vertex resource steps differ:

* ``backend="vertex"``: Google's own components (GCPC ``ModelUploadOp``, ``ModelDeployOp``,
  ``ModelBatchPredictOp``), each given ``location`` explicitly (GCPC defaults it to
  us-central1 whatever the run's region), and ours where GCPC has none (the endpoint found by
  name, the canary's traffic split, the deployed model's autoscaling target, the smoke test,
  promote and roll back: the aiplatform SDK);
* ``backend="local"``: Python stand-ins that ``kfp.local`` can run and that keep Vertex's
  formats (``local_model_upload``, ``local_model_deploy``, ``local_batch_predict``): a
  directory-based model registry, endpoints as long-running local containers, and batch
  prediction files named and shaped as Vertex writes them.

In both, the only way a container spec reaches upload is the contract check's
``UnmanagedContainerModel`` output, and the smoke test, promote and roll back are the same
components (they act on a Vertex or a local endpoint as its resource name says).
"""

from collections.abc import Callable, Collection
from typing import Any

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint, VertexModel
from google_cloud_pipeline_components.v1.batch_predict_job import ModelBatchPredictOp
from google_cloud_pipeline_components.v1.endpoint import ModelDeployOp
from google_cloud_pipeline_components.v1.model import ModelUploadOp
from kfp import dsl

from components import vertex
from components.build_and_check import build_and_check
from components.build_image import build_image
from components.canary_traffic_split import canary_traffic_split
from components.capacity_check import capacity_check
from components.contract_check import contract_check
from components.endpoint_get_or_create import endpoint_get_or_create
from components.evaluation_gate import evaluation_gate
from components.images import COMPONENTS_IMAGE, with_image
from components.imaging import DEFAULT_IMAGE_NAME
from components.local_batch_predict import local_batch_predict
from components.local_model_deploy import local_model_deploy
from components.local_model_upload import local_model_upload
from components.promote import promote
from components.roll_back import roll_back
from components.set_autoscaling import set_autoscaling
from components.smoke_test import smoke_test
from components.train import train
from components.training import check_gate_metric
from pipelines.accelerators import check_accelerator
from pipelines.parameters import (
    TRAINING_PARAMETERS,
    check_autoscaling_target,
    check_rollout,
    with_shared_parameters,
)

PIPELINE_NAME = "train-to-serve"

OUR_COMPONENTS = {
    "train": train,
    "build_image": build_image,
    "contract_check": contract_check,
    "build_and_check": build_and_check,
    "evaluation_gate": evaluation_gate,
    "endpoint_get_or_create": endpoint_get_or_create,
    "canary_traffic_split": canary_traffic_split,
    "set_autoscaling": set_autoscaling,
    "smoke_test": smoke_test,
    "promote": promote,
    "roll_back": roll_back,
}
"""The project's own components in the Vertex pipeline, by name (compile exports each as YAML)."""
LOCAL_ONLY = {
    "capacity_check": capacity_check,
    "local_model_upload": local_model_upload,
    "local_model_deploy": local_model_deploy,
    "local_batch_predict": local_batch_predict,
}
"""What only the local backend runs: the stand-ins for GCPC's upload, deploy and batch ops,
and the capacity step (it needs a container engine, which a Vertex task has not: a Vertex
run takes a report measured elsewhere, ``compile.py submit --capacity``)."""
BACKENDS = ("vertex", "local")
LOCAL_PIPELINE_NAME = f"{PIPELINE_NAME}-local"
DISPLAY_NAME_HINT = "letters, digits, spaces, '-', '_' and '.' only"


def never_cached(task: Any) -> Any:
    """``task`` with caching off: it creates or changes something (an image, a model version,
    an endpoint, a deployment, a job), so a cache hit would skip work a run must do, or hand
    on a resource that no longer exists."""
    task.set_caching_options(False)
    return task


def _upload(
    unmanaged_container_model: Any,
    *,
    project: Any,
    location: Any,
    display_name: Any,
    parent_model: Any,
    version_aliases: Any,
    labels: Any,
) -> Any:
    """Upload as a new version of ``parent_model`` when one is named, else as a new model.

    Returns the ``VertexModel`` output of whichever upload ran (``dsl.OneOf``): GCPC pins it
    to the uploaded version, so deploy and batch prediction use exactly this version.
    """
    with dsl.If(parent_model != "", name="new-version"):
        parent = dsl.importer(
            artifact_uri=parent_model,
            artifact_class=VertexModel,
            metadata={"resourceName": parent_model},
        )
        as_version = never_cached(
            ModelUploadOp(
                project=project,
                location=location,
                display_name=display_name,
                parent_model=parent.output,
                unmanaged_container_model=unmanaged_container_model,
                version_aliases=version_aliases,
                labels=labels,
            )
        )
    with dsl.Else(name="new-model"):
        as_model = never_cached(
            ModelUploadOp(
                project=project,
                location=location,
                display_name=display_name,
                unmanaged_container_model=unmanaged_container_model,
                version_aliases=version_aliases,
                labels=labels,
            )
        )
    return dsl.OneOf(as_version.outputs["model"], as_model.outputs["model"])


def _rollout(
    ours: dict[str, Any],
    shared: dict[str, Any],
    *,
    trained: Any,
    checked: Any,
    endpoint: Any,
    model: Any,
    traffic_before: Any,
    deployed: Any,
) -> None:
    """After the deploy, the same in both backends: the smoke test through the endpoint, then
    promote on a pass (the ``default`` alias moves only here) or roll back on a failure."""
    smoke = never_cached(
        ours["smoke_test"](endpoint=endpoint, model=model, trained_model=trained.outputs["model"])
    ).after(deployed)
    evidence = {
        "endpoint": endpoint,
        "model": model,
        "metrics": trained.outputs["metrics"],
        "container_model": checked.outputs["unmanaged_container_model"],
        "contract_report": checked.outputs["report"],
        "smoke_result": smoke.outputs["result"],
        "traffic_before": traffic_before,
        "gate_metric": shared["gate_metric"],
        "gate_threshold": shared["gate_threshold"],
    }
    with dsl.If(smoke.outputs["Output"] == True, name="smoke-test-passed"):  # noqa: E712
        never_cached(
            ours["promote"](
                trained_model=trained.outputs["model"],
                promote=shared["promote"],
                keep_previous=shared["keep_previous_deployments"],
                **evidence,
            )
        )
    with dsl.Else(name="smoke-test-failed"):
        never_cached(ours["roll_back"](**evidence))


def _train_build_check_gate(
    ours: dict[str, Any],
    shared: dict[str, Any],
    build_and_check: Callable[[Any], Any],
    cache_training: bool,
) -> tuple[Any, Any, Any]:
    """The first half, shared by both backends: train, build and check, and the gate.

    ``build_and_check(model)`` adds the backend's build and contract check and returns the
    task whose ``unmanaged_container_model`` feeds upload. Returns the train task, that task
    and the gate task (upload and what follows run inside ``dsl.If(gate.output == True)``).
    The gate runs after the check so that a model that would fail on Vertex stops the run
    even when its metrics are good. ``train`` is cached only with ``cache_training`` (a
    scheduled run must retrain: the data behind the same URI changes); the build and check
    never are.
    """
    trained = ours["train"](**{name: shared[name] for name in TRAINING_PARAMETERS})
    trained.set_caching_options(cache_training)
    checked = never_cached(build_and_check(trained.outputs["model"]))
    gate = ours["evaluation_gate"](
        metrics=trained.outputs["metrics"],
        metric=shared["gate_metric"],
        threshold=shared["gate_threshold"],
    )
    gate.after(checked)
    return trained, checked, gate


def build_pipeline(
    components_image: str = COMPONENTS_IMAGE,
    backend: str = "vertex",
    *,
    cache_training: bool = False,
) -> Any:
    """Define the pipeline for ``backend`` with our components running in ``components_image``.

    A factory rather than a module-level pipeline because KFP fixes each task's image (and
    caching) when the pipeline is defined; ``compile.py compile --components-image`` needs to
    choose it. Our components are copied, never changed in place. ``backend`` is ``"vertex"``
    (GCPC ops for the Vertex resources) or ``"local"`` (stand-ins ``kfp.local`` can run).

    Caching: every task that creates or changes a resource is never cached
    (``never_cached``); ``train`` only with ``cache_training`` (``compile --cache-training``):
    a scheduled run with the same parameters must retrain on the data behind the same URI.
    """
    ours = {
        name: with_image(c, components_image)
        for name, c in {**OUR_COMPONENTS, **LOCAL_ONLY}.items()
    }
    if backend == "vertex":
        return _vertex_pipeline(ours, components_image, cache_training)
    if backend == "local":
        return _local_pipeline(ours, cache_training)
    raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")


def _vertex_pipeline(ours: dict[str, Any], components_image: str, cache_training: bool) -> Any:
    """The pipeline for Vertex AI Pipelines: the image built, checked and pushed in one Cloud
    Build (``build_and_check``, the check run by ``components_image``); GCPC ops for upload,
    endpoint, deploy, batch."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train a tabular model with its preprocessor, build and contract-check its "
        "serving image, gate on evaluation, upload to the Model Registry, deploy to an endpoint "
        "and run a GPU batch prediction job.",
    )
    @with_shared_parameters
    def train_to_serve(
        project: str,
        staging_bucket: str,
        batch_output_uri_prefix: str,
        batch_gcs_source_uris: list = [],  # noqa: B006
        location: str = "us-central1",
        image_repository: str = "train-to-serve",
        image_name: str = "serving",
        build_service_account: str = "",
        build_machine_type: str = "",
        base_image: str = "",
        resource_labels: dict = {},  # noqa: B006
        endpoint: str = "",
        deploy_machine_type: str = "n1-standard-2",
        deploy_min_replicas: int = 1,
        deploy_max_replicas: int = 1,
        deploy_autoscaling_target: int = 0,
        batch_predictions_format: str = "jsonl",
        batch_bigquery_source: str = "",
        batch_bigquery_destination: str = "",
        batch_machine_type: str = "n1-standard-8",
        batch_accelerator_type: str = "NVIDIA_TESLA_T4",
        batch_accelerator_count: int = 1,
        batch_replica_count: int = 1,
        **shared: Any,
    ) -> None:
        """Train-to-serve on Vertex AI.

        Args:
            project: Google Cloud project ID for every Vertex resource.
            staging_bucket: gs:// folder for the image build context (Cloud Build).
            batch_gcs_source_uris: gs:// input files for batch prediction (jsonl or csv).
            batch_output_uri_prefix: gs:// folder for batch prediction results.
            location: region for the image, model, endpoint and batch job (keep all in one).
            framework: ``scikit-learn`` or ``tensorflow`` (Keras, preprocessing in the model);
                the image build follows the model's framework.
            data, target, task, feature_columns, estimator, hyperparameters, seed: training.
            image_repository: Artifact Registry repository (in ``location``) for the image.
            image_name: image name inside that repository.
            build_service_account: the identity the image's Cloud Build runs as (empty:
                Cloud Build's default, which secure-by-default organisations leave without
                roles); see the README's project set-up for its roles.
            build_machine_type: the Cloud Build worker (``E2_HIGHCPU_8``, ...; empty: default).
            base_image: the serving image's ``FROM`` (empty: python:3.11-slim from Docker Hub;
                e.g. an Artifact Registry remote repository in front of it).
            resource_labels: labels for the model, the endpoint and the batch job (``submit``
                and ``schedule create`` fill them with the run's ``--label`` values).
            gate_metric: metric that decides if the model ships (rmse/mae: lower is better).
            gate_threshold: the bar the metric must meet.
            model_display_name: Model Registry display name (plain text; GCPC does not escape it).
            parent_model: resource name of an existing model: the upload becomes its new version.
            version_aliases: more aliases of the new version; ``default`` moves to it only
                once its smoke test on the endpoint passed.
            endpoint: resource name of an existing endpoint; empty: the endpoint named
                ``endpoint_display_name`` in ``location``, created the first time.
            endpoint_display_name: display name of the endpoint found or created.
            deploy_machine_type, deploy_min_replicas, deploy_max_replicas: dedicated resources
                of the deployed model (``submit --capacity`` fills them from a capacity
                report's advice where the run leaves them unset).
            deploy_autoscaling_target: the CPU utilization target in percent (1 to 100) at
                which Vertex autoscales the deployed model between the min and max replicas,
                set after the deploy (``set_autoscaling``: GCPC's deploy takes none); 0 keeps
                Vertex's default, 60 (``submit --capacity`` fills it from the report).
            canary_traffic_percent: the new version's share until its smoke test passes (0:
                the smallest share, 1%, when the endpoint serves another model: a public
                endpoint routes rawPredict by the split alone; 100 on an empty endpoint).
            promote: ``all`` (every request to the new version after the smoke test) or
                ``canary`` (stay at the canary share; promote later).
            keep_previous_deployments: keep the endpoint's other deployed models (at 0%); by
                default they are undeployed once the new version serves all the traffic.
            batch_instances_format: ``jsonl``, ``csv`` or ``bigquery``.
            batch_predictions_format: ``jsonl``, ``csv`` or ``bigquery``.
            batch_bigquery_source, batch_bigquery_destination: bq:// URIs for BigQuery batch I/O.
            batch_machine_type: the batch job's machine.
            batch_accelerator_type, batch_accelerator_count: the GPU of a TensorFlow model's
                batch job (checked against what Vertex allows before submit); a
                scikit-learn model's job runs on the CPU, and a GPU asked for it is refused.
            batch_replica_count: replicas of the batch job (batch does not autoscale;
                ``submit --capacity`` fills it and ``batch_size`` from the advice).
            batch_size: instances per request to the container (Vertex's default is 64).
            grpc_port: also serve gRPC on this container port (e.g. 8081; 0: HTTP only): the
                checked build checks it there (the gRPC rules), and the uploaded
                ``containerSpec`` declares it in ``grpcPorts`` with gRPC health and startup
                probes and ``SERVING_GRPC_PORT`` in ``env``. Clients call gRPC only on
                dedicated endpoints.
        """
        build = {
            "image_name": image_name,
            "project": project,
            "location": location,
            "repository": image_repository,
            "staging_bucket": staging_bucket,
            "service_account": build_service_account,
            "machine_type": build_machine_type,
            "base_image": base_image,
            "grpc_port": shared["grpc_port"],
        }

        def checked_build(model: Any, gpu: bool = False) -> Any:
            # Our own serving image is checked strictly: a hygiene finding on it is our bug.
            return ours["build_and_check"](
                model=model, gpu=gpu, checker_image=components_image, strict=True, **build
            )

        trained, checked, gate = _train_build_check_gate(
            ours, shared, checked_build, cache_training
        )
        with dsl.If(gate.output == True, name="model-passes-gate"):  # noqa: E712 (KFP condition)
            model = _upload(
                checked.outputs["unmanaged_container_model"],
                project=project,
                location=location,
                display_name=shared["model_display_name"],
                parent_model=shared["parent_model"],
                version_aliases=shared["version_aliases"],
                labels=resource_labels,
            )
            # Reused by display name: a new endpoint per scheduled run would pile up.
            with dsl.If(endpoint == "", name="endpoint-by-name"):
                named = never_cached(
                    ours["endpoint_get_or_create"](
                        project=project,
                        location=location,
                        display_name=shared["endpoint_display_name"],
                        labels=resource_labels,
                    )
                )
            with dsl.Else(name="existing-endpoint"):
                existing = dsl.importer(
                    artifact_uri=endpoint,
                    artifact_class=VertexEndpoint,
                    metadata={"resourceName": endpoint},
                )
            target = dsl.OneOf(named.outputs["endpoint"], existing.output)
            # GCPC's deploy takes a split by deployed-model id, not a share for the new model.
            split = never_cached(
                ours["canary_traffic_split"](
                    endpoint=target, canary_traffic_percent=shared["canary_traffic_percent"]
                )
            )
            deployed = never_cached(
                ModelDeployOp(
                    model=model,
                    endpoint=target,
                    deployed_model_display_name=shared["model_display_name"],
                    dedicated_resources_machine_type=deploy_machine_type,
                    dedicated_resources_min_replica_count=deploy_min_replicas,
                    dedicated_resources_max_replica_count=deploy_max_replicas,
                    traffic_split=split.outputs["traffic_split"],
                )
            )
            # GCPC's deploy takes no autoscaling target: set it on the deployed model before
            # the smoke test (0: nothing is sent, Vertex's default applies).
            autoscaled = never_cached(
                ours["set_autoscaling"](
                    endpoint=target,
                    model=model,
                    cpu_target=deploy_autoscaling_target,
                    min_replicas=deploy_min_replicas,
                    max_replicas=deploy_max_replicas,
                )
            ).after(deployed)
            _rollout(
                ours,
                shared,
                trained=trained,
                checked=checked,
                endpoint=target,
                model=model,
                traffic_before=split.outputs["traffic_before"],
                deployed=autoscaled,
            )
            batch_job = {
                "project": project,
                "location": location,
                "job_display_name": shared["model_display_name"],
                "instances_format": shared["batch_instances_format"],
                "predictions_format": batch_predictions_format,
                "gcs_source_uris": batch_gcs_source_uris,
                "bigquery_source_input_uri": batch_bigquery_source,
                "gcs_destination_output_uri_prefix": batch_output_uri_prefix,
                "bigquery_destination_output_uri": batch_bigquery_destination,
                "machine_type": batch_machine_type,
                "starting_replica_count": batch_replica_count,
                "max_replica_count": batch_replica_count,
                "manual_batch_tuning_parameters_batch_size": shared["batch_size"],
                "labels": resource_labels,
            }
            # A TensorFlow model's batch job runs the GPU variant of its image (TensorFlow
            # with CUDA), contract-checked like the first; the endpoint keeps the CPU image.
            # The job takes the checked image as an UnmanagedContainerModel (GCPC's
            # alternative to a registry model), so the registry holds one image per version.
            with dsl.If(shared["framework"] == "tensorflow", name="gpu-image-for-batch"):
                gpu_checked = never_cached(checked_build(trained.outputs["model"], gpu=True))
                never_cached(
                    ModelBatchPredictOp(
                        unmanaged_container_model=gpu_checked.outputs["unmanaged_container_model"],
                        accelerator_type=batch_accelerator_type,
                        accelerator_count=batch_accelerator_count,
                        **batch_job,
                    )
                )
            # A scikit-learn image runs on the CPU: no accelerator (GCPC drops the empty
            # type and the zero count from the request), nothing billed for an idle GPU.
            with dsl.Else(name="model-image-for-batch"):
                never_cached(
                    ModelBatchPredictOp(
                        model=model, accelerator_type="", accelerator_count=0, **batch_job
                    )
                )

    return train_to_serve


def _local_pipeline(ours: dict[str, Any], cache_training: bool) -> Any:
    """The same DAG for ``kfp.local``: local registry, local endpoint, local batch job."""

    @dsl.pipeline(
        name=LOCAL_PIPELINE_NAME,
        description="Train-to-serve on one machine: the Vertex pipeline's DAG with local "
        "stand-ins for the Model Registry, endpoints and batch prediction.",
    )
    @with_shared_parameters
    def train_to_serve_local(
        registry_dir: str,
        endpoints_dir: str,
        batch_instances: str,
        batch_output_dir: str,
        image_name: str = DEFAULT_IMAGE_NAME,
        deploy_machine_type: str = vertex.MACHINE_TYPE,
        latency_slo_ms: float = 200.0,
        expected_qps: float = 10.0,
        **shared: Any,
    ) -> None:
        """Train-to-serve on this machine (``compile.py run-local``).

        Args:
            registry_dir: directory of the local model registry (kept across runs).
            endpoints_dir: directory of the local endpoint records (kept across runs).
            batch_instances: local jsonl or csv file(s) (a path or a glob) to predict.
            batch_output_dir: results go to ``prediction-<model>-<time>/`` inside it.
            framework: ``scikit-learn`` or ``tensorflow`` (Keras, preprocessing in the model);
                the image build follows the model's framework.
            data, target, task, feature_columns, estimator, hyperparameters, seed: training.
            image_name: local image name (``name[:tag]``) for the serving image.
            deploy_machine_type: the Vertex machine type the capacity step measures for.
            latency_slo_ms: the p99 objective of the capacity step.
            expected_qps: the traffic the capacity step advises replicas for.
            gate_metric, gate_threshold: the evaluation gate, as in the Vertex pipeline.
            model_display_name: display name in the local registry.
            parent_model: ``projects/local/locations/local/models/ID`` to retrain: the upload
                becomes its new version.
            version_aliases: more aliases of the new version; ``default`` moves to it only
                once its smoke test on the endpoint passed.
            endpoint_display_name: the local endpoint, found by display name (created the
                first time): each run's version is rolled out next to the serving one.
            canary_traffic_percent, promote, keep_previous_deployments: the rollout, as in
                the Vertex pipeline (locally a share of 0 is a pure smoke test: the router
                reaches the new deployed model directly).
            batch_instances_format: ``jsonl`` or ``csv``.
            batch_size: instances per request to the container; 0: the capacity step's
                advice.
            grpc_port: also serve gRPC on this container port (e.g. 8081; 0: HTTP only): the
                contract check checks it there, and the checked ``containerSpec`` declares it
                (``grpcPorts``, gRPC probes, ``SERVING_GRPC_PORT``), so the local endpoint
                serves it too.
        """
        measured: list[Any] = []

        def build_and_check(model: Any) -> Any:
            built = never_cached(
                ours["build_image"](model=model, image_name=image_name, builder="local")
            )
            # Our own serving image is checked strictly: a hygiene finding on it is our bug.
            checked = ours["contract_check"](
                image_uri=built.outputs["image_uri"],
                model=model,
                strict=True,
                grpc_port=shared["grpc_port"],
            )
            # Its capacity on the machine type: a machine it does not fit stops the run here.
            capacity = never_cached(
                ours["capacity_check"](
                    image_uri=built.outputs["image_uri"],
                    model=model,
                    machine_type=deploy_machine_type,
                    latency_slo_ms=latency_slo_ms,
                    expected_qps=expected_qps,
                )
            ).after(checked)
            measured.append(capacity)
            return checked

        trained, checked, gate = _train_build_check_gate(
            ours, shared, build_and_check, cache_training
        )
        gate.after(measured[0])
        with dsl.If(gate.output == True, name="model-passes-gate"):  # noqa: E712 (KFP condition)
            uploaded = never_cached(
                ours["local_model_upload"](
                    display_name=shared["model_display_name"],
                    unmanaged_container_model=checked.outputs["unmanaged_container_model"],
                    registry_dir=registry_dir,
                    parent_model=shared["parent_model"],
                    version_aliases=shared["version_aliases"],
                )
            )
            deployed = never_cached(
                ours["local_model_deploy"](
                    model=uploaded.outputs["model"],
                    registry_dir=registry_dir,
                    endpoints_dir=endpoints_dir,
                    endpoint_display_name=shared["endpoint_display_name"],
                    canary_traffic_percent=shared["canary_traffic_percent"],
                )
            )
            _rollout(
                ours,
                shared,
                trained=trained,
                checked=checked,
                endpoint=deployed.outputs["endpoint"],
                model=uploaded.outputs["model"],
                traffic_before=deployed.outputs["traffic_before"],
                deployed=deployed,
            )
            never_cached(
                ours["local_batch_predict"](
                    model=uploaded.outputs["model"],
                    registry_dir=registry_dir,
                    instances=batch_instances,
                    instances_format=shared["batch_instances_format"],
                    output_dir=batch_output_dir,
                    batch_size=shared["batch_size"],
                    advised_batch_size=measured[0].outputs["batch_size"],
                )
            )

    return train_to_serve_local


def check_run_parameters(values: dict[str, Any], explicit: Collection[str] = ()) -> None:
    """Checks Vertex would only make after queueing the run; raise ``ValueError`` naming the fault.

    ``values`` are the run's parameter values merged over the pipeline's defaults;
    ``explicit`` names those the run sets itself.
    """
    check_rollout(values)
    check_gate_metric(values["task"], values["gate_metric"])
    if values["framework"] == "tensorflow":
        check_accelerator(
            values["batch_machine_type"],
            values["batch_accelerator_type"],
            int(values["batch_accelerator_count"]),
        )
    else:
        asked = sorted({"batch_accelerator_type", "batch_accelerator_count"} & set(explicit))
        if asked:
            raise ValueError(
                f"{', '.join(asked)} given for a {values['framework']} model: its image runs on "
                "the CPU, so a GPU would only be billed; drop them (they apply to TensorFlow "
                "models' batch jobs)"
            )
    for name in ("model_display_name", "endpoint_display_name"):
        text = str(values[name])
        if not text or len(text) > 128 or any(ch in text for ch in '"\\'):
            raise ValueError(
                f"{name} {text!r}: 1-128 characters, no quotes or backslashes "
                f"(GCPC pastes it into JSON unescaped); use {DISPLAY_NAME_HINT}"
            )
    for name in ("deploy_min_replicas", "batch_replica_count", "batch_size"):
        if int(values[name]) < 1:
            raise ValueError(
                f"{name} must be at least 1 (GCPC drops a 0 from the request silently)"
            )
    if int(values["deploy_max_replicas"]) < int(values["deploy_min_replicas"]):
        raise ValueError("deploy_max_replicas must be at least deploy_min_replicas")
    check_autoscaling_target(values)
    for name in ("staging_bucket", "batch_output_uri_prefix"):
        if not str(values[name]).startswith("gs://"):
            raise ValueError(f"{name} {values[name]!r} must be a gs:// URI")
    if values["batch_instances_format"] == "bigquery":
        if not values["batch_bigquery_source"]:
            raise ValueError("batch_instances_format 'bigquery' needs batch_bigquery_source")
    elif not values["batch_gcs_source_uris"]:
        raise ValueError(
            f"batch_instances_format {values['batch_instances_format']!r} needs "
            "batch_gcs_source_uris (a list of gs:// files)"
        )
