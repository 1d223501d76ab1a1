"""One capacity step: measure an image under a machine type's limits, advise, report.

``measure_capacity`` is what the ``capacity_check`` component and ``compile.py capacity``
run: the machine's usable share (or the part of it this host can give beside the load
generator, scaled up), the stepped load (``measure``), the advice for deploy and batch
(``advice``), and the report (``report``). An image killed for lack of memory under the
machine's limit is started once more without it, to learn what it needs: the refusal then
names a machine that fits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components import vertex
from components.capacity.advice import (
    BatchAdvice,
    Capacity,
    CapacityError,
    DeployAdvice,
    batch_advice,
    deploy_advice,
)
from components.capacity.machines import machine_type, measurable_share, usable
from components.capacity.measure import (
    DEFAULT_BUDGET_S,
    LOAD_GENERATOR_CPUS,
    Measurement,
    host_cpus,
    measure_image,
    sample_instances,
)
from components.capacity.report import ReportFiles, capacity_document, plot_png, write_report
from components.runners import Engine, ProcessRunner, detect_runner

OOM_EXIT_CODE = 137
"""SIGKILL's exit status: what the kernel's OOM killer leaves (podman on cgroup v1 reports no
``OOMKilled``)."""
PROBE_MEMORY_FACTOR = 8
"""Without the machine's limit, the second start may use up to this many times it."""


@dataclass(frozen=True)
class CapacityResult:
    """The step's outcome: the ``capacity.json`` document, the files, and the advice."""

    document: dict[str, Any]
    files: ReportFiles
    deploy: DeployAdvice | None
    batch: BatchAdvice | None

    @property
    def refusal(self) -> str | None:
        """Why the image must not go to this machine type (memory, startup window)."""
        return self.document.get("refusal")


def cannot_measure_here(machine: str = vertex.MACHINE_TYPE) -> str | None:
    """Why this host cannot measure for ``machine`` (process mode: no cgroup of its own to
    limit; too few CPUs beside the load generator), or None. A run then goes on without the
    capacity step's advice rather than failing. ``ValueError`` for an unknown machine type."""
    if isinstance(detect_runner(), ProcessRunner):
        return (
            "process mode runs the server as a local process, with no cgroup of its own to "
            "give a machine type's CPU and memory"
        )
    target = machine_type(machine)  # an unknown name is the caller's error: raised
    try:
        measurable_share(target, host_cpus(), LOAD_GENERATOR_CPUS)
    except ValueError as exc:
        return str(exc)
    return None


def _killed_for_memory(measurement: Measurement) -> bool:
    return (
        measurement.oom_killed
        or measurement.exit_code == OOM_EXIT_CODE
        or bool(measurement.oom_kills)
    )


def measure_capacity(
    image: str,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    machine: str = vertex.MACHINE_TYPE,
    latency_slo_ms: float = 200.0,
    expected_qps: float = 10.0,
    instances_per_request: int = 1,
    batch_instances: int = 100_000,
    batch_deadline_minutes: float = 60.0,
    cpus: float | None = None,
    engine: Engine | None = None,
    budget_seconds: float = DEFAULT_BUDGET_S,
    env: Mapping[str, str] | None = None,
) -> CapacityResult:
    """Measure ``image`` serving ``model_dir`` as on ``machine`` and write the report to
    ``out_dir`` (``capacity.json``, ``capacity.md``, ``capacity.png``).

    ``cpus`` measures under a smaller CPU limit than the host allows (scaled up the same
    way). The server runs one worker per whole vCPU of the limit, as it would on the machine.

    Raises:
        ValueError: an unknown machine type, or a ``cpus`` this host cannot give.
        CapacityError: the server never served (and was not killed for lack of memory).
    """
    target = machine_type(machine)
    share = measurable_share(target, host_cpus(), LOAD_GENERATOR_CPUS)
    limit = share.cpu_limit
    if cpus is not None:
        if not 0 < cpus <= share.cpu_limit:
            raise ValueError(
                f"cpus={cpus:g}: this host can give the server at most {share.cpu_limit:g} "
                f"vCPU of {machine} beside the load generator"
            )
        limit = cpus
    scale = round(usable(target).cpus / limit, 3)
    settings = {"SERVING_WORKERS": str(max(1, math.floor(limit))), **(env or {})}
    common: dict[str, Any] = {
        "cpus": limit,
        "latency_slo_ms": latency_slo_ms,
        "instances_per_request": instances_per_request,
        "engine": engine,
        "machine_type": machine,
        "env": settings,
    }
    measurement = measure_image(
        image,
        model_dir,
        memory_bytes=share.memory_limit_bytes,
        budget_seconds=budget_seconds,
        **common,
    )
    note = ""
    if measurement.cold_start_s is None and _killed_for_memory(measurement):
        # Learn what it needs: the same start without the machine's memory limit, briefly.
        probe = measure_image(
            image,
            model_dir,
            memory_bytes=share.memory_limit_bytes * PROBE_MEMORY_FACTOR,
            budget_seconds=min(budget_seconds, 30.0),
            step_seconds=1.0,
            max_concurrency=1,
            **common,
        )
        note = (
            f"killed for lack of memory under {machine}'s "
            f"{share.memory_limit_bytes / 2**30:.2f} GiB ({measurement.failure}); the figures "
            f"are from a second start with {PROBE_MEMORY_FACTOR}x that limit"
        )
        measurement = replace(probe, memory_bytes=share.memory_limit_bytes)
    if measurement.cold_start_s is None:
        raise CapacityError(f"{image} never served under {machine}'s limits: {measurement.failure}")
    capacity: Capacity = measurement.capacity(scale=scale)
    deploy = _advise(lambda: deploy_advice(capacity, expected_qps, latency_slo_ms=latency_slo_ms))
    instance_bytes = max(len(json.dumps(i).encode()) for i in sample_instances(model_dir))
    batch = _advise(
        lambda: batch_advice(
            capacity,
            instance_bytes=instance_bytes,
            instances_total=batch_instances,
            deadline_minutes=batch_deadline_minutes,
            max_body_bytes=vertex.SHARED_ENDPOINT_MAX_BODY_BYTES,
        )
    )
    document = capacity_document(
        capacity, latency_slo_ms=latency_slo_ms, deploy=deploy, batch=batch
    )
    document["expected_qps"] = expected_qps
    document["memory_probe"] = note or None
    files = write_report(Path(out_dir), document, plot_png(capacity, latency_slo_ms=latency_slo_ms))
    return CapacityResult(document, files, deploy, batch)


def _advise(make: Any) -> Any:
    """The advice, or None when the measurement gives no basis for it (the document says
    why: ``no_best_step_reason``)."""
    try:
        return make()
    except CapacityError:
        return None
