"""The release steps against the endpoint an artifact names: the deployed version's autoscaling
(``autoscale_version``) on Vertex, captured offline as the SDK sends it, and on a local
endpoint, where nothing scales."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from google.api_core import exceptions

from components.release import LOCAL_PREFIX, autoscale_version, targets
from components.rollout import RolloutError
from components.stand_ins import LocalEndpoint
from components.stand_ins.endpoint_records import record_path, write_record
from tests.rollout.test_vertex import (
    ENDPOINT,
    MODEL,
    FakeVertex,
    deployed,
    install,
    live_endpoint,
    on_machine,
    vertex_endpoint,
)

NEW = f"{MODEL}@3"


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> FakeVertex:
    """Version 2 serving at 90%; version 3 deployed twice (the newer one just now, at 10%)."""
    return install(
        monkeypatch,
        live_endpoint(
            {"v2": 90, "v3": 10},
            on_machine(deployed("v3-first", "3", 1)),
            on_machine(deployed("v2", "2", 2), (3, 3)),
            on_machine(deployed("v3", "3", 3)),
        ),
    )


def test_the_target_goes_to_the_newest_deployment_of_the_version(canary) -> None:
    note = autoscale_version(vertex_endpoint(), NEW, min_replicas=2, max_replicas=6, cpu_target=45)

    ((kind, request),) = canary.sent()
    assert kind == "mutate" and request.deployed_model.id == "v3"
    resources = request.deployed_model.dedicated_resources
    assert (resources.min_replica_count, resources.max_replica_count) == (2, 6)
    assert [spec.target for spec in resources.autoscaling_metric_specs] == [45]
    assert note == f"v3 ({NEW}) on {ENDPOINT}: 2 to 6 replicas at 45% CPU utilization"


def test_a_target_of_zero_sends_nothing_and_says_vertex_s_default_applies(canary) -> None:
    note = autoscale_version(vertex_endpoint(), NEW, min_replicas=2, max_replicas=6, cpu_target=0)

    assert canary.sent() == []
    assert note == (
        "no CPU target asked for (0): Vertex's default (60%) applies between the deploy's replicas"
    )


def test_a_local_endpoint_is_left_as_it_is(tmp_path: Path) -> None:
    endpoints_dir = tmp_path / "endpoints"
    local = LocalEndpoint("7300000000000000011", "local", "2026-02-01T12:00:00Z")
    write_record(endpoints_dir, local)
    record = record_path(endpoints_dir, local.endpoint_id)
    before = record.read_bytes()
    name = local.resource_name
    assert name.startswith(LOCAL_PREFIX)
    endpoint, _ = targets(
        {"resourceName": name, "endpointsDir": str(endpoints_dir)},
        {"registryDir": str(tmp_path / "registry")},
    )

    note = autoscale_version(endpoint, NEW, min_replicas=2, max_replicas=6, cpu_target=45)

    assert endpoint.resource_name == name
    assert note == (
        f"{name} is local: it runs one container per deployed model (no replicas, no "
        "autoscaling), so there is nothing to set"
    )
    assert record.read_bytes() == before


@pytest.mark.parametrize("cpu_target", [-1, 101])
def test_a_target_out_of_range_is_refused_before_any_request(canary, cpu_target) -> None:
    with pytest.raises(RolloutError, match=f"CPU target {cpu_target}%: a whole percent from 1"):
        autoscale_version(
            vertex_endpoint(), NEW, min_replicas=1, max_replicas=1, cpu_target=cpu_target
        )

    assert canary.sent() == []


def test_a_version_not_on_the_endpoint_is_refused_before_any_change(canary) -> None:
    with pytest.raises(RolloutError, match=f"{MODEL}@4 is not deployed on {ENDPOINT}"):
        autoscale_version(
            vertex_endpoint(), f"{MODEL}@4", min_replicas=1, max_replicas=2, cpu_target=50
        )

    assert canary.sent() == []


def test_a_failed_change_is_logged_and_the_rollout_goes_on(
    canary, caplog: pytest.LogCaptureFixture
) -> None:
    canary.operation_error = exceptions.FailedPrecondition("quota exceeded")

    with caplog.at_level(logging.ERROR):
        note = autoscale_version(
            vertex_endpoint(), NEW, min_replicas=2, max_replicas=6, cpu_target=45
        )

    assert note.startswith("autoscaling NOT set: ")
    assert "the operation ops/1 failed (400 quota exceeded)" in note
    assert "v3 (" in note and "serves at Vertex's default target (60%); the rollout goes on" in note
    assert [
        record.getMessage() for record in caplog.records if record.levelno == logging.ERROR
    ] == [note]
