"""What a measured capacity means for a deployment: replicas, autoscaling, batch size, refusal.

The measuring side fills ``Capacity`` (one ``Step`` per load level); everything here is
arithmetic on it, each rule in the docstring of the function that applies it. Numbers marked
"ours" are this project's choices, not Vertex AI's; the rest come from ``components.vertex``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from components import vertex
from components.capacity.machines import GIB, MachineType, smallest_fitting, usable
from components.vertex import CPU_UTILIZATION_METRIC, DEFAULT_TARGET_UTILIZATION

PEAK_FACTOR = 2.0
"""Ours: the max replica count serves this multiple of the expected load at the target."""
LOW_CPU_UTILIZATION = 0.5
"""Ours: below this CPU utilization at the best step, CPU is not what limits the server."""
TIMEOUT_SAFETY = 4.0
"""Ours: a batch request is sized to take at most 1/4 of Vertex's predict timeout, leaving the
rest for the slow tail (p99 is often 2-3x the mean), larger instances and a busier replica."""
REQUEST_ENVELOPE_BYTES = 1024
"""Ours: bytes of a request body besides its instances (``{"instances": [...]}``, commas, a
small ``parameters`` object)."""
BATCH_EFFICIENCY = 0.8
"""Ours: the share of the measured throughput a batch job gets (it also reads its input,
writes its results and retries)."""
BATCH_STARTUP_ALLOWANCE_S = 600.0
"""Ours: minutes a batch job spends provisioning its replicas before the first request,
taken from its deadline (Vertex publishes no figure; 10 min is what we plan with)."""
MEMORY_HEADROOM = 1.1
"""Ours: the measured peak memory plus 10 % must fit, for traffic the steps did not reach."""
STARTUP_WINDOW_S = 120.0
"""Ours: the deadline of the ``startupProbe`` the contract check adds for a slow server (its
``startup_deadline_s`` default); a server without that probe has Vertex's liveness window."""


class CapacityError(ValueError):
    """The measurement cannot support the advice asked for; the message says why."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Step:
    """One load level, held for ``duration_s`` after its warm-up.

    Attributes:
        concurrency: requests kept in flight by the load generator.
        duration_s: length of the measuring window, seconds (warm-up excluded).
        requests_per_s: answered requests with status 200 per second of the window.
        instances_per_s: instances in those requests per second.
        p50_ms: median latency of the 200 answers, first byte sent to last byte read;
            ``None`` when nothing was answered 200.
        p99_ms: 99th percentile of the same (``None`` likewise).
        errors: requests in the window that got no 200 (other status, timeout, failure).
        cpu_seconds: CPU time the container used in the window (cgroup ``cpu.stat``
            ``usage_usec`` difference / 1e6); ``None`` when not measured.
        peak_memory_bytes: the container's peak memory from its start to the end of the
            window (cgroup ``memory.peak``, or the largest ``memory.current`` sample).
    """

    concurrency: int
    duration_s: float
    requests_per_s: float
    instances_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_seconds: float | None
    peak_memory_bytes: int

    def __post_init__(self) -> None:
        _check(
            self.concurrency >= 1,
            f"Step.concurrency={self.concurrency}: a step holds at least 1 request in flight",
        )
        _check(
            self.duration_s > 0,
            f"Step.duration_s={self.duration_s}: a measuring window lasts more than 0 s",
        )
        for name in (
            "requests_per_s",
            "instances_per_s",
            "p50_ms",
            "p99_ms",
            "errors",
            "cpu_seconds",
            "peak_memory_bytes",
        ):
            value = getattr(self, name)
            _check(
                value is None or value >= 0,
                f"Step.{name}={value}: measured quantities are not negative",
            )


@dataclass(frozen=True)
class Capacity:
    """A serving image's measured capacity under one machine type's limits.

    Attributes:
        machine_type: the Vertex machine type whose limits the container ran under.
        cpu_limit: the CPU limit (cgroup ``cpu.max`` quota / period, in vCPUs) it ran under.
        scale: the machine's usable vCPUs / ``cpu_limit`` (``machines.measurable_share``);
            1.0 when measured at full size, more when throughput is extrapolated.
        memory_limit_bytes: the memory limit it ran under (the machine's usable memory).
        cold_start_s: container start to the first 200 from the health route, seconds.
        instances_per_request: instances in each request of the load.
        steps: the load levels, in the order they ran.
    """

    machine_type: str
    cpu_limit: float
    scale: float
    memory_limit_bytes: int
    cold_start_s: float
    instances_per_request: int
    steps: tuple[Step, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _check(self.cpu_limit > 0, f"Capacity.cpu_limit={self.cpu_limit}: must be above 0")
        _check(
            self.scale >= 1.0,
            f"Capacity.scale={self.scale}: usable vCPUs / cpu_limit is at least 1 (never "
            "limit the container above the machine's usable vCPUs)",
        )
        _check(
            self.cold_start_s >= 0,
            f"Capacity.cold_start_s={self.cold_start_s}: a cold start is not negative",
        )
        _check(
            self.instances_per_request >= 1,
            f"Capacity.instances_per_request={self.instances_per_request}: at least 1",
        )
        object.__setattr__(self, "steps", tuple(self.steps))

    @property
    def peak_memory_bytes(self) -> int:
        """The largest peak memory of any step (0 without steps)."""
        return max((step.peak_memory_bytes for step in self.steps), default=0)

    def cpu_utilization(self, step: Step) -> float | None:
        """The share of ``cpu_limit`` the container used during ``step`` (about 0..1);
        ``None`` when its CPU time was not measured."""
        if step.cpu_seconds is None:
            return None
        return step.cpu_seconds / (step.duration_s * self.cpu_limit)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, field by field (steps as a list); ``from_dict`` reads it back."""
        return {**asdict(self), "steps": [asdict(step) for step in self.steps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capacity:
        """The capacity ``as_dict`` wrote; ``ValueError`` naming missing or unknown fields."""
        _require_fields(cls, data)
        for step in data["steps"]:
            _require_fields(Step, step)
        values = {f.name: data[f.name] for f in fields(cls) if f.name != "steps"}
        return cls(**values, steps=tuple(Step(**step) for step in data["steps"]))


def _require_fields(kind: type, data: Mapping[str, Any]) -> None:
    names = {f.name for f in fields(kind)}
    missing, unknown = sorted(names - set(data)), sorted(set(data) - names)
    if missing or unknown:
        raise ValueError(
            f"{kind.__name__} data: missing {missing}, unknown {unknown}; write it with "
            f"{kind.__name__}.as_dict (fields: {sorted(names)})"
        )


def _ceil(value: float) -> int:
    """``math.ceil`` that does not round 3.0000000000000004 up to 4."""
    return math.ceil(value - 1e-9 * max(1.0, abs(value)))


def round_significant(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits (for reports: no false precision)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def floor_significant(count: int, digits: int = 2) -> int:
    """``count`` rounded down to ``digits`` significant digits (1234 -> 1200; 99 -> 99)."""
    if count < 10**digits:
        return count
    unit = 10 ** (len(str(count)) - digits)
    return count // unit * unit


def _answered(steps: Iterable[Step]) -> list[Step]:
    """The steps whose figures count: no errors and some requests answered."""
    return [step for step in steps if step.errors == 0 and step.requests_per_s > 0]


def best_step(steps: Iterable[Step], latency_slo_ms: float | None) -> Step | None:
    """The step with the highest throughput (requests/s) among those without errors whose p99
    is within ``latency_slo_ms`` (``None``: any p99); the lower concurrency on a tie. ``None``
    when no step qualifies (``no_step_reason`` says why)."""
    eligible = [
        step
        for step in _answered(steps)
        if latency_slo_ms is None or (step.p99_ms is not None and step.p99_ms <= latency_slo_ms)
    ]
    return max(eligible, key=lambda s: (s.requests_per_s, -s.concurrency), default=None)


def no_step_reason(steps: Sequence[Step], latency_slo_ms: float | None) -> str:
    """Why ``best_step`` found nothing, and what to do about it."""
    if not steps:
        return "no load step was measured: run the load before asking for advice"
    clean = [step for step in _answered(steps) if step.p99_ms is not None]
    if not clean:
        errors = ", ".join(f"{s.errors} at concurrency {s.concurrency}" for s in steps)
        return (
            f"every load step had errors or no answers ({errors}): the server fails under "
            "load even at the lowest concurrency; read its log before sizing it"
        )
    fastest = min(clean, key=lambda s: s.p99_ms or 0.0)
    return (
        f"no error-free step kept p99 within the {latency_slo_ms:g} ms latency SLO: the "
        f"lowest was {fastest.p99_ms:g} ms at concurrency {fastest.concurrency}; raise the "
        "SLO, measure a machine with faster CPUs or make the model faster"
    )


def _best(capacity: Capacity, latency_slo_ms: float | None) -> Step:
    step = best_step(capacity.steps, latency_slo_ms)
    if step is None:
        raise CapacityError(no_step_reason(capacity.steps, latency_slo_ms))
    return step


@dataclass(frozen=True)
class DeployAdvice:
    """Replicas and autoscaling for an endpoint (``dedicated_resources`` is the REST form)."""

    machine_type: str
    expected_qps: float
    latency_slo_ms: float
    best_concurrency: int
    per_replica_qps: float
    """Requests/s one replica serves within the SLO (the best step's, times the scale)."""
    target_utilization: int
    """The share (percent) of ``per_replica_qps`` each replica is meant to run at."""
    cpu_utilization: float | None
    """The CPU share of the limit used at the best step (0..1; ``None``: not measured)."""
    min_replica_count: int
    max_replica_count: int
    autoscaling_target: int
    """The CPU utilization target (percent) that keeps replicas at ``target_utilization``."""
    notes: tuple[str, ...] = ()

    def dedicated_resources(self) -> dict[str, Any]:
        """``DedicatedResources`` (REST camelCase) for ``endpoints.deployModel``."""
        return {
            "machineSpec": {"machineType": self.machine_type},
            "minReplicaCount": self.min_replica_count,
            "maxReplicaCount": self.max_replica_count,
            "autoscalingMetricSpecs": [
                {"metricName": CPU_UTILIZATION_METRIC, "target": self.autoscaling_target}
            ],
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "notes": list(self.notes)}


def deploy_advice(
    capacity: Capacity,
    expected_qps: float,
    *,
    latency_slo_ms: float,
    target_utilization: int = DEFAULT_TARGET_UTILIZATION,
    peak_factor: float = PEAK_FACTOR,
) -> DeployAdvice:
    """Min and max replicas and the autoscaling target for ``expected_qps`` requests/s.

    Rules: a replica serves ``per_replica_qps`` = the best step's requests/s (``best_step``
    at ``latency_slo_ms``) x ``capacity.scale``, and is meant to run at ``target_utilization``
    percent of it. ``min = max(1, ceil(expected_qps / (per_replica_qps x target / 100)))``
    (Vertex wants at least 1); ``max = max(min, ceil(peak_factor x expected_qps /
    (per_replica_qps x target / 100)))``, room for ``peak_factor`` times the expected load.

    Vertex scales on CPU, and CPU grows with throughput, so the CPU target that holds a replica
    at ``target`` percent of its throughput is ``target x`` the CPU utilization measured at the
    best step (rounded, within Vertex's 1..100). For a CPU-bound server that is ``target``
    itself; for one that reaches its SLO with CPU to spare it is lower, or Vertex would scale
    only after the SLO broke. (Ours: Vertex's CPU utilization is read as the share of the
    replica's usable vCPUs in use, as the measurement's share of its CPU limit is.)
    ``CapacityError`` when no step meets the SLO.
    """
    _check(expected_qps > 0, f"expected_qps={expected_qps}: give the requests/s to serve, > 0")
    _check(
        1 <= target_utilization <= 100,
        f"target_utilization={target_utilization}: Vertex takes a target of 1..100 percent",
    )
    _check(peak_factor >= 1, f"peak_factor={peak_factor}: the max serves at least the expected")
    best = _best(capacity, latency_slo_ms)
    per_replica = best.requests_per_s * capacity.scale
    at_target = per_replica * target_utilization / 100
    min_replicas = max(1, _ceil(expected_qps / at_target))
    max_replicas = max(min_replicas, _ceil(peak_factor * expected_qps / at_target))
    measured = capacity.cpu_utilization(best)
    utilization = None if measured is None else min(1.0, measured)
    notes = []
    if utilization:
        target = min(100, max(1, round(target_utilization * utilization)))
    else:
        target = target_utilization
        notes.append(
            "CPU time was not measured: the autoscaling target is the utilization asked for"
        )
    if utilization and utilization < LOW_CPU_UTILIZATION:
        notes.append(
            f"CPU was {utilization:.0%} of the limit at the best step: something else limits "
            "this server (workers, I/O, a lock), so CPU autoscaling is a weak signal; the min "
            "replica count alone covers the expected load"
        )
    if capacity.scale > 1:
        notes.append(
            f"per-replica throughput is the measured one x {capacity.scale:g} (measured under "
            f"a {capacity.cpu_limit:g} vCPU limit): an upper bound; measure at full size "
            "before relying on the replica counts"
        )
    if capacity.cold_start_s >= vertex.SLOW_STARTUP_S:
        notes.append(
            f"cold start {capacity.cold_start_s:g} s: new replicas serve only after it, so "
            "scale-out lags a burst; the container spec needs a startupProbe"
        )
    return DeployAdvice(
        machine_type=capacity.machine_type,
        expected_qps=expected_qps,
        latency_slo_ms=latency_slo_ms,
        best_concurrency=best.concurrency,
        per_replica_qps=round_significant(per_replica),
        target_utilization=target_utilization,
        cpu_utilization=None if utilization is None else round(utilization, 3),
        min_replica_count=min_replicas,
        max_replica_count=max_replicas,
        autoscaling_target=target,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class BatchAdvice:
    """Instances per request and replicas for a batch prediction job."""

    batch_size: int
    replica_count: int
    limited_by: str
    """What set the batch size: ``body``, ``timeout`` or ``instances`` (all of them)."""
    body_bytes: int
    """The estimated request body at ``batch_size``."""
    request_s: float
    """The estimated seconds one request of ``batch_size`` takes."""
    replica_instances_per_s: float
    """Instances/s one replica is planned at (scaled, times ``BATCH_EFFICIENCY``)."""
    estimated_minutes: float
    """Provisioning allowance + cold start + the instances at ``replica_count`` replicas."""
    deadline_minutes: float
    notes: tuple[str, ...] = ()

    def batch_predict_arguments(self) -> dict[str, int]:
        """The sizes as GCPC's ``ModelBatchPredictOp`` takes them (batch does not autoscale,
        so starting and max replicas are equal)."""
        return {
            "manual_batch_tuning_parameters_batch_size": self.batch_size,
            "starting_replica_count": self.replica_count,
            "max_replica_count": self.replica_count,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "notes": list(self.notes)}


def request_body_bytes(batch_size: int, instance_bytes: int) -> int:
    """A request's body: the envelope, then each instance and its comma."""
    return REQUEST_ENVELOPE_BYTES + batch_size * (instance_bytes + 1)


def batch_advice(
    capacity: Capacity,
    *,
    instance_bytes: int,
    instances_total: int,
    deadline_minutes: float,
    max_body_bytes: int,
    startup_allowance_s: float = BATCH_STARTUP_ALLOWANCE_S,
) -> BatchAdvice:
    """Batch size and replicas for ``instances_total`` instances within ``deadline_minutes``.

    ``instance_bytes`` is the JSON size of the largest instance; ``max_body_bytes`` the body
    limit (``vertex.SHARED_ENDPOINT_MAX_BODY_BYTES`` fits every endpoint,
    ``vertex.MAX_FORWARDED_BODY_BYTES`` is what Vertex forwards to a container at most).

    Rules, at the step with the highest throughput and no errors (latency does not limit a
    batch job; the timeout does):

    * body: ``request_body_bytes(batch, instance_bytes) <= max_body_bytes``;
    * timeout: an instance takes ``concurrency / instances_per_s`` seconds of a request at the
      step (Little's law; the same on the full machine, which serves ``scale`` x the
      concurrency), and a request may take ``vertex.PREDICT_TIMEOUT_S / TIMEOUT_SAFETY``;
    * the batch size is the smaller, at most ``instances_total``, rounded down to two
      significant digits; when not one instance fits the timeout budget but fits the timeout,
      it is 1 with a note;
    * replicas: ``ceil(instances_total / (instances_per_s x scale x BATCH_EFFICIENCY x
      (deadline - startup_allowance_s - cold_start_s)))``, at least 1.

    ``CapacityError`` when one instance exceeds the body limit or the timeout, or the deadline
    is spent before the replicas serve.
    """
    _check(instance_bytes > 0, f"instance_bytes={instance_bytes}: an instance has bytes")
    _check(instances_total >= 1, f"instances_total={instances_total}: at least 1 instance")
    _check(deadline_minutes > 0, f"deadline_minutes={deadline_minutes}: must be above 0")
    best = _best(capacity, None)
    if best.instances_per_s <= 0:
        raise CapacityError(
            f"the best step (concurrency {best.concurrency}) has no instances/s: the load "
            "must count the instances it sends"
        )
    by_body = (max_body_bytes - REQUEST_ENVELOPE_BYTES) // (instance_bytes + 1)
    if by_body < 1:
        raise CapacityError(
            f"body-limit rule: one instance of {instance_bytes} bytes in a request makes "
            f"{request_body_bytes(1, instance_bytes)} bytes, over the {max_body_bytes} byte "
            "limit; make instances smaller (send a reference to the data instead of the data)"
        )
    instance_s = best.concurrency / best.instances_per_s
    budget_s = vertex.PREDICT_TIMEOUT_S / TIMEOUT_SAFETY
    by_time = math.floor(budget_s / instance_s + 1e-9)
    notes = []
    if by_time < 1:
        if instance_s > vertex.PREDICT_TIMEOUT_S:
            raise CapacityError(
                f"timeout rule: one instance takes about {instance_s:.1f} s at concurrency "
                f"{best.concurrency}, over Vertex's {vertex.PREDICT_TIMEOUT_S:g} s predict "
                "timeout; use a faster machine or model"
            )
        by_time = 1
        notes.append(
            f"one instance takes about {instance_s:.1f} s, over the {budget_s:g} s budget "
            f"(the {vertex.PREDICT_TIMEOUT_S:g} s timeout / {TIMEOUT_SAFETY:g}): batch size 1 "
            "is close to the timeout"
        )
    limits = {"body": by_body, "timeout": by_time, "instances": instances_total}
    limited_by = min(limits, key=lambda name: limits[name])
    batch = floor_significant(limits[limited_by])
    run_s = deadline_minutes * 60 - startup_allowance_s - capacity.cold_start_s
    if run_s <= 0:
        raise CapacityError(
            f"deadline rule: {deadline_minutes:g} min is spent before the first request (our "
            f"{startup_allowance_s:g} s provisioning allowance + {capacity.cold_start_s:g} s "
            "cold start); give the job more time"
        )
    per_replica = best.instances_per_s * capacity.scale * BATCH_EFFICIENCY
    replicas = max(1, _ceil(instances_total / (per_replica * run_s)))
    serve_s = instances_total / (per_replica * replicas)
    if capacity.scale > 1:
        notes.append(
            f"per-replica throughput is the measured one x {capacity.scale:g}: an upper bound"
        )
    return BatchAdvice(
        batch_size=batch,
        replica_count=replicas,
        limited_by=limited_by,
        body_bytes=request_body_bytes(batch, instance_bytes),
        request_s=round_significant(batch * instance_s),
        replica_instances_per_s=round_significant(per_replica),
        estimated_minutes=round_significant(
            (startup_allowance_s + capacity.cold_start_s + serve_s) / 60
        ),
        deadline_minutes=deadline_minutes,
        notes=tuple(notes),
    )


def refusal(
    capacity: Capacity, machine: MachineType, *, startup_window_s: float = STARTUP_WINDOW_S
) -> str | None:
    """Why this image must not be deployed on ``machine``, or ``None``.

    Rules: memory: the peak memory x ``MEMORY_HEADROOM`` must fit ``usable(machine)``'s memory
    (the message names ``smallest_fitting`` in the same family, else in any); startup window:
    the cold start must be within ``startup_window_s``.
    """
    reasons = []
    need = math.ceil(capacity.peak_memory_bytes * MEMORY_HEADROOM)
    room = usable(machine).memory_bytes
    if need > room:
        reasons.append(
            f"memory rule: peak {capacity.peak_memory_bytes / GIB:.2f} GiB + "
            f"{MEMORY_HEADROOM - 1:.0%} headroom = {need / GIB:.2f} GiB does not fit "
            f"{machine.name}'s {room / GIB:.2f} GiB usable memory; {_fitting(need, machine)}"
        )
    if capacity.cold_start_s > startup_window_s:
        reasons.append(
            f"startup-window rule: the cold start took {capacity.cold_start_s:g} s, over the "
            f"{startup_window_s:g} s a replica has to answer health; give the startupProbe a "
            "longer deadline (the contract check's startup_deadline_s) or load the model faster"
        )
    return "; ".join(reasons) or None


def _fitting(need: int, machine: MachineType) -> str:
    for family in (machine.family, None):
        try:
            fits = smallest_fitting(need, family=family, min_vcpus=machine.vcpus)
        except ValueError:
            continue
        room = usable(fits).memory_bytes / GIB
        return f"the smallest machine it fits is {fits.name} ({room:.2f} GiB usable)"
    return "no machine type in our table fits it: reduce the model's memory"
