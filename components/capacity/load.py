"""Load on a model server's predict route, generated and timed in this process.

``run_step`` is one closed-loop step: ``concurrency`` workers each send the next request as
soon as their last one was answered, for ``seconds``; every request's latency is kept.
Closed loop, because a Vertex replica's callers wait for their answers too, and because an
open loop faster than the server only measures its queue. ``stepped`` raises the concurrency
1, 2, 4, ... until the server is full: the 99th percentile passes the latency objective,
errors appear, throughput stops growing (``SATURATION_STEPS`` steps in a row each less than
``MIN_GAIN`` over the best step before it), the concurrency reaches its cap, or the time
budget has no room for another step.

The generator is aiohttp on one event loop in the calling process, and it needs a core of its
own: a generator short of CPU answers late to its own requests, and that delay would be
counted as the server's. Limit the server (``ServerSpec.cpus``) to fewer CPUs than the host
has, one left over (``measure.measure_image`` checks this). Call these from synchronous code:
each runs its own event loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import aiohttp

from components.runners import ResourceUsage

MIN_GAIN = 0.05
"""A step whose instances/s beat the best before it by less than this fraction gained
nothing: more concurrency only queued."""
SATURATION_STEPS = 2
"""Steps in a row that gain nothing end the run: one can be noise (under a fractional CPU
limit a short step spans few of the kernel's 100 ms CPU periods, and one step that fell
behind ended a half-CPU measurement at concurrency 2, a third short of its plateau)."""
REQUEST_TIMEOUT_S = 10.0
"""A request unanswered this long counts as an error (the step waits for it, so keep it
short against the step length)."""
ERROR_PAUSE_S = 0.01
"""A worker whose request failed without an answer (refused, reset) waits this long before
the next, so that a dead server is not hammered in a busy loop."""

ENDED_BY_ERRORS = "errors"
ENDED_BY_LATENCY = "latency"
ENDED_BY_SATURATION = "saturated"
ENDED_BY_MAX_CONCURRENCY = "max_concurrency"
ENDED_BY_BUDGET = "budget"


@dataclass(frozen=True)
class StepResult:
    """One step of load at a fixed concurrency, as the client saw it."""

    concurrency: int
    instances_per_request: int
    seconds: float
    """From the first request sent until the last one answered (in-flight requests finish
    after the step's time is up)."""
    requests: int
    """Requests answered 200."""
    errors: int
    """Requests answered otherwise, or not at all (refused, reset, timed out)."""
    first_error: str
    """What the first failed request got; ``""`` when none failed."""
    requests_per_s: float
    """``requests / seconds``: answered, good requests only."""
    instances_per_s: float
    """``requests_per_s * instances_per_request``."""
    p50_ms: float | None
    """Median latency of the good requests (None when there were none)."""
    p99_ms: float | None
    """99th percentile (nearest rank) latency of the good requests."""
    max_ms: float | None
    server_cpu_seconds: float | None = None
    """CPU time the server used during the step, where ``stepped`` was given its usage."""
    server_peak_memory_bytes: int | None = None
    """The server's peak memory from its start to the end of the step (its cgroup's peak, or
    the largest reading so far where the kernel keeps none); None likewise."""
    ended_by: str = ""
    """For ``stepped``'s last step, the rule that stopped it (``ENDED_BY_*``); else ``""``."""

    @property
    def within(self) -> bool:
        """No errors and at least one good answer: a step whose figures count."""
        return self.errors == 0 and self.requests > 0

    def within_slo(self, latency_slo_ms: float) -> bool:
        """No errors, and the 99th percentile at or under ``latency_slo_ms``."""
        return self.within and self.p99_ms is not None and self.p99_ms <= latency_slo_ms


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (``fraction`` 0.5 for the median); None when
    empty. Nearest rank, because it is always a latency that was measured."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def run_step(
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    *,
    instances_per_request: int = 1,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> StepResult:
    """POST ``body`` (JSON) to ``url`` from ``concurrency`` closed-loop workers for
    ``seconds``; see the module docstring.

    Raises:
        ValueError: a count or duration is not positive.
    """
    _check_positive(concurrency=concurrency, seconds=seconds, timeout_s=timeout_s)
    _check_positive(instances_per_request=instances_per_request)

    async def one() -> StepResult:
        async with _session(concurrency, timeout_s) as session:
            return await _step(session, url, body, concurrency, seconds, instances_per_request)

    return asyncio.run(one())


def stepped(
    url: str,
    body: bytes,
    instances_per_request: int,
    *,
    latency_slo_ms: float,
    budget_seconds: float,
    max_concurrency: int = 32,
    step_seconds: float = 3.0,
    timeout_s: float = REQUEST_TIMEOUT_S,
    server_usage: Callable[[], ResourceUsage | None] | None = None,
) -> list[StepResult]:
    """Steps of ``step_seconds`` at concurrency 1, 2, 4, ... up to ``max_concurrency`` (the
    last step at the cap itself), until a rule in the module docstring stops them; the last
    step's ``ended_by`` names that rule. One connection pool serves every step, so
    connections opened in one step stay open for the next, as a caller's would.

    Args:
        server_usage: reads the server's resource use so far (``Container.usage``), or None
            when it cannot; read before and after each step, it gives each step's
            ``server_cpu_seconds`` and ``server_peak_memory_bytes``.
        budget_seconds: wall time for all steps; a step starts only when its
            ``step_seconds`` still fit.

    Raises:
        ValueError: a count or duration is not positive, or the budget is shorter than one
            step.
    """
    _check_positive(
        instances_per_request=instances_per_request,
        latency_slo_ms=latency_slo_ms,
        max_concurrency=max_concurrency,
        step_seconds=step_seconds,
        timeout_s=timeout_s,
    )
    if budget_seconds < step_seconds:
        raise ValueError(
            f"budget_seconds={budget_seconds:g} is shorter than one step (step_seconds="
            f"{step_seconds:g}): give the load at least one step's time"
        )

    def usage_now() -> ResourceUsage | None:
        return server_usage() if server_usage is not None else None

    async def steps() -> list[StepResult]:
        started = time.monotonic()
        results: list[StepResult] = []
        concurrency = 1
        peak: int | None = None
        async with _session(max_concurrency, timeout_s) as session:
            while True:
                before = usage_now()
                result = await _step(
                    session, url, body, concurrency, step_seconds, instances_per_request
                )
                after = usage_now()
                peak = _peak(peak, before, after)
                if before is not None and after is not None:
                    cpu = after.cpu_seconds - before.cpu_seconds
                    result = replace(result, server_cpu_seconds=cpu)
                result = replace(result, server_peak_memory_bytes=peak)
                ended_by = _ended_by(result, results, latency_slo_ms, max_concurrency)
                if not ended_by and time.monotonic() - started + step_seconds > budget_seconds:
                    ended_by = ENDED_BY_BUDGET
                results.append(replace(result, ended_by=ended_by))
                if ended_by:
                    return results
                concurrency = min(concurrency * 2, max_concurrency)

    return asyncio.run(steps())


def _peak(peak: int | None, *readings: ResourceUsage | None) -> int | None:
    """The largest of ``peak`` and the readings' peaks (their current use where the kernel
    keeps no peak)."""
    values = [peak] if peak is not None else []
    for reading in readings:
        if reading is not None:
            values.append(reading.memory_bytes)
            if reading.peak_memory_bytes is not None:
                values.append(reading.peak_memory_bytes)
    return max(values, default=None)


def _ended_by(
    result: StepResult, before: Sequence[StepResult], latency_slo_ms: float, max_concurrency: int
) -> str:
    """The stop rule ``result`` meets, ``""`` when the load goes on."""
    if not result.within:
        return ENDED_BY_ERRORS
    if result.p99_ms is not None and result.p99_ms > latency_slo_ms:
        return ENDED_BY_LATENCY
    steps = [*before, result]
    flat = 0  # the steps at the end that gained nothing over the best before each
    while flat < len(steps) - 1 and not _gained(steps[-1 - flat], steps[: -1 - flat]):
        flat += 1
    if flat >= SATURATION_STEPS:
        return ENDED_BY_SATURATION
    if result.concurrency >= max_concurrency:
        return ENDED_BY_MAX_CONCURRENCY
    return ""


def _gained(step: StepResult, before: Sequence[StepResult]) -> bool:
    """Whether ``step`` beat the best of ``before`` by ``MIN_GAIN`` (the first step does)."""
    best = max((earlier.instances_per_s for earlier in before), default=None)
    return best is None or step.instances_per_s >= best * (1 + MIN_GAIN)


def _session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Content-Type": "application/json"},
    )


async def _step(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    concurrency: int,
    seconds: float,
    instances_per_request: int,
) -> StepResult:
    """One closed-loop step on ``session``."""
    latencies: list[float] = []
    errors: list[str] = []  # the first error's text; then only counted
    failed = 0
    timeout_s = session.timeout.total or REQUEST_TIMEOUT_S
    started = time.monotonic()
    deadline = started + seconds

    def fail(text: str) -> None:
        nonlocal failed
        failed += 1
        if not errors:
            errors.append(text)

    async def worker() -> None:
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body) as response:
                    answer = await response.read()
                    status, reason = response.status, response.reason
            except TimeoutError:
                fail(f"no answer within {timeout_s:g} s")
            except (aiohttp.ClientError, OSError) as exc:
                fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_PAUSE_S)
            else:
                if status == 200:
                    latencies.append((time.perf_counter() - sent) * 1000)
                else:
                    fail(f"HTTP {status} {reason}: {answer[:200]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    rate = len(latencies) / elapsed
    return StepResult(
        concurrency=concurrency,
        instances_per_request=instances_per_request,
        seconds=elapsed,
        requests=len(latencies),
        errors=failed,
        first_error=errors[0] if errors else "",
        requests_per_s=rate,
        instances_per_s=rate * instances_per_request,
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies, default=None),
    )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}={value!r}: it must be above 0")
