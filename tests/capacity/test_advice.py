"""The advice's arithmetic: the best step, replicas and autoscaling, batch size, refusal."""

import dataclasses
import math

import pytest
from google.cloud.aiplatform_v1.types import DedicatedResources
from google.protobuf import json_format
from google_cloud_pipeline_components.v1.batch_predict_job import ModelBatchPredictOp

from components import vertex
from components.capacity import (
    BATCH_EFFICIENCY,
    BATCH_STARTUP_ALLOWANCE_S,
    CPU_UTILIZATION_METRIC,
    MEMORY_HEADROOM,
    PEAK_FACTOR,
    STARTUP_WINDOW_S,
    TIMEOUT_SAFETY,
    Capacity,
    CapacityError,
    Step,
    batch_advice,
    best_step,
    deploy_advice,
    machine_type,
    no_step_reason,
    refusal,
    smallest_fitting,
    usable,
)
from components.capacity.advice import (
    REQUEST_ENVELOPE_BYTES,
    floor_significant,
    request_body_bytes,
    round_significant,
)
from components.capacity.machines import GIB, MIB
from tests.capacity import capacity, step

STEPS = [
    step(1, 40.0, 30.0),
    step(2, 75.0, 45.0),
    step(4, 120.0, 80.0),
    step(8, 130.0, 210.0),
    step(16, 90.0, 900.0, errors=3),
]


# -- the best step ---------------------------------------------------------------------


def test_the_best_step_is_the_fastest_within_the_slo_and_without_errors() -> None:
    assert best_step(STEPS, 100.0) == STEPS[2]
    assert best_step(STEPS, 250.0) == STEPS[3]
    assert best_step(STEPS, None) == STEPS[3]  # the step with errors never counts
    assert best_step(STEPS, 1000.0) == STEPS[3]


def test_a_tie_goes_to_the_lower_concurrency() -> None:
    tied = [step(4, 100.0, 50.0), step(2, 100.0, 40.0)]
    assert best_step(tied, 100.0).concurrency == 2


def test_no_step_says_why() -> None:
    assert best_step(STEPS, 10.0) is None
    reason = no_step_reason(STEPS, 10.0)
    assert "10 ms latency SLO" in reason and "30 ms at concurrency 1" in reason
    failing = [step(1, 5.0, 20.0, errors=2), step(2, 0.0, None, errors=9)]
    assert best_step(failing, None) is None
    assert "every load step had errors" in no_step_reason(failing, None)
    assert "no load step was measured" in no_step_reason([], 100.0)


# -- replicas and autoscaling ------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected_qps", "scale", "target"),
    [(10.0, 1.0, 60), (500.0, 1.0, 60), (500.0, 3.5, 60), (1234.5, 1.0, 80), (77.0, 2.0, 25)],
)
def test_replicas_follow_the_rule(expected_qps: float, scale: float, target: int) -> None:
    measured = capacity(STEPS, scale=scale)
    advice = deploy_advice(measured, expected_qps, latency_slo_ms=100.0, target_utilization=target)
    at_target = STEPS[2].requests_per_s * scale * target / 100
    assert advice.min_replica_count == max(1, math.ceil(expected_qps / at_target))
    assert advice.max_replica_count == max(
        advice.min_replica_count, math.ceil(PEAK_FACTOR * expected_qps / at_target)
    )
    assert advice.per_replica_qps == round_significant(STEPS[2].requests_per_s * scale)
    assert advice.best_concurrency == 4
    # the min replicas at the target carry the expected load; one fewer would not
    assert advice.min_replica_count * at_target >= expected_qps
    if advice.min_replica_count > 1:
        assert (advice.min_replica_count - 1) * at_target < expected_qps


def test_an_exact_multiple_is_not_rounded_up() -> None:
    measured = capacity([step(1, 100.0, 10.0)])
    advice = deploy_advice(measured, 120.0, latency_slo_ms=50.0, target_utilization=60)
    assert (advice.min_replica_count, advice.max_replica_count) == (2, 4)
    assert deploy_advice(measured, 0.01, latency_slo_ms=50.0).min_replica_count == 1


@pytest.mark.parametrize("cpu_share", [1.0, 0.8, 0.5, 0.3])
def test_the_cpu_target_holds_replicas_at_the_throughput_target(cpu_share: float) -> None:
    measured = capacity([step(2, 100.0, 20.0, cpu_share=cpu_share, cpu_limit=1.5)], cpu_limit=1.5)
    advice = deploy_advice(measured, 50.0, latency_slo_ms=50.0, target_utilization=60)
    assert advice.cpu_utilization == pytest.approx(cpu_share)
    assert advice.autoscaling_target == round(60 * cpu_share)
    assert any("weak signal" in note for note in advice.notes) == (cpu_share < 0.5)


def test_without_cpu_time_the_target_is_the_one_asked_for() -> None:
    measured = capacity([step(2, 100.0, 20.0, cpu_share=None)])
    advice = deploy_advice(measured, 50.0, latency_slo_ms=50.0, target_utilization=70)
    assert advice.cpu_utilization is None and advice.autoscaling_target == 70
    assert any("not measured" in note for note in advice.notes)


def test_dedicated_resources_are_vertex_s_message() -> None:
    advice = deploy_advice(capacity(STEPS), 300.0, latency_slo_ms=100.0)
    message = json_format.ParseDict(advice.dedicated_resources(), DedicatedResources()._pb)
    assert message.machine_spec.machine_type == "n1-standard-2"
    assert message.min_replica_count == advice.min_replica_count
    assert message.max_replica_count == advice.max_replica_count
    spec = message.autoscaling_metric_specs[0]
    assert (spec.metric_name, spec.target) == (CPU_UTILIZATION_METRIC, advice.autoscaling_target)


def test_scaled_throughput_and_a_slow_start_are_noted() -> None:
    measured = capacity(STEPS, scale=4.0, cpu_limit=1.0, cold_start_s=vertex.SLOW_STARTUP_S + 1)
    notes = " ".join(deploy_advice(measured, 100.0, latency_slo_ms=100.0).notes)
    assert "x 4" in notes and "upper bound" in notes
    assert "startupProbe" in notes


def test_deploy_advice_refuses_bad_input_and_an_unmet_slo() -> None:
    measured = capacity(STEPS)
    with pytest.raises(CapacityError, match="latency SLO"):
        deploy_advice(measured, 10.0, latency_slo_ms=10.0)
    with pytest.raises(ValueError, match="expected_qps=0"):
        deploy_advice(measured, 0, latency_slo_ms=100.0)
    for target in (0, 101):
        with pytest.raises(ValueError, match=f"target_utilization={target}"):
            deploy_advice(measured, 10.0, latency_slo_ms=100.0, target_utilization=target)


# -- batch size and replicas ---------------------------------------------------------------


def test_a_batch_of_large_instances_is_limited_by_the_body() -> None:
    measured = capacity([step(8, 2000.0, 50.0)])
    limit = vertex.SHARED_ENDPOINT_MAX_BODY_BYTES
    advice = batch_advice(
        measured,
        instance_bytes=10_000,
        instances_total=1_000_000,
        deadline_minutes=120,
        max_body_bytes=limit,
    )
    fits = (limit - REQUEST_ENVELOPE_BYTES) // 10_001
    assert advice.limited_by == "body"
    assert advice.batch_size == floor_significant(fits)
    assert advice.body_bytes == request_body_bytes(advice.batch_size, 10_000) <= limit
    assert request_body_bytes(fits + 1, 10_000) > limit


def test_a_batch_on_a_slow_model_is_limited_by_the_timeout() -> None:
    # 4 in flight at 8 instances/s: an instance takes 0.5 s of a request
    measured = capacity([step(4, 8.0, 900.0)])
    advice = batch_advice(
        measured,
        instance_bytes=200,
        instances_total=100_000,
        deadline_minutes=600,
        max_body_bytes=vertex.MAX_FORWARDED_BODY_BYTES,
    )
    instance_s = 4 / 8.0
    assert advice.limited_by == "timeout"
    assert advice.batch_size == math.floor(vertex.PREDICT_TIMEOUT_S / TIMEOUT_SAFETY / instance_s)
    assert advice.request_s * TIMEOUT_SAFETY <= vertex.PREDICT_TIMEOUT_S
    assert (advice.batch_size + 1) * instance_s * TIMEOUT_SAFETY > vertex.PREDICT_TIMEOUT_S


def test_a_small_job_is_one_batch() -> None:
    measured = capacity([step(8, 2000.0, 50.0)])
    advice = batch_advice(
        measured, instance_bytes=100, instances_total=57, deadline_minutes=60, max_body_bytes=10**6
    )
    assert (advice.limited_by, advice.batch_size, advice.replica_count) == ("instances", 57, 1)


@pytest.mark.parametrize(
    ("instances_total", "deadline_minutes", "scale"),
    [(10_000_000, 60, 1.0), (10_000_000, 60, 2.5), (50_000_000, 30, 1.0), (1_000, 600, 1.0)],
)
def test_batch_replicas_meet_the_deadline(
    instances_total: int, deadline_minutes: float, scale: float
) -> None:
    measured = capacity([step(4, 300.0, 40.0, instances_per_request=10)], scale=scale)
    advice = batch_advice(
        measured,
        instance_bytes=300,
        instances_total=instances_total,
        deadline_minutes=deadline_minutes,
        max_body_bytes=vertex.SHARED_ENDPOINT_MAX_BODY_BYTES,
    )
    per_replica = 3000.0 * scale * BATCH_EFFICIENCY
    run_s = deadline_minutes * 60 - BATCH_STARTUP_ALLOWANCE_S - measured.cold_start_s
    assert advice.replica_count == max(1, math.ceil(instances_total / (per_replica * run_s)))
    assert advice.estimated_minutes <= deadline_minutes * 1.001
    if advice.replica_count > 1:
        assert instances_total / (per_replica * (advice.replica_count - 1)) > run_s
    assert advice.batch_predict_arguments() == {
        "manual_batch_tuning_parameters_batch_size": advice.batch_size,
        "starting_replica_count": advice.replica_count,
        "max_replica_count": advice.replica_count,
    }


def test_batch_arguments_are_gcpc_s_parameter_names() -> None:
    advice = batch_advice(
        capacity([step(1, 10.0, 50.0)]),
        instance_bytes=10,
        instances_total=10,
        deadline_minutes=60,
        max_body_bytes=10**6,
    )
    assert set(advice.batch_predict_arguments()) <= set(ModelBatchPredictOp.component_spec.inputs)


def test_batch_advice_refuses_what_no_batch_size_fixes() -> None:
    fast = capacity([step(1, 10.0, 50.0)])
    with pytest.raises(CapacityError, match="body-limit rule: one instance of 2000000 bytes"):
        batch_advice(
            fast,
            instance_bytes=2_000_000,
            instances_total=10,
            deadline_minutes=60,
            max_body_bytes=vertex.SHARED_ENDPOINT_MAX_BODY_BYTES,
        )
    with pytest.raises(CapacityError, match="deadline rule"):
        batch_advice(
            fast, instance_bytes=10, instances_total=10, deadline_minutes=5, max_body_bytes=10**6
        )
    glacial = capacity([step(2, 0.02, 60_000.0)])  # 100 s per instance
    with pytest.raises(CapacityError, match=r"timeout rule: one instance takes about 100\.0 s"):
        batch_advice(
            glacial,
            instance_bytes=10,
            instances_total=10,
            deadline_minutes=60,
            max_body_bytes=10**6,
        )


def test_an_instance_over_the_budget_but_within_the_timeout_goes_alone() -> None:
    slow = capacity([step(1, 1 / 30, 30_000.0)])  # 30 s per instance
    advice = batch_advice(
        slow, instance_bytes=10, instances_total=100, deadline_minutes=600, max_body_bytes=10**6
    )
    assert advice.batch_size == 1 and advice.limited_by == "timeout"
    assert any("close to the timeout" in note for note in advice.notes)


# -- refusal -------------------------------------------------------------------------------


def test_an_image_that_fits_is_not_refused() -> None:
    assert refusal(capacity(STEPS), machine_type("n1-standard-2")) is None


def test_memory_over_the_usable_share_is_refused_naming_a_machine_that_fits() -> None:
    machine = machine_type("n1-highcpu-2")
    room = usable(machine).memory_bytes
    peak = int(room / MEMORY_HEADROOM) + 10 * MIB  # fits the machine, not with the headroom
    measured = capacity([step(1, 10.0, 50.0, peak_memory_bytes=peak)], machine=machine.name)
    message = refusal(measured, machine)
    need = math.ceil(peak * MEMORY_HEADROOM)
    fits = smallest_fitting(need, family="n1-highcpu", min_vcpus=machine.vcpus)
    assert message is not None and message.startswith("memory rule:")
    assert f"{room / GIB:.2f} GiB usable" in message
    assert fits.name in message and usable(fits).memory_bytes >= need
    assert refusal(measured, fits) is None


def test_memory_beyond_the_family_names_another_family() -> None:
    machine = machine_type("e2-highcpu-32")
    peak = 40 * GIB
    measured = capacity([step(1, 10.0, 50.0, peak_memory_bytes=peak)], machine=machine.name)
    message = refusal(measured, machine)
    fits = smallest_fitting(math.ceil(peak * MEMORY_HEADROOM), min_vcpus=32)
    assert message is not None and f"is {fits.name} " in message


def test_a_cold_start_over_the_startup_window_is_refused() -> None:
    measured = capacity(STEPS, cold_start_s=STARTUP_WINDOW_S + 30)
    message = refusal(measured, machine_type("n1-standard-2"))
    assert message is not None and message.startswith("startup-window rule:")
    assert f"{STARTUP_WINDOW_S + 30:g} s" in message and "startup_deadline_s" in message
    assert refusal(measured, machine_type("n1-standard-2"), startup_window_s=300) is None


def test_both_rules_are_reported_together() -> None:
    measured = capacity(
        [step(1, 10.0, 50.0, peak_memory_bytes=5 * GIB)],
        machine="n1-highcpu-2",
        cold_start_s=STARTUP_WINDOW_S * 2,
    )
    message = refusal(measured, machine_type("n1-highcpu-2")) or ""
    assert "memory rule" in message and "startup-window rule" in message


# -- the measured input --------------------------------------------------------------------


def test_the_measurement_refuses_impossible_values() -> None:
    with pytest.raises(ValueError, match=r"Capacity\.scale=0\.5"):
        capacity(STEPS, scale=0.5)
    with pytest.raises(ValueError, match=r"Step\.concurrency=0"):
        step(0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"Step\.errors=-1"):
        step(1, 1.0, 1.0, errors=-1)


def test_capacity_reads_back_what_it_wrote_and_names_stray_fields() -> None:
    measured = capacity(STEPS)
    assert Capacity.from_dict(measured.as_dict()) == measured
    data = measured.as_dict()
    data["steps"][0]["latency"] = 1
    with pytest.raises(ValueError, match=r"Step data: missing \[\], unknown \['latency'\]"):
        Capacity.from_dict(data)
    assert measured.peak_memory_bytes == max(s.peak_memory_bytes for s in STEPS)
    assert dataclasses.replace(measured, steps=()).peak_memory_bytes == 0


def test_significant_rounding() -> None:
    assert round_significant(1234.5) == 1230
    assert round_significant(0.012345) == 0.0123
    assert [floor_significant(n) for n in (7, 99, 149, 1234, 150_000)] == [
        7,
        99,
        140,
        1200,
        150_000,
    ]
    assert isinstance(STEPS[0], Step)
