"""Builders of measured steps and capacities for the capacity tests."""

from __future__ import annotations

from components.capacity import Capacity, Step, machine_type, usable
from components.capacity.machines import MIB


def step(
    concurrency: int,
    requests_per_s: float,
    p99_ms: float | None,
    *,
    errors: int = 0,
    duration_s: float = 10.0,
    cpu_share: float | None = 1.0,
    cpu_limit: float = 1.0,
    instances_per_request: int = 1,
    peak_memory_bytes: int = 400 * MIB,
) -> Step:
    """A step whose container used ``cpu_share`` of ``cpu_limit`` (``None``: not measured)."""
    return Step(
        concurrency=concurrency,
        duration_s=duration_s,
        requests_per_s=requests_per_s,
        instances_per_s=requests_per_s * instances_per_request,
        p50_ms=None if p99_ms is None else p99_ms / 2,
        p99_ms=p99_ms,
        errors=errors,
        cpu_seconds=None if cpu_share is None else cpu_share * duration_s * cpu_limit,
        peak_memory_bytes=peak_memory_bytes,
    )


def capacity(
    steps: list[Step],
    *,
    machine: str = "n1-standard-2",
    cpu_limit: float = 1.0,
    scale: float = 1.0,
    cold_start_s: float = 4.0,
    instances_per_request: int = 1,
) -> Capacity:
    """A capacity measured on ``machine`` (memory limit: its usable memory)."""
    return Capacity(
        machine_type=machine,
        cpu_limit=cpu_limit,
        scale=scale,
        memory_limit_bytes=usable(machine_type(machine)).memory_bytes,
        cold_start_s=cold_start_s,
        instances_per_request=instances_per_request,
        steps=tuple(steps),
    )
