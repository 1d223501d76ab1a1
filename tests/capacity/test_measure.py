"""Capacity measured on the project's serving image with a trained penguins model, as a
container under two CPU limits.

Halving the CPU limit must about halve what the server serves (within 30 % of the limits'
ratio of 2): the figures measure the limit, not the host or the load generator. The server's
request merging is turned off for this (``SERVING_MAX_BATCH_INSTANCES=1``): with it, each
doubling of concurrency also makes the merged batches larger and cheaper per instance, so
throughput keeps growing up to the concurrency cap and depends on the concurrency reached as
much as on the CPU; without it the steps end on a plateau that only the CPU sets. Each
measurement records a cold start, CPU seconds per step that the limit bounds, a peak memory
inside the memory limit and a clean SIGTERM stop, and takes under 90 s. A memory limit the
server cannot start under gives a failed measurement that says so, not an exception.

``pytest -m container -s tests/capacity`` prints the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.capacity import load
from components.capacity.machines import GIB, MIB
from components.capacity.measure import (
    DEFAULT_BUDGET_S,
    Measurement,
    MeasurementError,
    host_cpus,
    measure_image,
)
from components.runners import Engine

pytestmark = pytest.mark.container

LIMITS = (1.0, 0.5)
MEMORY = 1 * GIB
SLO_MS = 1000.0  # generous: the steps end when throughput stops growing, not on latency
INSTANCES = 5
STEP_S = 1.0
MAX_SECONDS = 90.0
NO_MERGING = {"SERVING_MAX_BATCH_INSTANCES": "1", "SERVING_PREDICTOR": "scikit-learn"}
"""Each request its own scikit-learn call: a plateau the server's CPU sets (the compiled graph
is so fast that the load generator, not the limit, would set it)."""
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def measured(
    engine: Engine, serving_image_without_model: str, model_dir: Path
) -> dict[float, Measurement]:
    """The serving image measured under each CPU limit in ``LIMITS``."""
    if host_cpus() < 2:
        pytest.skip("measuring needs 2 CPUs: one for the server's limit, one for the load")
    results = {}
    for cpus in LIMITS:
        started = time.monotonic()
        results[cpus] = measure_image(
            serving_image_without_model,
            model_dir,
            cpus=cpus,
            memory_bytes=MEMORY,
            latency_slo_ms=SLO_MS,
            instances_per_request=INSTANCES,
            engine=engine,
            step_seconds=STEP_S,
            env=NO_MERGING,
        )
        TIMINGS[f"measure at {cpus:g} CPU (start to removal)"] = time.monotonic() - started
        report(results[cpus])
    return results


def report(m: Measurement) -> None:
    """The figures, for ``pytest -s``."""
    if m.failure:
        print(f"\ncpus={m.cpus:g}: {m.failure}")
        return
    print(
        f"\ncpus={m.cpus:g}: {m.instances_per_s:.0f} instances/s at best, cold start "
        f"{m.cold_start_s} s ({m.startup_cpu_seconds} CPU s), peak memory "
        f"{(m.peak_memory_bytes or 0) / MIB:.0f} MiB, throttled {m.throttled_seconds} s, "
        f"stop {m.stop_s} s, ended by {m.ended_by}, {m.seconds:.1f} s in all"
    )
    for s in m.steps:
        cpu = f"{s.server_cpu_seconds / s.seconds:.2f}" if s.server_cpu_seconds else "-"
        print(
            f"  c={s.concurrency:<3} {s.requests_per_s:7.1f} req/s  p50 {s.p50_ms} ms  "
            f"p99 {s.p99_ms} ms  errors {s.errors}  CPUs used {cpu}"
        )


def test_half_the_cpu_serves_about_half(measured: dict[float, Measurement]) -> None:
    full, half = measured[1.0].instances_per_s, measured[0.5].instances_per_s
    assert full > 0 and half > 0, measured
    ratio = full / half
    assert 2.0 * 0.7 <= ratio <= 2.0 * 1.3, f"{full:.0f} / {half:.0f} instances/s = {ratio:.2f}"


@pytest.mark.parametrize("cpus", LIMITS)
def test_a_measurement_records_start_load_use_and_stop(
    measured: dict[float, Measurement], cpus: float
) -> None:
    m = measured[cpus]
    assert m.failure == "" and m.usage_note == ""
    assert m.seconds < MAX_SECONDS and m.seconds < DEFAULT_BUDGET_S + 5
    assert m.cold_start_s is not None and 0 < m.cold_start_s < m.seconds
    assert m.startup_cpu_seconds is not None and m.startup_cpu_seconds > 0
    assert m.warm_up is not None and m.warm_up.requests > 0

    assert m.steps and m.steps[0].concurrency == 1
    assert m.ended_by == load.ENDED_BY_SATURATION  # a plateau, found within the budget
    assert all(s.errors == 0 for s in m.steps), [s.first_error for s in m.steps]
    best = m.best
    assert best is not None and best.instances_per_s == m.instances_per_s
    assert best.instances_per_s == pytest.approx(INSTANCES * best.requests_per_s)
    for step in m.steps:
        assert step.server_cpu_seconds is not None and step.server_cpu_seconds > 0
        # The cgroup counts no more CPU than the limit allows (10 % for the step's edges).
        assert step.server_cpu_seconds <= cpus * step.seconds * 1.1 + 0.05
    busiest = max(s.server_cpu_seconds or 0.0 for s in m.steps) / best.seconds
    assert busiest >= 0.6 * cpus, "the server never came near its CPU limit: not CPU-bound"

    assert m.peak_memory_bytes is not None and 50 * MIB < m.peak_memory_bytes <= MEMORY
    assert m.throttled_seconds is not None and m.throttled_seconds > 0
    assert m.stop_s is not None and m.stop_s < 10
    assert (m.exit_code, m.oom_killed, m.oom_kills) == (0, False, 0)


def test_a_measurement_gives_the_capacity_the_advice_reads(
    measured: dict[float, Measurement],
) -> None:
    m = measured[0.5]
    capacity = m.capacity(scale=2.0)
    assert (capacity.cpu_limit, capacity.scale, capacity.memory_limit_bytes) == (0.5, 2.0, MEMORY)
    assert capacity.cold_start_s == m.cold_start_s
    assert [s.concurrency for s in capacity.steps] == [s.concurrency for s in m.steps]
    assert capacity.peak_memory_bytes <= (m.peak_memory_bytes or 0)
    assert capacity.peak_memory_bytes > 50 * MIB
    step = capacity.steps[0]
    utilization = capacity.cpu_utilization(step)
    assert utilization is not None and 0 < utilization <= 1.15


def test_a_memory_limit_it_cannot_start_under_is_a_failed_measurement(
    engine: Engine, serving_image_without_model: str, model_dir: Path
) -> None:
    started = time.monotonic()
    m = measure_image(
        serving_image_without_model,
        model_dir,
        cpus=1.0,
        memory_bytes=48 * MIB,
        latency_slo_ms=SLO_MS,
        instances_per_request=INSTANCES,
        engine=engine,
        budget_seconds=25,
        step_seconds=STEP_S,
    )
    TIMINGS["measure under 48 MiB"] = time.monotonic() - started
    print(f"\n48 MiB: {m.failure} (oom_killed={m.oom_killed})")
    assert m.failure.startswith("never served under cpus=1, memory_bytes=50,331,648")
    # Either the whole container is killed (exit 137) or only its workers, in a loop.
    assert "exited with code 137" in m.failure or m.oom_kills
    assert m.oom_killed or "for lack of memory" in m.failure
    assert (m.cold_start_s, m.steps, m.best, m.instances_per_s) == (None, (), None, 0.0)
    assert time.monotonic() - started < 25 + 5
    with pytest.raises(MeasurementError, match="no capacity to advise on: never served"):
        m.capacity()


def test_settings_it_cannot_measure_under_are_refused_before_a_start(
    penguins_model_dir: Path, tmp_path: Path
) -> None:
    never = "localhost/train-to-serve-never-started:test"  # refused before any engine call

    def measure(model_dir: Path, cpus: float, budget_seconds: float = 60) -> Measurement:
        return measure_image(
            never,
            model_dir,
            cpus=cpus,
            memory_bytes=MEMORY,
            latency_slo_ms=SLO_MS,
            instances_per_request=1,
            budget_seconds=budget_seconds,
        )

    with pytest.raises(MeasurementError, match=r"leaves .* to the load generator, which needs 1"):
        measure(penguins_model_dir, cpus=host_cpus())
    with pytest.raises(MeasurementError, match="budget_seconds=5 leaves no room"):
        measure(penguins_model_dir, cpus=0.5, budget_seconds=5)
    with pytest.raises(MeasurementError, match="has no readable sample instances"):
        measure(tmp_path, cpus=0.5)
