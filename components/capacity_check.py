"""The ``capacity_check`` component: the image's measured capacity on a Vertex machine type,
and the replicas, autoscaling target and batch size it advises.

The work is ``components.capacity.measure_capacity``; this module declares the KFP component
around it.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def capacity_check(
    image_uri: str,
    model: Input[Model],
    capacity: Output[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
    machine_type: str = "n1-standard-2",
    latency_slo_ms: float = 200.0,
    expected_qps: float = 10.0,
    instances_per_request: int = 1,
    batch_instances: int = 100000,
    batch_deadline_minutes: float = 60.0,
) -> NamedTuple(
    "Outputs",
    deploy_min_replicas=int,
    deploy_max_replicas=int,
    autoscaling_target=int,
    batch_size=int,
    batch_replica_count=int,
):
    """Measure the serving image under ``machine_type``'s CPU and memory and advise.

    Starts ``image_uri`` as Vertex would (the model mounted, ``AIP_*`` set) with the machine's
    usable vCPUs and memory as ``--cpus``/``--memory`` (a fraction of them, scaled up, when
    this host has fewer beside the load generator: the report says so), times the cold start,
    and drives a stepped load (1, 2, 4, ... concurrent clients, ``instances_per_request`` per
    request, bounded time) to the highest throughput whose p99 stays within
    ``latency_slo_ms``, recording requests/s, instances/s, p50/p99, errors, CPU and peak
    memory (cgroup) per step. From that and ``expected_qps`` it advises deploy replicas and
    the CPU autoscaling target; from ``batch_instances`` and ``batch_deadline_minutes`` the
    batch size (each request well within Vertex's 60 s and the body limit) and replicas. A
    machine the model does not fit (memory) or cannot start on within the startup window is
    refused: the task fails naming a machine that fits. Needs podman or docker (a Vertex
    Pipelines task has none: run it locally or with ``compile.py capacity``); where it cannot
    measure (process mode, a host without a core to spare for the load generator) it reports
    that nothing was measured and advises nothing (all zeros), and the run goes on.

    Args:
        image_uri: the serving image (as the engine knows it).
        model: the train component's model directory.
        machine_type: the Vertex machine type to measure for (``n1-standard-2``, ...).
        latency_slo_ms: the p99 latency objective.
        expected_qps: the requests per second the endpoint should serve.
        instances_per_request: instances in each request of the load.
        batch_instances: instances a batch job predicts.
        batch_deadline_minutes: how long that job may take.

    Returns:
        capacity: ``capacity.json`` (uri): steps, cold start, advice, refusal.
        report: the report with the plot of throughput and p99 against concurrency.
        metrics: the figures for the Vertex UI.
        deploy_min_replicas: advised minimum replicas (0 when no step met the objective).
        deploy_max_replicas: advised maximum replicas (0 likewise).
        autoscaling_target: advised CPU utilization target (0 likewise).
        batch_size: advised instances per batch request (0 likewise).
        batch_replica_count: advised batch replicas (0 likewise).
    """
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from components.capacity import CapacityError, cannot_measure_here, measure_capacity
    from components.capacity import metrics as metrics_of

    names = [
        "deploy_min_replicas",
        "deploy_max_replicas",
        "autoscaling_target",
        "batch_size",
        "batch_replica_count",
    ]
    reason = cannot_measure_here(machine_type)
    if reason:
        text = (
            f"# Capacity: not measured\n\n{reason}: nothing to advise from. Measure where "
            "podman or docker runs with a core to spare (`compile.py capacity`).\n"
        )
        Path(report.path).write_text(text, encoding="utf-8")
        Path(capacity.path).write_text("{}", encoding="utf-8")
        metrics.log_metric("measured", 0)
        print(text)
        return namedtuple("Outputs", names)(0, 0, 0, 0, 0)
    out = Path(tempfile.mkdtemp(prefix="capacity-"))
    result = measure_capacity(
        image_uri,
        model.path,
        out,
        machine=machine_type,
        latency_slo_ms=latency_slo_ms,
        expected_qps=expected_qps,
        instances_per_request=instances_per_request,
        batch_instances=batch_instances,
        batch_deadline_minutes=batch_deadline_minutes,
    )
    shutil.copyfile(result.files.json, capacity.path)
    Path(report.path).write_text(result.files.markdown.read_text(encoding="utf-8"))
    for name, value in metrics_of(result.document).items():
        metrics.log_metric(name, value)
    print(result.files.markdown.read_text(encoding="utf-8").split("![", 1)[0])
    if result.refusal:
        raise CapacityError(f"{image_uri} on {machine_type}: {result.refusal}")
    deploy, batch = result.deploy, result.batch
    return namedtuple("Outputs", names)(
        deploy.min_replica_count if deploy else 0,
        deploy.max_replica_count if deploy else 0,
        deploy.autoscaling_target if deploy else 0,
        batch.batch_size if batch else 0,
        batch.replica_count if batch else 0,
    )
