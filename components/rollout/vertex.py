"""The rollout's endpoint and registry on Vertex AI (``steps.Endpoint``, ``steps.Registry``),
with the aiplatform SDK, the traffic split a new version is deployed with, and the autoscaling
of a deployed model (``VertexEndpoint.set_autoscaling``: what GCPC's deploy cannot set).

Every read goes to the service again (another step may have changed the endpoint since), and a
traffic split is checked with Vertex's rules (``traffic.check_split``) before it is sent, so a
wrong one fails here with the rule it breaks, not as a 400 from the service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import timezone
from typing import Any

from components import traffic
from components.rollout.steps import DeployedModel, RolloutError
from components.runners import Exchange
from components.vertex import CPU_UTILIZATION_METRIC

AUTOSCALING_MASK = (
    "dedicated_resources.min_replica_count",
    "dedicated_resources.max_replica_count",
    "dedicated_resources.autoscaling_metric_specs",
)
"""The ``DeployedModel`` fields ``set_autoscaling`` changes (``MutateDeployedModel``'s
``update_mask``; Vertex mutates only these, ``required_replica_count`` and
``disable_container_logging``)."""
MUTATE_TIMEOUT_S = 1800.0
"""Ours: how long ``set_autoscaling`` waits for ``MutateDeployedModel``'s operation (a higher
minimum starts replicas, which can take as long as a deploy)."""

SMOKE_SHARE_PERCENT = 1
"""The smallest share a new version is deployed with next to other models when a share of 0 is
asked for: a public endpoint routes rawPredict by the traffic split only (no request can pick
a deployed model), so a model at 0% could never answer the smoke test; at 1% it can (about one
request in a hundred reaches it)."""


def deploy_traffic_split(
    current: Mapping[str, int], deployed_ids: list[str], percent: int
) -> dict[str, int]:
    """The ``traffic_split`` for GCPC's ``ModelDeployOp``: the new model (key
    ``traffic.DEPLOYING``) at ``percent``, the others keep the rest in proportion (the SDK's
    ``Endpoint._allocate_traffic``). On an endpoint with no deployed model it takes 100 (Vertex
    refuses less); next to other models at least ``SMOKE_SHARE_PERCENT``.

    Raises:
        TrafficSplitError: ``current`` breaks Vertex's rules for ``deployed_ids``, or
            ``percent`` is not 0 to 100.
    """
    checked = traffic.check_split(current, deployed_ids)
    if not 0 <= percent <= 100:
        raise traffic.TrafficSplitError(
            f"a new model's share is 0 to 100 percent, not {percent}: set the canary percent "
            "within that"
        )
    share = max(percent, SMOKE_SHARE_PERCENT) if deployed_ids else 100
    return traffic.with_new_model(checked, share, traffic.DEPLOYING)


def _rfc3339(moment: Any) -> str:
    """A proto timestamp as fixed-width RFC 3339 in UTC (nanoseconds always written), so that
    two of them order as strings do; "" when unset."""
    if moment is None:
        return ""
    nanos = getattr(moment, "nanosecond", moment.microsecond * 1000)
    return f"{moment.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


class VertexEndpoint:
    """A live Vertex endpoint (``steps.Endpoint``) through ``aiplatform.Endpoint``."""

    def __init__(self, resource_name: str, credentials: Any = None) -> None:
        from google.cloud import aiplatform

        self._endpoint = aiplatform.Endpoint(resource_name, credentials=credentials)
        # the full name the SDK made of it; its ``resource_name`` property would get the
        # endpoint first
        self.resource_name: str = self._endpoint._gca_resource.name

    def _resource(self) -> Any:
        """The endpoint's resource as the service holds it now (``GetEndpoint``)."""
        self._endpoint._sync_gca_resource()
        return self._endpoint._gca_resource

    def deployed_models(self) -> list[DeployedModel]:
        """The models deployed now; ``model`` without its version, ``version_id`` apart."""
        return [
            DeployedModel(
                id=deployed.id,
                model=deployed.model.partition("@")[0],
                version_id=deployed.model_version_id,
                create_time=_rfc3339(deployed.create_time),
            )
            for deployed in self._resource().deployed_models
        ]

    def traffic_split(self) -> dict[str, int]:
        """Deployed model id -> percent, read from the service now."""
        return {key: int(share) for key, share in self._endpoint.traffic_split.items()}

    def set_traffic(self, split: Mapping[str, int]) -> None:
        """Replace the traffic split (``UpdateEndpoint`` with the mask ``traffic_split``); an
        empty split on an endpoint with nothing deployed sends nothing (it is already empty,
        and the SDK would send an update without a mask).

        Raises:
            TrafficSplitError: the split breaks Vertex's rules; nothing was sent.
        """
        checked = traffic.check_split(split, [d.id for d in self.deployed_models()])
        if checked:
            self._endpoint.update(traffic_split=checked)

    def undeploy(self, deployed_model_id: str) -> None:
        """Undeploy a deployed model; the SDK sends the split with its share given back to the
        others in proportion (``Endpoint._unallocate_traffic``), or none when it is the last.

        Raises:
            RolloutError: the model is not deployed here, or it holds all the traffic while
                others are deployed (Vertex would refuse: the split must add up to 100).
        """
        deployed = [d.id for d in self._resource().deployed_models]
        if deployed_model_id not in deployed:
            raise RolloutError(
                f"undeploy {deployed_model_id}: it is not deployed on {self.resource_name} "
                f"(deployed: {', '.join(deployed) or 'none'}); nothing was undeployed"
            )
        share = int(self._endpoint._gca_resource.traffic_split.get(deployed_model_id, 0))
        if share == 100 and len(deployed) > 1:
            raise RolloutError(
                f"undeploy {deployed_model_id}: it serves 100% of {self.resource_name}'s "
                "traffic and the others none, so nothing could take its share; set the traffic "
                "to the others first"
            )
        self._endpoint.undeploy(deployed_model_id)

    def set_autoscaling(
        self,
        deployed_model_id: str,
        *,
        min_replicas: int,
        max_replicas: int,
        cpu_target: int,
        timeout_s: float = MUTATE_TIMEOUT_S,
    ) -> None:
        """Scale a deployed model between ``min_replicas`` and ``max_replicas`` at
        ``cpu_target`` percent CPU utilization (``MutateDeployedModel`` with the mask
        ``AUTOSCALING_MASK``, through the SDK's own endpoint client), and wait up to
        ``timeout_s`` for its operation.

        GCPC's ``ModelDeployOp`` has no input for the target: this sets it after the deploy.

        Raises:
            RolloutError: a value Vertex would refuse (a minimum under 1, a maximum under the
                minimum, a target outside 1 to 100), a model not deployed here, or one not on
                dedicated resources: nothing was sent. Or the service refused the request, the
                operation failed, or it was not done within ``timeout_s``.
        """
        from google.api_core import exceptions
        from google.cloud.aiplatform_v1.types import (
            AutoscalingMetricSpec,
            DedicatedResources,
            MutateDeployedModelRequest,
        )
        from google.cloud.aiplatform_v1.types import DeployedModel as GapicDeployedModel
        from google.protobuf import field_mask_pb2

        what = f"set the autoscaling of {deployed_model_id} on {self.resource_name}"
        if min_replicas < 1:
            raise RolloutError(
                f"{what}: min_replicas {min_replicas}; Vertex keeps at least 1 replica of a "
                "deployed model: pass 1 or more; nothing was sent"
            )
        if max_replicas < min_replicas:
            raise RolloutError(
                f"{what}: max_replicas {max_replicas} is under min_replicas {min_replicas}: "
                "pass a maximum at least the minimum; nothing was sent"
            )
        if not 1 <= cpu_target <= 100:
            raise RolloutError(
                f"{what}: CPU target {cpu_target}%; Vertex takes a whole percent from 1 to 100 "
                "(0 in the pipeline keeps Vertex's default): pass one within that; nothing "
                "was sent"
            )
        live = {d.id: d for d in self._resource().deployed_models}
        if deployed_model_id not in live:
            raise RolloutError(
                f"{what}: it is not deployed there (deployed: {', '.join(live) or 'none'}); "
                "nothing was sent"
            )
        if "dedicated_resources" not in live[deployed_model_id]:
            raise RolloutError(
                f"{what}: it does not run on dedicated resources (a machine type of its own), "
                "and only those take an autoscaling target: deploy it with a machine type; "
                "nothing was sent"
            )
        request = MutateDeployedModelRequest(
            endpoint=self.resource_name,
            deployed_model=GapicDeployedModel(
                id=deployed_model_id,
                dedicated_resources=DedicatedResources(
                    min_replica_count=min_replicas,
                    max_replica_count=max_replicas,
                    autoscaling_metric_specs=[
                        AutoscalingMetricSpec(metric_name=CPU_UTILIZATION_METRIC, target=cpu_target)
                    ],
                ),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=list(AUTOSCALING_MASK)),
        )
        try:
            operation = self._endpoint.api_client.mutate_deployed_model(request=request)
        except exceptions.GoogleAPICallError as error:
            raise RolloutError(
                f"{what}: Vertex refused MutateDeployedModel ({error}); the deployed model "
                "keeps its replicas and target: check the values and the run's "
                "aiplatform.endpoints.deploy permission (MutateDeployedModel needs it)"
            ) from error
        name = operation.operation.name
        try:
            operation.result(timeout=timeout_s)
        except exceptions.GoogleAPICallError as error:
            raise RolloutError(
                f"{what}: the operation {name} failed ({error}); the deployed model keeps its "
                "replicas and target: see the operation's error, fix it and run again"
            ) from error
        except TimeoutError as error:  # concurrent.futures.TimeoutError is this one
            raise RolloutError(
                f"{what}: the operation {name} was not done within {timeout_s:g} s; it may "
                "still finish: look at the endpoint's deployed model before running again"
            ) from error

    def raw_predict(self, deployed_model_id: str, body: bytes, timeout_s: float) -> Exchange:
        """POST ``body`` to the endpoint's rawPredict (JSON). The traffic split picks the
        deployed model that answers, not ``deployed_model_id`` (a public endpoint has no way to
        name one): the answer's ``x-vertex-ai-deployed-model-id`` header says which did, and
        the caller sends again when it was another. A failure to get an answer (connection,
        timeout, credentials) is ``Exchange.error``, never raised."""
        import requests
        from google.auth import exceptions as auth_exceptions

        route = (
            f"/v1/{self.resource_name}:rawPredict (meant for deployed model "
            f"{deployed_model_id}; the traffic split picks the one that answers)"
        )
        exchange = Exchange("POST", route, body)
        started = time.monotonic()
        try:
            response = self._endpoint.raw_predict(
                body=body, headers={"Content-Type": "application/json"}, timeout=timeout_s
            )
        except requests.Timeout as error:
            exchange.error = f"no answer within {timeout_s} s ({type(error).__name__})"
        except requests.RequestException as error:
            exchange.error = f"{type(error).__name__}: {error}"
        except auth_exceptions.RefreshError as error:
            exchange.error = (
                f"the credentials could not be refreshed ({error}): check the service "
                "account or `gcloud auth application-default login`"
            )
        except auth_exceptions.TransportError as error:
            exchange.error = f"TransportError: {error}"
        else:
            exchange.status, exchange.reason = response.status_code, response.reason or ""
            exchange.response = response.content or b""
            exchange.headers = {name.lower(): value for name, value in response.headers.items()}
        exchange.elapsed_s = time.monotonic() - started
        return exchange


class VertexRegistry:
    """The Vertex Model Registry of one project and region (``steps.Registry``)."""

    def __init__(self, project: str, location: str, credentials: Any = None) -> None:
        self.project = project
        self.location = location
        self.credentials = credentials

    def _version_name(self, version_name: str) -> tuple[str, str]:
        """(``projects/P/locations/L/models/ID``, VERSION) of ``version_name`` (a full name
        or ``ID@VERSION``), checked to be in this registry's region."""
        model, _, version = version_name.partition("@")
        if "/" not in model:
            model = f"projects/{self.project}/locations/{self.location}/models/{model}"
        parts = model.split("/")
        if len(parts) != 6 or parts[0::2] != ["projects", "locations", "models"]:
            raise RolloutError(
                f"model {version_name!r}: expected projects/P/locations/L/models/ID@VERSION "
                "(as ModelUploadOp's artifact names it)"
            )
        if parts[3] != self.location:
            raise RolloutError(
                f"model {version_name!r} is in {parts[3]}, the registry in {self.location}: "
                "pass the location the model was uploaded to"
            )
        return model, version

    def move_alias(self, version_name: str, alias: str) -> None:
        """Give ``alias`` to the version (``MergeVersionAliases``; Vertex takes it from the
        version that held it).

        Raises:
            RolloutError: ``version_name`` names no version (``...models/ID@VERSION``).
        """
        from google.cloud import aiplatform

        model, version = self._version_name(version_name)
        if not version:
            raise RolloutError(
                f"move the {alias!r} alias to {version_name!r}: name a version "
                "(...models/ID@VERSION), not only the model"
            )
        registry = aiplatform.models.ModelRegistry(
            model, location=self.location, project=self.project, credentials=self.credentials
        )
        registry.add_version_aliases([alias], version=version)

    def import_evaluation(self, version_name: str, evaluation: Mapping[str, Any]) -> str:
        """Attach ``evaluation`` (a ``ModelEvaluation`` in REST form: ``displayName``,
        ``metricsSchemaUri``, ``metrics``, ``metadata``) to the version; its resource name.

        The parent is the version's name with ``@VERSION``, as GCPC's import evaluation
        component passes it (the model's default version without one).

        Raises:
            RolloutError: ``evaluation`` is not a ``ModelEvaluation`` in REST form.
        """
        from google.cloud import aiplatform_v1
        from google.protobuf import json_format

        model, version = self._version_name(version_name)
        parent = f"{model}@{version}" if version else model
        message = aiplatform_v1.ModelEvaluation.pb(aiplatform_v1.ModelEvaluation())
        try:
            json_format.ParseDict(json.loads(json.dumps(dict(evaluation))), message)
        except (json_format.ParseError, TypeError, ValueError) as error:
            raise RolloutError(
                f"the evaluation for {version_name} is not a ModelEvaluation in REST form "
                f"({error}): use displayName, metricsSchemaUri, metrics and metadata"
            ) from error
        client = aiplatform_v1.ModelServiceClient(
            client_options={"api_endpoint": f"{self.location}-aiplatform.googleapis.com"},
            credentials=self.credentials,
        )
        imported = client.import_model_evaluation(
            parent=parent, model_evaluation=aiplatform_v1.ModelEvaluation.wrap(message)
        )
        return imported.name
