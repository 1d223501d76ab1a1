"""Predict through a local endpoint's gRPC port: the instances as an Open Inference Protocol
``ModelInferRequest``, the answer as the HTTP predict's JSON.

``compile.py endpoints predict --grpc`` calls it. The tensors take the model's features, so it
asks the endpoint for ``ModelMetadata`` first (the split picks a model, and the answer's
metadata names it), then sends ``ModelInfer`` to that same deployed model
(``x-vertex-ai-deployed-model-id``): the features are those of the model that predicts. The
answer has the shape ``endpoints.predict`` returns: the HTTP route's predictions
(``tensors.predictions_from_response``) with the fields Vertex adds to a ``PredictResponse``
(``deployedModelId``, ``model``, ``modelVersionId``, ``modelDisplayName``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from components import vertex
from components.stand_ins.endpoint_records import LocalDeployedModel, LocalEndpoint, get_endpoint
from components.stand_ins.endpoints import CLIENT_MARGIN_S, running_endpoint
from components.stand_ins.errors import EndpointError, EndpointInputError
from components.stand_ins.grpc_router import CHANNEL_LIMITS, DEPLOYED_MODEL_KEY, ENDPOINT_KEY
from serving_image.server.protos import grpc_predict_v2_pb2 as pb
from serving_image.server.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_image.server.tensors import (
    OUTPUT_PARAMETER,
    predictions_from_response,
    request_from_instances,
)


def grpc_predict(
    endpoint_id: str,
    instances: Sequence[Any],
    parameters: Mapping[str, Any] | None = None,
    *,
    endpoints_dir: str | Path,
    timeout_s: float = vertex.PREDICT_TIMEOUT_S,
) -> dict[str, Any]:
    """``endpoints.predict`` over the endpoint's gRPC port (its router restarted first when its
    process is gone); see the module docstring.

    Raises:
        EndpointInputError: unknown endpoint, parameters other than a string ``output``, or
            instances that do not fit the model's features.
        EndpointError: the endpoint has no gRPC port, or the call failed (no deployed model
            with traffic serves gRPC, the model refused the instances, ...): the message has
            the status and its details.
    """
    output = _output(parameters)
    endpoint = running_endpoint(endpoint_id, endpoints_dir)
    if not endpoint.grpc_port:
        raise EndpointError(
            f"endpoint {endpoint.endpoint_id} has no gRPC port: its router (pid "
            f"{endpoint.router_pid}) was started before routers served gRPC. Stop it (kill "
            f"{endpoint.router_pid}); the next call starts it again with one"
        )
    metadata = ((ENDPOINT_KEY, endpoint.endpoint_id),)
    timeout = timeout_s + CLIENT_MARGIN_S
    with grpc.insecure_channel(endpoint.grpc_target, options=CHANNEL_LIMITS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            described, call = stub.ModelMetadata.with_call(
                pb.ModelMetadataRequest(), metadata=metadata, timeout=timeout
            )
            deployed_id = str(dict(call.initial_metadata())[DEPLOYED_MODEL_KEY])
            request = _request(instances, described, output)
            answer = stub.ModelInfer(
                request, metadata=(*metadata, (DEPLOYED_MODEL_KEY, deployed_id)), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise EndpointError(
                f"endpoint {endpoint.endpoint_id} over gRPC ({endpoint.grpc_target}) answered "
                f"{exc.code().name}: {exc.details()}"
            ) from exc
    try:
        predictions = predictions_from_response(answer)
    except ValueError as exc:
        raise EndpointError(
            f"deployed model {deployed_id} of endpoint {endpoint.endpoint_id} answered a "
            f"ModelInferResponse that is not our server's: {exc}"
        ) from exc
    deployed = _deployed_model(endpoint, deployed_id, endpoints_dir)
    return {
        "predictions": predictions,
        "deployedModelId": deployed.id,
        "model": deployed.model_name,
        "modelVersionId": deployed.version_id,
        "modelDisplayName": deployed.model_display_name,
    }


def _output(parameters: Mapping[str, Any] | None) -> str | None:
    """The ``output`` parameter, the one a ``ModelInferRequest`` carries."""
    if parameters is None:
        return None
    others = sorted(set(parameters) - {OUTPUT_PARAMETER})
    output = parameters.get(OUTPUT_PARAMETER)
    if others or not isinstance(output, str | None):
        raise EndpointInputError(
            f"over gRPC the only parameter is {OUTPUT_PARAMETER!r}, a string (e.g. "
            f'{{"{OUTPUT_PARAMETER}": "label"}}); got {dict(parameters)}'
        )
    return output


def _request(
    instances: Sequence[Any], described: pb.ModelMetadataResponse, output: str | None
) -> pb.ModelInferRequest:
    """The instances as tensors of the model's inputs (``BYTES``: a categorical feature)."""
    features = [
        {"name": tensor.name, "kind": "categorical" if tensor.datatype == "BYTES" else "numeric"}
        for tensor in described.inputs
    ]
    try:
        return request_from_instances(instances, features, output=output)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        names = [feature["name"] for feature in features]
        raise EndpointInputError(
            f"the instances do not fit model {described.name!r}'s inputs {names} "
            f"({type(exc).__name__}: {exc}): over gRPC an instance is an object keyed by "
            "feature name or an array in feature order, numbers for the numeric features"
        ) from exc


def _deployed_model(
    endpoint: LocalEndpoint, deployed_id: str, endpoints_dir: str | Path
) -> LocalDeployedModel:
    """The deployed model that answered, from the record (read again when it was deployed
    after the record was read)."""
    found = endpoint.find_deployed_model(deployed_id)
    return found or get_endpoint(endpoint.endpoint_id, endpoints_dir).deployed_model(deployed_id)
