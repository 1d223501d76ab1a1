"""The rollout's endpoint and registry on Vertex: the aiplatform SDK's own requests, captured
offline at the GAPIC clients' methods and at the HTTP adapter under the SDK's authorized
session (no credentials, no network), field by field."""

from __future__ import annotations

import concurrent.futures
import json
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud.aiplatform_v1.services.endpoint_service import EndpointServiceClient
from google.cloud.aiplatform_v1.services.model_service import ModelServiceClient
from google.cloud.aiplatform_v1.types import (
    AutoscalingMetricSpec,
    DedicatedResources,
    DeployedModel,
    Endpoint,
    GetEndpointRequest,
    ImportModelEvaluationRequest,
    MachineSpec,
    MergeVersionAliasesRequest,
    Model,
    ModelEvaluation,
    MutateDeployedModelRequest,
    UndeployModelRequest,
    UpdateEndpointRequest,
)
from google.protobuf import json_format
from hypothesis import example, given
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from components import traffic
from components.rollout import (
    SMOKE_SHARE_PERCENT,
    RolloutError,
    VertexEndpoint,
    VertexRegistry,
    deploy_traffic_split,
)

LOCATION = "europe-west4"
PARENT = f"projects/my-project/locations/{LOCATION}"
ENDPOINT = f"{PARENT}/endpoints/7"
MODEL = f"{PARENT}/models/42"
RAW_PREDICT_URL = f"https://{LOCATION}-aiplatform.googleapis.com/v1/{ENDPOINT}:rawPredict"
DEPLOYED_MODEL_HEADER = "X-Vertex-AI-Deployed-Model-Id"
SERVICE_FIELDS = ("retry", "timeout", "metadata")
MUTABLE = {
    f"dedicated_resources.{name}"
    for name in (
        "min_replica_count",
        "max_replica_count",
        "required_replica_count",
        "autoscaling_metric_specs",
    )
} | {"disable_container_logging"}
"""What ``MutateDeployedModel`` changes of a ``DeployedModel`` (its reference); Vertex refuses
a mask naming anything else."""
CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"


def _request(kind: Any, request: Any, fields: dict[str, Any]) -> Any:
    """The request a GAPIC method builds from ``request`` or its flattened fields."""
    if request is not None:
        return kind(request)
    return kind(**{k: v for k, v in fields.items() if k not in SERVICE_FIELDS and v is not None})


def _operation(result: Any = None, error: Exception | None = None, waits: list | None = None):
    """A long-running operation, as far as the SDK (and ``set_autoscaling``) reads one: its
    ``result`` returns ``result`` or raises ``error``, and notes each wait in ``waits``."""

    def wait(**kwargs: Any) -> Any:
        if waits is not None:
            waits.append(kwargs)
        if error is not None:
            raise error
        return result

    return SimpleNamespace(operation=SimpleNamespace(name="ops/1"), result=wait)


class FakeVertex:
    """One region's endpoint and model services with Vertex's checks, and every request they
    got, in order (``requests``: (kind, request))."""

    def __init__(self, *endpoints: Endpoint) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self.requests: list[tuple[str, Any]] = []
        self.evaluations = 0
        self.answered_by: str | None = None
        """The deployed model that answers rawPredict; the largest share when None."""
        self.transport_error: Exception | None = None
        self.hosts: list[str] = []
        self.refusal: Exception | None = None
        """What ``mutate_deployed_model`` raises at once (the service refuses the request)."""
        self.operation_error: Exception | None = None
        """What its operation raises when waited for (it failed, or was not done in time)."""
        self.waits: list[dict[str, Any]] = []

    def sent(self, *kinds: str) -> list[tuple[str, Any]]:
        """The requests that change something or predict (gets left out), in order."""
        wanted = kinds or (
            "update",
            "undeploy",
            "mutate",
            "merge_aliases",
            "import_evaluation",
            "predict",
        )
        return [(kind, request) for kind, request in self.requests if kind in wanted]

    def get_endpoint(self, client, request=None, **fields):
        request = _request(GetEndpointRequest, request, fields)
        self.requests.append(("get", request))
        if request.name not in self.endpoints:
            raise exceptions.NotFound(f"endpoint {request.name}")
        return Endpoint(self.endpoints[request.name])  # a copy, as from the wire

    def update_endpoint(self, client, request=None, **fields):
        request = _request(UpdateEndpointRequest, request, fields)
        self.requests.append(("update", request))
        live = self.endpoints[request.endpoint.name]
        if list(request.update_mask.paths) != ["traffic_split"]:
            raise exceptions.InvalidArgument(f"unexpected mask {request.update_mask.paths}")
        split = dict(request.endpoint.traffic_split)
        deployed = {d.id for d in live.deployed_models}
        if set(split) - deployed or (deployed and sum(split.values()) != 100):
            raise exceptions.InvalidArgument(f"traffic split {split}")
        live.traffic_split = split
        return Endpoint(live)

    def undeploy_model(self, client, request=None, **fields):
        request = _request(UndeployModelRequest, request, fields)
        self.requests.append(("undeploy", request))
        live = self.endpoints[request.endpoint]
        if request.traffic_split:  # Vertex: a non-empty split replaces the endpoint's
            live.traffic_split = dict(request.traffic_split)
        kept = [d for d in live.deployed_models if d.id != request.deployed_model_id]
        if kept and live.traffic_split.get(request.deployed_model_id, 0):
            raise exceptions.FailedPrecondition("the deployed model still has traffic")
        del live.deployed_models[:]
        live.deployed_models.extend(kept)
        live.traffic_split = {
            key: share for key, share in live.traffic_split.items() if key in {d.id for d in kept}
        }
        return _operation()

    def mutate_deployed_model(self, client, request=None, **fields):
        request = _request(MutateDeployedModelRequest, request, fields)
        self.requests.append(("mutate", request))
        self.hosts.append(client.api_endpoint)
        if self.refusal is not None:
            raise self.refusal
        live = self.endpoints[request.endpoint]
        paths = list(request.update_mask.paths)
        if not paths or set(paths) - MUTABLE:
            raise exceptions.InvalidArgument(f"update_mask {paths}: only {sorted(MUTABLE)}")
        target = {d.id: d for d in live.deployed_models}.get(request.deployed_model.id)
        if target is None:
            raise exceptions.NotFound(f"deployed model {request.deployed_model.id!r}")
        if self.operation_error is None:  # Vertex applies the masked fields only
            sent = request.deployed_model.dedicated_resources
            for path in paths:
                name = path.removeprefix("dedicated_resources.")
                setattr(target.dedicated_resources, name, getattr(sent, name))
        return _operation(DeployedModel(target), self.operation_error, self.waits)

    def merge_version_aliases(self, client, request=None, **fields):
        request = _request(MergeVersionAliasesRequest, request, fields)
        self.requests.append(("merge_aliases", request))
        self.hosts.append(client.api_endpoint)
        return Model(name=request.name, version_aliases=request.version_aliases)

    def import_model_evaluation(self, client, request=None, **fields):
        request = _request(ImportModelEvaluationRequest, request, fields)
        self.requests.append(("import_evaluation", request))
        self.hosts.append(client.api_endpoint)
        self.evaluations += 1
        imported = ModelEvaluation(request.model_evaluation)
        imported.name = f"{request.parent}/evaluations/{self.evaluations}"
        return imported

    def send(self, adapter, request, **kwargs):
        """``HTTPAdapter.send``: what the authorized session puts on the wire."""
        self.requests.append(("predict", SimpleNamespace(prepared=request, **kwargs)))
        if self.transport_error is not None:
            raise self.transport_error
        live = self.endpoints[ENDPOINT]
        split = dict(live.traffic_split)
        answered_by = self.answered_by or max(split, key=lambda key: split[key])
        response = requests.Response()
        response.status_code, response.reason = 200, "OK"
        response._content = json.dumps({"predictions": ["Adelie"]}).encode()
        response.headers = CaseInsensitiveDict(
            {"Content-Type": "application/json", DEPLOYED_MODEL_HEADER: answered_by}
        )
        response.url, response.request = request.url, request
        return response


def install(monkeypatch: pytest.MonkeyPatch, *endpoints: Endpoint) -> FakeVertex:
    """``FakeVertex`` in place of the services (the test packages' fixtures call this)."""
    fake = FakeVertex(*endpoints)
    methods = {
        EndpointServiceClient: (
            "get_endpoint",
            "update_endpoint",
            "undeploy_model",
            "mutate_deployed_model",
        ),
        ModelServiceClient: ("merge_version_aliases", "import_model_evaluation"),
    }
    for client, names in methods.items():
        for name in names:
            method = getattr(fake, name)
            monkeypatch.setattr(client, name, lambda c, *a, _m=method, **k: _m(c, *a, **k))
    monkeypatch.setattr(HTTPAdapter, "send", lambda adapter, r, **k: fake.send(adapter, r, **k))
    return fake


def deployed(id_: str, version: str, day: int, model: str = MODEL) -> DeployedModel:
    created = datetime(2026, 2, day, 12, tzinfo=timezone.utc)
    return DeployedModel(id=id_, model=model, model_version_id=version, create_time=created)


def on_machine(model: DeployedModel, replicas: tuple[int, int] = (1, 1)) -> DeployedModel:
    """``model`` on dedicated resources, as GCPC's deploy leaves it: a machine type, the
    replica range, no autoscaling metric (Vertex's default target)."""
    model.dedicated_resources = DedicatedResources(
        machine_spec=MachineSpec(machine_type="n1-standard-2"),
        min_replica_count=replicas[0],
        max_replica_count=replicas[1],
    )
    return model


def live_endpoint(split: dict[str, int], *models: DeployedModel) -> Endpoint:
    models = models or tuple(deployed(key, str(n), n) for n, key in enumerate(split, 1))
    return Endpoint(
        name=ENDPOINT,
        display_name="train-to-serve",
        create_time=datetime(2026, 1, 1, tzinfo=timezone.utc),
        deployed_models=list(models),
        traffic_split=split,
    )


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch):
    return lambda *endpoints: install(monkeypatch, *endpoints)


def vertex_endpoint() -> VertexEndpoint:
    return VertexEndpoint(ENDPOINT, credentials=AnonymousCredentials())


def vertex_registry() -> VertexRegistry:
    return VertexRegistry("my-project", LOCATION, credentials=AnonymousCredentials())


# --- reads -------------------------------------------------------------------------------------


def test_deployed_models_are_read_from_the_resource(service) -> None:
    fake = service(
        live_endpoint(
            {"old": 90, "new": 10},
            deployed("old", "2", 1),
            deployed("new", "3", 2, model=f"{MODEL}@3"),
        )
    )
    endpoint = vertex_endpoint()
    assert fake.requests == []  # nothing is read before it is asked for

    old, new = endpoint.deployed_models()

    assert endpoint.resource_name == ENDPOINT
    assert (old.id, old.model, old.version_id) == ("old", MODEL, "2")
    assert (new.id, new.model, new.version_id) == ("new", MODEL, "3")  # no @3 in .model
    assert new.version_name == f"{MODEL}@3"
    assert old.create_time == "2026-02-01T12:00:00.000000000Z"
    assert old.create_time < new.create_time  # fixed width: strings order as times do
    assert {(kind, request.name) for kind, request in fake.requests} == {("get", ENDPOINT)}


def test_each_read_asks_the_service_again(service) -> None:
    fake = service(live_endpoint({"old": 100}))
    endpoint = vertex_endpoint()
    assert endpoint.traffic_split() == {"old": 100}

    fake.endpoints[ENDPOINT].deployed_models.append(deployed("new", "3", 3))
    fake.endpoints[ENDPOINT].traffic_split = {"old": 80, "new": 20}  # another step's change

    assert endpoint.traffic_split() == {"old": 80, "new": 20}
    assert [d.id for d in endpoint.deployed_models()] == ["old", "new"]


# --- set_traffic -------------------------------------------------------------------------------


def test_set_traffic_sends_an_update_of_the_traffic_split_only(service) -> None:
    fake = service(live_endpoint({"old": 90, "new": 10}))
    endpoint = vertex_endpoint()

    endpoint.set_traffic({"new": 100})

    ((kind, request),) = fake.sent()
    assert kind == "update" and isinstance(request, UpdateEndpointRequest)
    assert request.endpoint.name == ENDPOINT
    assert dict(request.endpoint.traffic_split) == {"new": 100}  # "old" not carried over
    assert list(request.update_mask.paths) == ["traffic_split"]
    assert endpoint.traffic_split() == {"new": 100}


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"new": 100, "gone": 0}, "'gone', which is not deployed on the endpoint"),
        ({"old": 80, "new": 10}, "adds up to 90%, not 100%"),
        ({"old": 50.5, "new": 49.5}, "each share is a whole percent from 0 to 100"),
        ({"old": 120, "new": -20}, "each share is a whole percent from 0 to 100"),
    ],
)
def test_a_split_vertex_would_refuse_is_refused_before_any_request(service, split, message) -> None:
    fake = service(live_endpoint({"old": 90, "new": 10}))

    with pytest.raises(traffic.TrafficSplitError, match=message):
        vertex_endpoint().set_traffic(split)

    assert fake.sent() == []


def test_an_empty_split_on_an_empty_endpoint_sends_nothing(service) -> None:
    fake = service(live_endpoint({}))

    vertex_endpoint().set_traffic({})

    assert fake.sent() == []


# --- undeploy ----------------------------------------------------------------------------------


def test_undeploy_sends_the_split_with_its_share_given_back_in_proportion(service) -> None:
    fake = service(live_endpoint({"a": 70, "b": 20, "c": 10}))
    endpoint = vertex_endpoint()
    before = endpoint.traffic_split()  # in the order the proto map gives its keys

    endpoint.undeploy("c")

    ((kind, request),) = fake.sent()
    assert kind == "undeploy" and isinstance(request, UndeployModelRequest)
    assert request.endpoint == ENDPOINT and request.deployed_model_id == "c"
    # the SDK computes the split itself (Endpoint._unallocate_traffic) and leaves "c" out:
    # 70 and 20 of 90 are 77.8 and 22.2; the percent left over goes to the first key of the
    # map, which is the proto map's order, not the endpoint's
    sent = dict(request.traffic_split)
    assert sent in ({"a": 78, "b": 22}, {"a": 77, "b": 23})
    expected = traffic.without_model(before, "c")
    assert sent == {key: share for key, share in expected.items() if key != "c"}
    assert endpoint.traffic_split() == sent
    assert [d.id for d in endpoint.deployed_models()] == ["a", "b"]


def test_undeploying_a_model_without_traffic_sends_the_split_unchanged(service) -> None:
    fake = service(live_endpoint({"new": 100}, deployed("old", "2", 1), deployed("new", "3", 2)))

    vertex_endpoint().undeploy("old")

    ((_, request),) = fake.sent()
    assert request.deployed_model_id == "old"
    assert dict(request.traffic_split) == {"new": 100}


def test_undeploying_the_last_model_sends_no_split_and_leaves_it_empty(service) -> None:
    fake = service(live_endpoint({"only": 100}))
    endpoint = vertex_endpoint()

    endpoint.undeploy("only")

    ((_, request),) = fake.sent()
    assert request.deployed_model_id == "only" and dict(request.traffic_split) == {}
    assert endpoint.traffic_split() == {} and endpoint.deployed_models() == []


@pytest.mark.parametrize(
    ("deployed_id", "message"),
    [
        ("new", "serves 100% of .* set the traffic to the others first"),
        ("gone", "it is not deployed on .* \\(deployed: old, new\\)"),
    ],
)
def test_undeploy_refuses_what_vertex_would_before_any_request(
    service, deployed_id, message
) -> None:
    fake = service(live_endpoint({"new": 100}, deployed("old", "2", 1), deployed("new", "3", 2)))

    with pytest.raises(RolloutError, match=message):
        vertex_endpoint().undeploy(deployed_id)

    assert fake.sent() == []


# --- set_autoscaling ---------------------------------------------------------------------------


@pytest.fixture
def autoscaled(service) -> FakeVertex:
    """Version 2 serving at 90% on 3 to 3 replicas, version 3 just deployed at 10% on 1 to 1."""
    return service(
        live_endpoint(
            {"old": 90, "new": 10},
            on_machine(deployed("old", "2", 1), (3, 3)),
            on_machine(deployed("new", "3", 2)),
        )
    )


def test_set_autoscaling_sends_the_replicas_and_the_cpu_target_under_their_mask(
    autoscaled,
) -> None:
    from components.rollout.vertex import MUTATE_TIMEOUT_S

    vertex_endpoint().set_autoscaling("new", min_replicas=2, max_replicas=7, cpu_target=45)

    ((kind, request),) = autoscaled.sent()
    assert kind == "mutate" and isinstance(request, MutateDeployedModelRequest)
    assert request.endpoint == ENDPOINT
    assert request.deployed_model.id == "new"
    resources = request.deployed_model.dedicated_resources
    assert (resources.min_replica_count, resources.max_replica_count) == (2, 7)
    ((spec,),) = [list(resources.autoscaling_metric_specs)]
    assert (spec.metric_name, spec.target) == (CPU_METRIC, 45)
    assert list(request.update_mask.paths) == [
        "dedicated_resources.min_replica_count",
        "dedicated_resources.max_replica_count",
        "dedicated_resources.autoscaling_metric_specs",
    ]
    assert not resources.machine_spec.machine_type  # not mutable: not sent
    assert autoscaled.hosts == [f"{LOCATION}-aiplatform.googleapis.com"]  # the SDK's client
    assert autoscaled.waits == [{"timeout": MUTATE_TIMEOUT_S}]  # the operation waited for
    old, new = autoscaled.endpoints[ENDPOINT].deployed_models
    assert (
        new.dedicated_resources.min_replica_count,
        new.dedicated_resources.max_replica_count,
    ) == (2, 7)
    assert list(new.dedicated_resources.autoscaling_metric_specs) == [
        AutoscalingMetricSpec(metric_name=CPU_METRIC, target=45)
    ]
    assert new.dedicated_resources.machine_spec.machine_type == "n1-standard-2"
    assert old.dedicated_resources.max_replica_count == 3  # the others untouched
    assert not old.dedicated_resources.autoscaling_metric_specs
    assert dict(autoscaled.endpoints[ENDPOINT].traffic_split) == {"old": 90, "new": 10}


def test_the_cpu_metric_is_the_capacity_advice_s() -> None:
    from components.capacity import CPU_UTILIZATION_METRIC, DEFAULT_TARGET_UTILIZATION
    from components.vertex import CPU_UTILIZATION_METRIC as VERTEX_METRIC

    assert CPU_UTILIZATION_METRIC == VERTEX_METRIC == CPU_METRIC
    assert DEFAULT_TARGET_UTILIZATION == 60


@pytest.mark.parametrize(
    ("deployed_id", "change", "message"),
    [
        ("gone", {}, "it is not deployed there \\(deployed: old, new\\)"),
        ("new", {"min_replicas": 0}, "min_replicas 0; Vertex keeps at least 1 replica"),
        ("new", {"max_replicas": 1, "min_replicas": 2}, "max_replicas 1 is under min_replicas 2"),
        ("new", {"cpu_target": 0}, "CPU target 0%; Vertex takes a whole percent from 1 to 100"),
        ("new", {"cpu_target": 101}, "CPU target 101%; Vertex takes a whole percent from 1"),
    ],
)
def test_set_autoscaling_refuses_what_vertex_would_before_any_request(
    autoscaled, deployed_id, change, message
) -> None:
    values = {"min_replicas": 1, "max_replicas": 4, "cpu_target": 50, **change}

    with pytest.raises(RolloutError, match=message) as refused:
        vertex_endpoint().set_autoscaling(deployed_id, **values)

    assert str(refused.value).endswith("nothing was sent")
    assert autoscaled.sent() == []


def test_set_autoscaling_refuses_a_model_without_dedicated_resources(service) -> None:
    fake = service(live_endpoint({"auto": 100}))  # no machine type of its own

    with pytest.raises(RolloutError, match="does not run on dedicated resources"):
        vertex_endpoint().set_autoscaling("auto", min_replicas=1, max_replicas=2, cpu_target=50)

    assert fake.sent() == []


@pytest.mark.parametrize(
    ("refusal", "operation_error", "message"),
    [
        (
            exceptions.PermissionDenied("aiplatform.endpoints.deploy denied"),
            None,
            "Vertex refused MutateDeployedModel \\(403 aiplatform.endpoints.deploy denied\\)",
        ),
        (
            None,
            exceptions.FailedPrecondition("quota exceeded for n1-standard-2"),
            "the operation ops/1 failed \\(400 quota exceeded for n1-standard-2\\)",
        ),
        (
            None,
            concurrent.futures.TimeoutError("Operation did not complete within the timeout."),
            "the operation ops/1 was not done within 1800 s; it may still finish",
        ),
    ],
)
def test_a_refused_or_failed_mutation_is_raised_with_what_happened(
    autoscaled, refusal, operation_error, message
) -> None:
    autoscaled.refusal, autoscaled.operation_error = refusal, operation_error

    with pytest.raises(RolloutError, match=message) as failed:
        vertex_endpoint().set_autoscaling("new", min_replicas=2, max_replicas=7, cpu_target=45)

    assert str(failed.value).startswith(f"set the autoscaling of new on {ENDPOINT}: ")
    assert [kind for kind, _ in autoscaled.sent()] == ["mutate"]
    new = autoscaled.endpoints[ENDPOINT].deployed_models[1]
    assert new.dedicated_resources.max_replica_count == 1  # unchanged


# --- registry ----------------------------------------------------------------------------------


def test_move_alias_merges_the_alias_into_the_version(service) -> None:
    fake = service()

    vertex_registry().move_alias(f"{MODEL}@3", "default")

    ((kind, request),) = fake.sent()
    assert kind == "merge_aliases" and isinstance(request, MergeVersionAliasesRequest)
    assert request.name == f"{MODEL}@3"
    assert list(request.version_aliases) == ["default"]
    assert fake.hosts == [f"{LOCATION}-aiplatform.googleapis.com"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (MODEL, "name a version \\(...models/ID@VERSION\\), not only the model"),
        (
            "projects/my-project/locations/us-central1/models/42@3",
            "is in us-central1, the registry in europe-west4",
        ),
        ("projects/my-project/models/42@3", "expected projects/P/locations/L/models/ID@VERSION"),
    ],
)
def test_move_alias_refuses_a_name_that_is_no_version_here(service, name, message) -> None:
    fake = service()

    with pytest.raises(RolloutError, match=message):
        vertex_registry().move_alias(name, "default")

    assert fake.sent() == []


EVALUATION = {
    "displayName": "penguins evaluation",
    "metricsSchemaUri": (
        "gs://google-cloud-aiplatform/schema/modelevaluation/classification_metrics_1.0.0.yaml"
    ),
    "metrics": {"auPrc": 0.98, "logLoss": 0.07, "confusionMatrix": {"rows": [[30, 1], [0, 25]]}},
    "metadata": {"pipeline_job_id": "run-1", "evaluation_dataset_path": ["gs://b/test.csv"]},
}


def test_import_evaluation_sends_the_evaluation_to_the_version(service) -> None:
    fake = service()

    name = vertex_registry().import_evaluation("42@3", EVALUATION)  # short names work too

    ((kind, request),) = fake.sent()
    assert kind == "import_evaluation" and isinstance(request, ImportModelEvaluationRequest)
    assert request.parent == f"{MODEL}@3"  # as GCPC's import evaluation component passes it
    sent = request.model_evaluation
    assert sent.display_name == "penguins evaluation"
    assert sent.metrics_schema_uri == EVALUATION["metricsSchemaUri"]
    as_json = json_format.MessageToDict(ModelEvaluation.pb(sent))
    assert as_json["metrics"] == EVALUATION["metrics"]
    assert as_json["metadata"] == EVALUATION["metadata"]
    assert name == f"{MODEL}@3/evaluations/1"
    assert fake.hosts == [f"{LOCATION}-aiplatform.googleapis.com"]


def test_an_evaluation_not_in_rest_form_is_refused_before_any_request(service) -> None:
    fake = service()

    with pytest.raises(RolloutError, match="not a ModelEvaluation in REST form"):
        vertex_registry().import_evaluation(f"{MODEL}@3", {"metric": {"auPrc": 0.9}})

    assert fake.sent() == []


# --- raw_predict -------------------------------------------------------------------------------


def test_raw_predict_posts_the_body_and_says_which_model_answered(service) -> None:
    fake = service(live_endpoint({"old": 90, "new": 10}))
    fake.answered_by = "new"
    body = b'{"instances": [[39.1, 18.7]]}'

    exchange = vertex_endpoint().raw_predict("new", body, timeout_s=12.5)

    ((kind, sent),) = fake.sent()
    assert kind == "predict"
    assert sent.prepared.method == "POST" and sent.prepared.url == RAW_PREDICT_URL
    assert sent.prepared.body == body
    assert sent.prepared.headers["Content-Type"] == "application/json"
    assert sent.timeout == 12.5
    assert exchange.ok and exchange.reason == "OK" and exchange.error == ""
    assert exchange.json() == {"predictions": ["Adelie"]}
    assert exchange.headers["x-vertex-ai-deployed-model-id"] == "new"  # names in lowercase
    assert exchange.body == body and exchange.method == "POST"
    assert f"/v1/{ENDPOINT}:rawPredict" in exchange.route and "new" in exchange.route
    assert exchange.elapsed_s >= 0


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (requests.ConnectionError("connection reset by peer"), "ConnectionError: connection reset"),
        (requests.ReadTimeout("read timed out"), "no answer within 3.0 s (ReadTimeout)"),
    ],
)
def test_a_transport_error_is_recorded_not_raised(service, error, text) -> None:
    fake = service(live_endpoint({"new": 100}))
    fake.transport_error = error

    exchange = vertex_endpoint().raw_predict("new", b"{}", timeout_s=3.0)

    assert exchange.status is None and not exchange.ok
    assert text in exchange.error
    assert exchange.response_text().startswith("no HTTP response: ")


# --- the deploy's traffic split ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "percent", "expected"),
    [
        ({}, 10, {"0": 100}),  # Vertex refuses less than 100 on an empty endpoint
        ({}, 0, {"0": 100}),
        ({"A": 100}, 10, {"A": 90, "0": 10}),
        ({"A": 100}, 0, {"A": 99, "0": SMOKE_SHARE_PERCENT}),
        ({"A": 70, "B": 30}, 0, {"A": 70, "B": 29, "0": 1}),
        ({"A": 60, "B": 40}, 100, {"0": 100}),
    ],
)
def test_deploy_traffic_split(current, percent, expected) -> None:
    split = deploy_traffic_split(current, list(current), percent)

    assert split == expected
    assert all(type(share) is int for share in split.values())
    assert traffic.check_split(split, [*current, traffic.DEPLOYING]) == split


def test_a_model_at_zero_percent_could_not_answer_the_smoke_test() -> None:
    assert SMOKE_SHARE_PERCENT == 1
    assert deploy_traffic_split({"A": 100}, ["A"], 0)[traffic.DEPLOYING] == 1


@pytest.mark.parametrize(
    ("current", "deployed_ids", "percent", "message"),
    [
        ({"A": 100}, ["A"], 101, "0 to 100 percent, not 101"),
        ({"A": 100}, ["A"], -1, "0 to 100 percent, not -1"),
        ({"A": 90}, ["A"], 10, "adds up to 90%"),
        ({}, ["A"], 10, "adds up to 0%"),
        ({"B": 100}, ["A"], 10, "'B', which is not deployed"),
    ],
)
def test_deploy_traffic_split_refusals(current, deployed_ids, percent, message) -> None:
    with pytest.raises(traffic.TrafficSplitError, match=message):
        deploy_traffic_split(current, deployed_ids, percent)


@st.composite
def splits(draw: st.DrawFn) -> dict[str, int]:
    """A valid traffic split of 1 to 6 deployed models (some may be at 0)."""
    count = draw(st.integers(1, 6))
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=count - 1, max_size=count - 1)))
    bounds = [0, *cuts, 100]
    return {str(1000 + n): bounds[n + 1] - bounds[n] for n in range(count)}


@given(splits(), st.integers(0, 100))
@example({"A": 30, "B": 70}, 10)
def test_deploy_traffic_split_is_the_sdks_allocation(current: dict[str, int], percent) -> None:
    expected = aiplatform.Endpoint._allocate_traffic(dict(current), max(percent, 1))

    assert deploy_traffic_split(current, list(current), percent) == expected


@given(splits(), st.integers(0, 100))
def test_deploy_traffic_split_is_one_vertex_accepts(current: dict[str, int], percent) -> None:
    split = deploy_traffic_split(current, list(current), percent)

    assert traffic.check_split(split, [*current, traffic.DEPLOYING]) == split
    assert split[traffic.DEPLOYING] == max(percent, SMOKE_SHARE_PERCENT)
