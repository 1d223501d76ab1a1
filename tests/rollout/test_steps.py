"""A rollout's promotion and rollback on Vertex: ``steps`` over ``VertexEndpoint`` and
``VertexRegistry``, every request the SDK sends captured in order (no credentials, no
network)."""

from __future__ import annotations

import pytest

from components.rollout import (
    DEFAULT_ALIAS,
    PROMOTE_CANARY,
    RolloutError,
    find_deployed,
    promote,
    roll_back,
)
from tests.rollout.test_vertex import (
    ENDPOINT,
    MODEL,
    FakeVertex,
    deployed,
    install,
    live_endpoint,
    vertex_endpoint,
    vertex_registry,
)

NEW = f"{MODEL}@3"


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> FakeVertex:
    """Version 3 just deployed at 10% next to version 2 (at 90%) and version 1 (at 0%)."""
    return install(
        monkeypatch,
        live_endpoint(
            {"v2": 90, "v3": 10},
            deployed("v1", "1", 1),
            deployed("v2", "2", 2),
            deployed("v3", "3", 3),
        ),
    )


def test_promote_sends_traffic_then_the_alias_then_undeploys_the_others(canary) -> None:
    outcome = promote(vertex_endpoint(), vertex_registry(), NEW, traffic_before={"v2": 100})

    (update, merge, *undeploys) = canary.sent()
    assert update[0] == "update" and dict(update[1].endpoint.traffic_split) == {"v3": 100}
    assert list(update[1].update_mask.paths) == ["traffic_split"]
    assert merge[0] == "merge_aliases" and merge[1].name == NEW
    assert list(merge[1].version_aliases) == [DEFAULT_ALIAS]
    assert [(kind, r.deployed_model_id) for kind, r in undeploys] == [
        ("undeploy", "v1"),
        ("undeploy", "v2"),
    ]
    assert all(dict(r.traffic_split) == {"v3": 100} for _, r in undeploys)
    assert outcome.to_json() == {
        "action": "promoted",
        "deployedModelId": "v3",
        "trafficBefore": {"v2": 100},
        "trafficAfter": {"v3": 100},
        "aliasMoved": True,
        "undeployed": ["v1", "v2"],
        "kept": [],
        "notes": [],
    }
    assert [d.id for d in canary.endpoints[ENDPOINT].deployed_models] == ["v3"]


def test_keep_previous_keeps_the_others_deployed_at_zero(canary) -> None:
    outcome = promote(
        vertex_endpoint(), vertex_registry(), NEW, traffic_before={"v2": 100}, keep_previous=True
    )

    assert [kind for kind, _ in canary.sent()] == ["update", "merge_aliases"]
    assert outcome.action == "promoted" and outcome.alias_moved
    assert outcome.kept == ["v1", "v2"] and outcome.undeployed == []
    assert outcome.traffic_after == {"v3": 100}
    assert "keep_previous is set" in outcome.notes[0]


def test_a_canary_promotion_sends_nothing(canary) -> None:
    outcome = promote(
        vertex_endpoint(), vertex_registry(), NEW, traffic_before={"v2": 100},
        how=PROMOTE_CANARY,
    )  # fmt: skip

    assert canary.sent() == []
    assert outcome.action == "canary" and not outcome.alias_moved
    assert outcome.traffic_after == {"v2": 90, "v3": 10} and outcome.kept == ["v1", "v2"]
    assert outcome.notes == [
        "kept at 10% (promote=canary); the 'default' alias stays on the version that held it"
    ]


def test_an_unknown_promote_choice_is_refused_before_any_request(canary) -> None:
    with pytest.raises(RolloutError, match="promote 'half': use one of all, canary"):
        promote(vertex_endpoint(), vertex_registry(), NEW, traffic_before={}, how="half")
    assert canary.sent() == []


def test_roll_back_restores_the_split_then_undeploys_the_new_model(canary) -> None:
    outcome = roll_back(vertex_endpoint(), NEW, traffic_before={"v2": 100, "v1": 0})

    (update, undeploy) = canary.sent()
    assert update[0] == "update" and dict(update[1].endpoint.traffic_split) == {"v2": 100, "v1": 0}
    assert undeploy[0] == "undeploy" and undeploy[1].deployed_model_id == "v3"
    assert dict(undeploy[1].traffic_split) == {"v2": 100, "v1": 0}  # v3 already at nothing
    assert outcome.action == "rolled back" and outcome.undeployed == ["v3"]
    assert outcome.traffic_before == {"v2": 100, "v1": 0}
    assert outcome.traffic_after == {"v2": 100, "v1": 0} and outcome.notes == []
    assert not [kind for kind, _ in canary.sent() if kind == "merge_aliases"]


def test_roll_back_gives_the_share_to_the_others_when_the_old_split_is_gone(canary) -> None:
    outcome = roll_back(vertex_endpoint(), NEW, traffic_before={"v0": 100})  # v0 undeployed since

    (update, undeploy) = canary.sent()
    assert dict(update[1].endpoint.traffic_split) == {"v2": 100}
    assert undeploy[1].deployed_model_id == "v3"
    assert outcome.traffic_after == {"v2": 100}
    assert "names models no longer deployed" in outcome.notes[0]


def test_roll_back_of_the_only_model_undeploys_it_and_leaves_the_split_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = install(monkeypatch, live_endpoint({"v3": 100}, deployed("v3", "3", 3)))

    outcome = roll_back(vertex_endpoint(), NEW, traffic_before={})

    ((kind, request),) = fake.sent()
    assert kind == "undeploy" and request.deployed_model_id == "v3"
    assert outcome.traffic_after == {} and outcome.undeployed == ["v3"]


def test_find_deployed_takes_the_newest_deployment_of_the_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    install(
        monkeypatch,
        live_endpoint(
            {"first": 50, "second": 50},
            deployed("second", "3", 9),
            deployed("first", "3", 4),
            deployed("other", "3", 20, model=MODEL.replace("/42", "/43")),
        ),
    )
    endpoint = vertex_endpoint()

    assert find_deployed(endpoint, NEW).id == "second"
    assert find_deployed(endpoint, MODEL).id == "second"  # no version: any version of 42
    with pytest.raises(RolloutError) as refused:
        find_deployed(endpoint, f"{MODEL}@4")
    assert str(refused.value) == (
        f"{MODEL}@4 is not deployed on {ENDPOINT}: the deploy step did not leave it there "
        "(see its log)"
    )
