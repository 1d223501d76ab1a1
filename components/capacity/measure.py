"""A serving image's capacity, measured under one machine type's CPU and memory limits.

``measure_image`` starts the image as Vertex AI starts it (its own entrypoint, the ``AIP_*``
variables of ``vertex.vertex_environment``, the model directory mounted read-only at
``vertex.MODEL_MOUNT`` and named by ``AIP_STORAGE_URI``), with ``--cpus`` and ``--memory``
(``runners.ServerSpec.cpus``, ``memory_bytes``). It times the cold start, from ``run`` to the
health route's first 200; warms the server up; runs ``load.stepped`` with bodies of
``instances_per_request`` instances from the model's sample; reads the container's cgroup
before and after each step (the CPU seconds the server used in it) and at the end (memory at
its peak); then stops it with SIGTERM and removes it. Start to removal stays within
``budget_seconds``: the load gets what the cold start leaves.

An image that does not become healthy under the limits (killed for lack of memory, too slow
for the budget) gives a ``Measurement`` whose ``failure`` says why: for a machine type that is
a finding, not an error. The load generator runs in this process and needs a CPU of its own
(``LOAD_GENERATOR_CPUS``): the limit must leave it one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import vertex
from components.capacity import load
from components.capacity.advice import Capacity, Step
from components.capacity.load import StepResult
from components.runners import (
    Container,
    Engine,
    Mount,
    NotServingError,
    ResourceUsage,
    RunnerError,
    RunningServer,
    ServerSpec,
    ServerState,
    UsageUnavailableError,
    detect_engine,
    start_server,
)
from serving_image.server import artifact

DEFAULT_BUDGET_S = 70.0
"""Start to removal, by default: with the engine's own ``run`` and ``rm`` the measurement of
one machine type stays under 90 s."""
DEFAULT_STEP_S = 3.0
"""Seconds per load step, by default: thirty CFS periods of 100 ms, so a CPU limit averages
out within a step."""
STOP_TIMEOUT_S = 10.0
"""SIGTERM to SIGKILL when the measurement ends (kept out of the load's budget). Shorter than
Vertex's grace period: the contract check times the stop, this only ends the server."""
WARM_UP_S = 1.0
WARM_UP_CONCURRENCY = 4
"""The warm-up's load: enough concurrent requests to reach every worker once."""
LOAD_GENERATOR_CPUS = 1.0
"""CPUs the load generator needs beside the server's limit (one event loop: one core)."""


class MeasurementError(ValueError):
    """The measurement cannot be made as asked (limits, budget, model directory); the message
    names the setting and what to do."""


@dataclass(frozen=True)
class Measurement:
    """What one image served under one set of limits, and what it used doing so."""

    image: str
    cpus: float
    memory_bytes: int
    latency_slo_ms: float
    instances_per_request: int
    machine_type: str
    """The machine type whose limits these are (``AIP_MACHINE_TYPE`` in the container)."""
    engine: str
    """``podman 4.3.1``."""
    seconds: float
    """The whole measurement, from ``run`` until the container was stopped."""
    cold_start_s: float | None
    """From ``run`` to the health route's first 200 (None: it never answered 200)."""
    startup_cpu_seconds: float | None
    """CPU the server used until then (None: its cgroup could not be read)."""
    warm_up: StepResult | None
    steps: tuple[StepResult, ...]
    peak_memory_bytes: int | None
    """The most memory the container was charged at any moment, start-up included (the
    cgroup's own peak where the kernel keeps one, else the largest sample)."""
    throttled_seconds: float | None
    """Time the server's processes were held back by the CPU limit, start to end."""
    stop_s: float | None
    """SIGTERM to exit (None: the container had already exited)."""
    exit_code: int | None
    oom_killed: bool
    """The engine reports that the container was killed for lack of memory (podman on cgroup
    v1 never does: see ``exit_code`` 137 and ``oom_kills``)."""
    oom_kills: int | None
    """Processes (a worker, say) the kernel killed in the container for lack of memory, up to
    the last reading of its cgroup (None: not read)."""
    failure: str = ""
    """Why there are no steps (the server never served); ``""`` when it served."""
    usage_note: str = ""
    """Why CPU and memory figures are missing (the cgroup could not be read); ``""`` if not."""

    @property
    def best(self) -> StepResult | None:
        """The step with the most instances per second among those without errors and within
        the latency objective; None when no step was."""
        good = [step for step in self.steps if step.within_slo(self.latency_slo_ms)]
        return max(good, key=lambda step: step.instances_per_s, default=None)

    @property
    def instances_per_s(self) -> float:
        """The best step's instances per second; 0.0 when no step met the objective."""
        best = self.best
        return best.instances_per_s if best is not None else 0.0

    @property
    def ended_by(self) -> str:
        """The rule that ended the load (``load.ENDED_BY_*``); ``""`` without steps."""
        return self.steps[-1].ended_by if self.steps else ""

    def capacity(self, scale: float = 1.0) -> Capacity:
        """The figures the advice works on; ``scale`` is ``machines.measurable_share``'s
        (usable vCPUs / the limit measured under).

        Raises:
            MeasurementError: the server never served, or its memory could not be read (the
                advice's memory rule needs it).
        """
        if self.cold_start_s is None:
            raise MeasurementError(f"no capacity to advise on: {self.failure}")
        if self.peak_memory_bytes is None:
            raise MeasurementError(
                f"no memory figures for {self.image} ({self.usage_note}): the advice's memory "
                "rule needs them; measure where the container's cgroup can be read"
            )
        steps = tuple(
            Step(
                concurrency=step.concurrency,
                duration_s=step.seconds,
                requests_per_s=step.requests_per_s,
                instances_per_s=step.instances_per_s,
                p50_ms=step.p50_ms,
                p99_ms=step.p99_ms,
                errors=step.errors,
                cpu_seconds=step.server_cpu_seconds,
                peak_memory_bytes=step.server_peak_memory_bytes or self.peak_memory_bytes,
            )
            for step in self.steps
        )
        return Capacity(
            machine_type=self.machine_type,
            cpu_limit=self.cpus,
            scale=scale,
            memory_limit_bytes=self.memory_bytes,
            cold_start_s=self.cold_start_s,
            instances_per_request=self.instances_per_request,
            steps=steps,
        )


def request_body(instances: Sequence[Any], instances_per_request: int) -> bytes:
    """``{"instances": [...]}`` holding ``instances_per_request`` of ``instances``, repeated
    in order as often as needed."""
    if not instances:
        raise MeasurementError("no instances to build a request from: the sample is empty")
    chosen = [instances[i % len(instances)] for i in range(instances_per_request)]
    return json.dumps({"instances": chosen}).encode()


def sample_instances(model_dir: str | Path) -> list[Any]:
    """The model's sample instances of the ``evaluation`` kind (rows of the evaluation data,
    like real traffic), or all of them where none is marked so.

    Raises:
        MeasurementError: the directory has no readable sample.
    """
    try:
        instances, _, kinds = artifact.read_sample(model_dir)
    except (OSError, ValueError) as exc:
        raise MeasurementError(
            f"{model_dir} has no readable sample instances ({exc}): measure a model directory "
            "exported by the train component, which writes them"
        ) from exc
    evaluation = [x for x, kind in zip(instances, kinds, strict=True) if kind == "evaluation"]
    return evaluation or instances


def host_cpus() -> float:
    """CPUs this process may run on."""
    return float(len(os.sched_getaffinity(0)))


def measure_image(
    image: str,
    model_dir: str | Path,
    *,
    cpus: float,
    memory_bytes: int,
    latency_slo_ms: float,
    instances_per_request: int,
    engine: Engine | None = None,
    budget_seconds: float = DEFAULT_BUDGET_S,
    step_seconds: float = DEFAULT_STEP_S,
    max_concurrency: int = 32,
    machine_type: str = vertex.MACHINE_TYPE,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Measure ``image`` serving ``model_dir`` under ``cpus`` and ``memory_bytes``; see the
    module docstring.

    Args:
        machine_type: the ``AIP_MACHINE_TYPE`` the server is told.
        env: more variables for the container (``containerSpec.env``; e.g.
            ``SERVING_WORKERS``: the server sizes its workers by the CPUs it sees, which are
            the host's, not the limit's); ``AIP_`` names are refused.

    Raises:
        MeasurementError: the limit leaves the load generator no CPU, the budget has no room
            for the cold start and one step, or the model has no sample.
        RunnerError: no container engine, or the image could not be started at all.
    """
    _check_settings(cpus, budget_seconds, step_seconds, latency_slo_ms, instances_per_request)
    body = request_body(sample_instances(model_dir), instances_per_request)
    engine = engine or detect_engine()
    health_route, predict_route = vertex.DEFAULT_HEALTH_ROUTE, vertex.DEFAULT_PREDICT_ROUTE
    spec = ServerSpec(
        image,
        port=vertex.DEFAULT_PORT,
        env={
            **vertex.check_user_env(env or {}),
            **vertex.vertex_environment(
                vertex.DEFAULT_PORT,
                health_route,
                predict_route,
                vertex.MODEL_MOUNT,
                machine_type,
            ),
        },
        mounts=(Mount(Path(model_dir), vertex.MODEL_MOUNT),),
        stop_timeout_s=STOP_TIMEOUT_S,
        cpus=cpus,
        memory_bytes=memory_bytes,
    )
    cold_start_s: float | None = None
    startup_cpu_seconds: float | None = None
    warm_up: StepResult | None = None
    steps: tuple[StepResult, ...] = ()
    failure = ""
    samples: list[ResourceUsage] = []
    usage_notes: list[str] = []
    with start_server(engine, spec) as server:
        if not isinstance(server, Container):
            raise RunnerError(f"{engine.name} is no container engine: it cannot apply limits")
        deadline = server.started_at + budget_seconds - STOP_TIMEOUT_S

        def usage() -> ResourceUsage | None:
            """The server's resource use so far (each reading kept: memory's peak)."""
            try:
                reading = server.usage()
            except UsageUnavailableError as exc:
                usage_notes.append(str(exc))
                return None
            samples.append(reading)
            return reading

        try:
            cold_start_s = server.wait_until_serving(
                health_route, timeout=deadline - time.monotonic() - WARM_UP_S - step_seconds
            )
        except NotServingError as exc:
            failure = f"never served under cpus={cpus:g}, memory_bytes={memory_bytes:,}: {exc}"
        else:
            at_start = usage()
            startup_cpu_seconds = at_start.cpu_seconds if at_start is not None else None
            url = server.url + predict_route
            warm_up = load.run_step(
                url,
                body,
                WARM_UP_CONCURRENCY,
                WARM_UP_S,
                instances_per_request=instances_per_request,
            )
            steps = tuple(
                load.stepped(
                    url,
                    body,
                    instances_per_request,
                    latency_slo_ms=latency_slo_ms,
                    budget_seconds=max(deadline - time.monotonic(), step_seconds),
                    max_concurrency=max_concurrency,
                    step_seconds=step_seconds,
                    server_usage=usage,
                )
            )
        usage()  # the last reading: memory's peak, the throttling in all
        before = _state(server)
        stop = server.stop(STOP_TIMEOUT_S) if before is not None and before.running else None
        after = _state(server) or before
        seconds = time.monotonic() - server.started_at
    oom_kills = samples[-1].oom_kills if samples else None
    if failure and after is not None and after.exit_code == 137 and not after.oom_killed:
        failure += (
            f"\n(exit 137 is SIGKILL: under a {memory_bytes:,} byte limit most likely the "
            "kernel's, for lack of memory; give the machine type more memory)"
        )
    elif failure and oom_kills:
        # The main process may survive while its workers are killed and rebooted in a loop.
        failure += (
            f"\n(the kernel killed {oom_kills} process(es) in the container for lack of memory "
            f"under a {memory_bytes:,} byte limit; give the machine type more memory)"
        )
    peaks = [u.peak_memory_bytes for u in samples if u.peak_memory_bytes is not None]
    return Measurement(
        image=image,
        cpus=cpus,
        memory_bytes=memory_bytes,
        latency_slo_ms=latency_slo_ms,
        instances_per_request=instances_per_request,
        machine_type=machine_type,
        engine=f"{engine.name} {engine.version}",
        seconds=seconds,
        cold_start_s=cold_start_s,
        startup_cpu_seconds=startup_cpu_seconds,
        warm_up=warm_up,
        steps=steps,
        peak_memory_bytes=max(peaks or [u.memory_bytes for u in samples], default=None),
        throttled_seconds=samples[-1].throttled_seconds if samples else None,
        stop_s=stop.seconds if stop is not None else None,
        exit_code=after.exit_code if after is not None else None,
        oom_killed=bool(after is not None and after.oom_killed),
        oom_kills=oom_kills,
        failure=failure,
        usage_note=usage_notes[0] if usage_notes else "",
    )


def _state(server: RunningServer) -> ServerState | None:
    """The server's state; None when the engine cannot tell (it was removed)."""
    with contextlib.suppress(RunnerError):
        return server.state()
    return None


def _check_settings(
    cpus: float,
    budget_seconds: float,
    step_seconds: float,
    latency_slo_ms: float,
    instances_per_request: int,
) -> None:
    if not (latency_slo_ms > 0 and step_seconds > 0 and instances_per_request >= 1):
        raise MeasurementError(
            f"latency_slo_ms={latency_slo_ms!r}, step_seconds={step_seconds!r}, "
            f"instances_per_request={instances_per_request!r}: each must be above 0"
        )
    spare = host_cpus() - cpus
    if spare < LOAD_GENERATOR_CPUS:
        raise MeasurementError(
            f"cpus={cpus:g} leaves {spare:g} of this host's {host_cpus():g} CPUs to the load "
            f"generator, which needs {LOAD_GENERATOR_CPUS:g}: measure under a smaller limit "
            "and scale, or on a host with more CPUs"
        )
    least = STOP_TIMEOUT_S + WARM_UP_S + 2 * step_seconds
    if budget_seconds < least:
        raise MeasurementError(
            f"budget_seconds={budget_seconds:g} leaves no room for a cold start and one step: "
            f"give at least {least:g} s (stop {STOP_TIMEOUT_S:g} s, warm-up {WARM_UP_S:g} s, "
            f"a step of {step_seconds:g} s and as long again to start)"
        )
