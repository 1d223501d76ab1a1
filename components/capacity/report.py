"""The capacity report: ``capacity.json`` for tools, Markdown with a plot for people, and the
numbers for KFP ``Metrics``.

The Markdown is rendered from the JSON document alone, so it can be rebuilt from a stored
``capacity.json``. Its plot (throughput and p99 against concurrency) is a PNG written beside it
and also embedded as a ``data:`` URI, because a KFP Markdown artifact is shown on its own,
without the files next to it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.capacity.advice import (
    STARTUP_WINDOW_S,
    BatchAdvice,
    Capacity,
    DeployAdvice,
    best_step,
    no_step_reason,
    refusal,
    round_significant,
)
from components.capacity.machines import GIB, MIB, machine_type, usable
from components.files import write_bytes_atomically, write_json_atomically

JSON_NAME = "capacity.json"
MARKDOWN_NAME = "capacity.md"
PNG_NAME = "capacity.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCHEMA_VERSION = 1
"""Bumped when a field of ``capacity.json`` changes meaning."""


def measurement_note(capacity: Capacity) -> str:
    """What the numbers stand for: measured at full size, or scaled up to it."""
    if capacity.scale <= 1.0:
        return (
            f"Measured at {capacity.machine_type}'s full usable share: {capacity.cpu_limit:g} "
            f"vCPU, {capacity.memory_limit_bytes / GIB:.2f} GiB."
        )
    return (
        f"Measured under a {capacity.cpu_limit:g} vCPU limit, a fraction of "
        f"{capacity.machine_type}'s usable vCPUs, because this host has no more to spare "
        f"beside the load generator. Per-replica throughput is the measured one x "
        f"{capacity.scale:g}, which assumes throughput grows in proportion to CPU: an upper "
        "bound, reached only when the server runs as many workers as the machine has vCPUs. "
        "The table and the plot show what was measured, unscaled."
    )


def capacity_document(
    capacity: Capacity,
    *,
    latency_slo_ms: float,
    deploy: DeployAdvice | None = None,
    batch: BatchAdvice | None = None,
    startup_window_s: float = STARTUP_WINDOW_S,
) -> dict[str, Any]:
    """``capacity.json``: the measurement (``Capacity.as_dict``), the machine's usable share,
    the step chosen at the SLO (or why none), the advice given, and ``refusal`` (``None``
    when the image fits the machine and the startup window). ``ValueError`` when the machine
    type is not in the table."""
    best = best_step(capacity.steps, latency_slo_ms)
    machine = machine_type(capacity.machine_type)
    share = usable(machine)
    return {
        "schema_version": SCHEMA_VERSION,
        "machine_type": capacity.machine_type,
        "machine": {"usable_cpus": share.cpus, "usable_memory_bytes": share.memory_bytes},
        "startup_window_s": startup_window_s,
        "latency_slo_ms": latency_slo_ms,
        "measurement_note": measurement_note(capacity),
        "measured": capacity.as_dict(),
        "best_concurrency": best.concurrency if best else None,
        "no_best_step_reason": None if best else no_step_reason(capacity.steps, latency_slo_ms),
        "deploy": deploy.as_dict() if deploy else None,
        "batch": batch.as_dict() if batch else None,
        "refusal": refusal(capacity, machine, startup_window_s=startup_window_s),
    }


def read_capacity(document: Mapping[str, Any]) -> Capacity:
    """The measurement inside a ``capacity.json`` document."""
    return Capacity.from_dict(document["measured"])


def plot_png(capacity: Capacity, *, latency_slo_ms: float | None = None) -> bytes:
    """Throughput (requests/s, left axis) and p99 (ms, right axis) against concurrency, as
    measured (unscaled), with the SLO as a dashed line; a PNG.

    Matplotlib's object API on an Agg canvas: no display and no global pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = sorted(capacity.steps, key=lambda step: step.concurrency)
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    throughput = figure.add_subplot()
    concurrency = [step.concurrency for step in steps]
    handles = throughput.plot(
        concurrency, [s.requests_per_s for s in steps], "o-", color="tab:blue", label="requests/s"
    )
    throughput.set_xlabel("concurrency (requests in flight)")
    throughput.set_ylabel("requests/s (measured)", color="tab:blue")
    if len(set(concurrency)) > 1:
        throughput.set_xscale("log", base=2)
    throughput.set_xticks(concurrency, labels=[str(c) for c in concurrency])
    throughput.set_ylim(bottom=0)
    latency = throughput.twinx()
    timed = [s for s in steps if s.p99_ms is not None]
    handles += latency.plot(
        [s.concurrency for s in timed],
        [s.p99_ms for s in timed],
        "s--",
        color="tab:red",
        label="p99 ms",
    )
    latency.set_ylabel("p99 latency (ms)", color="tab:red")
    if latency_slo_ms is not None:
        handles.append(
            latency.axhline(
                latency_slo_ms, color="tab:red", linestyle=":", linewidth=1, label="p99 SLO"
            )
        )
    latency.set_ylim(bottom=0)
    failed = [s for s in steps if s.errors]
    if failed:
        handles += throughput.plot(
            [s.concurrency for s in failed],
            [s.requests_per_s for s in failed],
            "x",
            color="k",
            markersize=10,
            label="errors",
        )
    best = best_step(steps, latency_slo_ms)
    if best is not None:
        handles += throughput.plot(
            [best.concurrency], [best.requests_per_s], "*", color="k", markersize=14, label="best"
        )
    throughput.legend(handles=handles, loc="upper left", fontsize="small")
    figure.suptitle(f"{capacity.machine_type}: throughput and p99 against concurrency")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{round_significant(value, digits):g}"


def _steps_table(document: Mapping[str, Any]) -> list[str]:
    measured = document["measured"]
    cpu_limit = measured["cpu_limit"]
    lines = [
        "| concurrency | requests/s | instances/s | p50 ms | p99 ms | errors | CPU of limit "
        "| peak memory MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in sorted(measured["steps"], key=lambda s: s["concurrency"]):
        cpu = step["cpu_seconds"]
        share = "-" if cpu is None else f"{cpu / (step['duration_s'] * cpu_limit):.0%}"
        mark = " (best)" if step["concurrency"] == document["best_concurrency"] else ""
        lines.append(
            f"| {step['concurrency']}{mark} | {_number(step['requests_per_s'])} "
            f"| {_number(step['instances_per_s'])} | {_number(step['p50_ms'])} "
            f"| {_number(step['p99_ms'])} | {step['errors']} | {share} "
            f"| {step['peak_memory_bytes'] / MIB:.0f} |"
        )
    return lines


def markdown(
    document: Mapping[str, Any], *, png: bytes | None = None, png_name: str = PNG_NAME
) -> str:
    """The report for people: verdict, the steps as a table, the plot (embedded when ``png``
    is given, with a link to ``png_name`` beside the Markdown), the advice and its notes."""
    measured = document["measured"]
    peak = max((s["peak_memory_bytes"] for s in measured["steps"]), default=0)
    lines = [f"# Capacity of the serving image on {document['machine_type']}", ""]
    if document["refusal"]:
        lines += [f"**Refused:** {document['refusal']}", ""]
    else:
        lines += [
            f"**Fits** the machine's usable memory (with headroom) and the "
            f"{document['startup_window_s']:g} s startup window.",
            "",
        ]
    lines += [
        document["measurement_note"],
        "",
        f"- latency SLO (p99): {document['latency_slo_ms']:g} ms",
        f"- cold start: {measured['cold_start_s']:g} s",
        f"- peak memory: {peak / MIB:.0f} MiB",
        f"- instances per request: {measured['instances_per_request']}",
    ]
    machine = document["machine"]
    lines.append(
        f"- usable on the machine (ours: less the agents' reserve): "
        f"{machine['usable_cpus']:g} vCPUs, {machine['usable_memory_bytes'] / GIB:.2f} GiB"
    )
    lines += ["", "## Load steps", "", *_steps_table(document), ""]
    if document["no_best_step_reason"]:
        lines += [f"No step qualifies: {document['no_best_step_reason']}", ""]
    if png is not None:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        lines += [
            "## Throughput and p99 against concurrency",
            "",
            f"![throughput and p99 against concurrency]({uri})",
            "",
            f"The same plot as a file: [{png_name}]({png_name}).",
            "",
        ]
    if document["deploy"]:
        deploy = document["deploy"]
        lines += [
            "## Online endpoint",
            "",
            "| setting | value |",
            "|---|---|",
            f"| expected load | {deploy['expected_qps']:g} requests/s |",
            f"| per replica within the SLO | {deploy['per_replica_qps']:g} requests/s |",
            f"| min replicas | {deploy['min_replica_count']} |",
            f"| max replicas | {deploy['max_replica_count']} |",
            f"| autoscaling CPU target | {deploy['autoscaling_target']} % "
            f"(replicas at {deploy['target_utilization']} % of their throughput) |",
            "",
            *[f"- {note}" for note in deploy["notes"]],
            *([""] if deploy["notes"] else []),
        ]
    if document["batch"]:
        batch = document["batch"]
        lines += [
            "## Batch prediction",
            "",
            "| setting | value |",
            "|---|---|",
            f"| batch size | {batch['batch_size']} (limited by {batch['limited_by']}) |",
            f"| request body | {batch['body_bytes']} bytes |",
            f"| time per request | {batch['request_s']:g} s |",
            f"| replicas | {batch['replica_count']} |",
            f"| estimated duration | {batch['estimated_minutes']:g} min "
            f"(deadline {batch['deadline_minutes']:g} min) |",
            "",
            *[f"- {note}" for note in batch["notes"]],
            *([""] if batch["notes"] else []),
        ]
    return "\n".join(lines).rstrip() + "\n"


def metrics(document: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers, flat, for KFP ``Metrics.log_metric`` (absent ones left out)."""
    measured = document["measured"]
    steps = measured["steps"]
    found: dict[str, float | None] = {
        "cold_start_s": measured["cold_start_s"],
        "peak_memory_mib": max((s["peak_memory_bytes"] for s in steps), default=0) / MIB,
        "cpu_limit": measured["cpu_limit"],
        "scale": measured["scale"],
        "steps": len(steps),
        "latency_slo_ms": document["latency_slo_ms"],
        "refused": 1.0 if document["refusal"] else 0.0,
    }
    best = next((s for s in steps if s["concurrency"] == document["best_concurrency"]), None)
    if best:
        found |= {
            "best_concurrency": best["concurrency"],
            "best_requests_per_s": best["requests_per_s"],
            "best_instances_per_s": best["instances_per_s"],
            "best_p99_ms": best["p99_ms"],
        }
    if document["deploy"]:
        deploy = document["deploy"]
        for name in (
            "per_replica_qps",
            "min_replica_count",
            "max_replica_count",
            "autoscaling_target",
        ):
            found[f"deploy_{name}"] = deploy[name]
    if document["batch"]:
        batch = document["batch"]
        for name in ("batch_size", "replica_count", "request_s", "estimated_minutes"):
            found[f"batch_{name}"] = batch[name]
    return {name: float(value) for name, value in found.items() if value is not None}


@dataclass(frozen=True)
class ReportFiles:
    """Where ``write_report`` put the three files."""

    json: Path
    markdown: Path
    png: Path


def write_report(directory: Path, document: Mapping[str, Any], png: bytes) -> ReportFiles:
    """``capacity.json``, ``capacity.png`` and ``capacity.md`` (plot embedded and linked) in
    ``directory``, each replaced in one step."""
    files = ReportFiles(
        json=directory / JSON_NAME, markdown=directory / MARKDOWN_NAME, png=directory / PNG_NAME
    )
    write_json_atomically(files.json, dict(document))
    write_bytes_atomically(files.png, png)
    text = markdown(document, png=png, png_name=PNG_NAME)
    write_bytes_atomically(files.markdown, text.encode("utf-8"))
    return files
