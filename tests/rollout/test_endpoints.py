"""The endpoint a run deploys to, found by name or created once: the aiplatform SDK's own
requests, captured offline at the endpoint service's methods (no credentials, no network)."""

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.services.endpoint_service import EndpointServiceClient
from google.cloud.aiplatform_v1.types import DeployedModel, Endpoint, ListEndpointsRequest

from components.rollout import endpoint_uri, get_or_create_endpoint

PARENT = "projects/my-project/locations/europe-west4"
MODEL = "projects/123456/locations/europe-west4/models/42"


class FakeEndpoints:
    """The endpoint service of one region: endpoints by name, and the requests it got."""

    def __init__(self, *endpoints: Endpoint) -> None:
        self.endpoints = {e.name: e for e in endpoints}
        self.requests: list[tuple[str, object]] = []

    def list_endpoints(self, client, request=None, **_):
        request = ListEndpointsRequest(request)  # the SDK passes it as a dict
        self.requests.append(("list", request))
        wanted = request.filter.split('"')[1]
        return [e for e in self.endpoints.values() if e.display_name == wanted]

    def get_endpoint(self, client, request=None, name=None, **_):
        return self.endpoints[name or request.name]

    def create_endpoint(self, client, request=None, parent=None, endpoint=None, **_):
        self.requests.append(("create", endpoint))
        created = Endpoint(endpoint)
        created.name = f"{parent}/endpoints/{len(self.endpoints) + 1}"
        self.endpoints[created.name] = created
        return SimpleNamespace(operation=SimpleNamespace(name="ops/1"), result=lambda **_: created)

    def undeploy_model(self, client, request=None, endpoint=None, deployed_model_id=None, **_):
        self.requests.append(("undeploy", deployed_model_id))
        live = self.endpoints[endpoint]
        kept = [d for d in live.deployed_models if d.id != deployed_model_id]
        del live.deployed_models[:]
        live.deployed_models.extend(kept)
        return SimpleNamespace(operation=SimpleNamespace(name="ops/2"), result=lambda **_: None)


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch):
    def install(*endpoints: Endpoint) -> FakeEndpoints:
        fake = FakeEndpoints(*endpoints)
        for name in ("list_endpoints", "get_endpoint", "create_endpoint", "undeploy_model"):
            method = getattr(fake, name)
            monkeypatch.setattr(
                EndpointServiceClient, name, lambda c, *a, _m=method, **k: _m(c, *a, **k)
            )
        return fake

    return install


def endpoint(number: int, name: str = "train-to-serve", **fields) -> Endpoint:
    created = datetime(2026, 1, number, tzinfo=timezone.utc)
    return Endpoint(
        name=f"{PARENT}/endpoints/{number}", display_name=name, create_time=created, **fields
    )


def deployed(id_: str, version: str, day: int) -> DeployedModel:
    created = datetime(2026, 2, day, tzinfo=timezone.utc)
    return DeployedModel(id=id_, model=MODEL, model_version_id=version, create_time=created)


def test_an_endpoint_with_the_display_name_is_reused(service) -> None:
    fake = service(endpoint(2), endpoint(1), endpoint(3, "other"))

    name, created = get_or_create_endpoint(
        "train-to-serve", project="my-project", location="europe-west4",
        credentials=AnonymousCredentials(),
    )  # fmt: skip

    assert (name, created) == (f"{PARENT}/endpoints/1", False)  # the oldest of the two
    (kind, request), *_ = fake.requests
    assert kind == "list" and request.parent == PARENT
    assert request.filter == 'display_name="train-to-serve"'
    assert not [r for r in fake.requests if r[0] == "create"]


def test_an_endpoint_is_created_only_when_none_has_the_name(service) -> None:
    fake = service(endpoint(3, "other"))

    name, created = get_or_create_endpoint(
        "train-to-serve", project="my-project", location="europe-west4",
        labels={"team": "ml"}, credentials=AnonymousCredentials(),
    )  # fmt: skip

    assert created and name == f"{PARENT}/endpoints/2"
    (sent,) = [r[1] for r in fake.requests if r[0] == "create"]
    assert sent.display_name == "train-to-serve" and dict(sent.labels) == {"team": "ml"}
    assert endpoint_uri(name, "europe-west4") == (
        f"https://europe-west4-aiplatform.googleapis.com/v1/{name}"
    )
