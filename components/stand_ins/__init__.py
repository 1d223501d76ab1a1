"""Local stand-ins for Vertex AI's Model Registry, endpoints and batch prediction.

``kfp.local`` cannot run GCPC's container components; these keep Vertex's formats and rules on
one machine: ``registry`` (model versions, aliases and evaluations), ``serving`` (a version's
server started as Vertex starts it), ``endpoints`` (deployed models and their traffic split,
behind a ``router`` process with a gRPC port, ``grpc_router``: deploy, traffic, predict over
HTTP or ``grpc_predict``, undeploy), ``batch_inputs``, ``sender`` and ``batch_runner`` (batch
prediction against any server), ``batch_job`` (a version's batch job), with Vertex-shaped
``resources`` names and one ``errors`` hierarchy; and ``cloud_build``, a Cloud Build config run
on this machine (steps as containers, nothing pushed).
"""

from components.stand_ins.batch_inputs import (
    FieldSelection,
    count_records,
    read_records,
    resolve_inputs,
)
from components.stand_ins.batch_job import JOB_LABEL, batch_predict_version
from components.stand_ins.batch_runner import (
    DEFAULT_BATCH_SIZE,
    ERRORS_PREFIX,
    RESULTS_PREFIX,
    BatchSummary,
    run_batch,
)
from components.stand_ins.cloud_build import LocalBuild, LocalBuildError, run_build
from components.stand_ins.endpoints import (
    DEPLOYED_MODEL_LABEL,
    ENDPOINT_LABEL,
    Deployment,
    LocalDeployedModel,
    LocalEndpoint,
    LocalEndpointOps,
    container_status,
    deploy,
    get_endpoint,
    get_or_create_endpoint,
    labelled_containers,
    list_endpoints,
    predict,
    raw_predict,
    read_instances,
    rollback_traffic,
    router_status,
    set_traffic,
    undeploy,
    undeploy_model,
)
from components.stand_ins.errors import (
    BatchInputError,
    BatchPredictError,
    EndpointError,
    EndpointInputError,
    RegistryError,
)
from components.stand_ins.grpc_predict import grpc_predict
from components.stand_ins.registry import (
    LocalRegistryOps,
    RegisteredVersion,
    get_version,
    import_evaluation,
    list_evaluations,
    list_versions,
    merge_version_aliases,
    upload_model,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEPLOYED_MODEL_LABEL",
    "ENDPOINT_LABEL",
    "ERRORS_PREFIX",
    "JOB_LABEL",
    "RESULTS_PREFIX",
    "BatchInputError",
    "BatchPredictError",
    "BatchSummary",
    "Deployment",
    "EndpointError",
    "EndpointInputError",
    "FieldSelection",
    "LocalBuild",
    "LocalBuildError",
    "LocalDeployedModel",
    "LocalEndpoint",
    "LocalEndpointOps",
    "LocalRegistryOps",
    "RegisteredVersion",
    "RegistryError",
    "batch_predict_version",
    "container_status",
    "count_records",
    "deploy",
    "get_endpoint",
    "get_or_create_endpoint",
    "get_version",
    "grpc_predict",
    "import_evaluation",
    "labelled_containers",
    "list_endpoints",
    "list_evaluations",
    "list_versions",
    "merge_version_aliases",
    "predict",
    "raw_predict",
    "read_instances",
    "read_records",
    "resolve_inputs",
    "rollback_traffic",
    "router_status",
    "run_batch",
    "run_build",
    "set_traffic",
    "undeploy",
    "undeploy_model",
    "upload_model",
]
