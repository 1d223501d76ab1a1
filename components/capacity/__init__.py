"""A serving image's measured capacity, and what it decides: replicas, machine and batch size.

``machines`` is Vertex AI's prediction machine types as data, what a container can use of one
and the share of one this host can measure; ``load`` and ``measure`` run the image under a
machine's limits and fill a ``Capacity``; ``advice`` turns it into replica counts, the
autoscaling target, a batch size, or a refusal; ``report`` writes ``capacity.json``, Markdown
with a plot, and the numbers for KFP ``Metrics``; ``run`` is one capacity step, all of them
in order.
"""

from components.capacity.advice import (
    BATCH_EFFICIENCY,
    BATCH_STARTUP_ALLOWANCE_S,
    CPU_UTILIZATION_METRIC,
    DEFAULT_TARGET_UTILIZATION,
    MEMORY_HEADROOM,
    PEAK_FACTOR,
    STARTUP_WINDOW_S,
    TIMEOUT_SAFETY,
    BatchAdvice,
    Capacity,
    CapacityError,
    DeployAdvice,
    Step,
    batch_advice,
    best_step,
    deploy_advice,
    no_step_reason,
    refusal,
)
from components.capacity.machines import (
    MACHINE_TYPES,
    MachineType,
    Share,
    Usable,
    machine_type,
    measurable_share,
    smallest_fitting,
    usable,
)
from components.capacity.report import (
    SCHEMA_VERSION,
    capacity_document,
    markdown,
    metrics,
    plot_png,
    read_capacity,
    write_report,
)
from components.capacity.run import CapacityResult, cannot_measure_here, measure_capacity

__all__ = [
    "BATCH_EFFICIENCY",
    "BATCH_STARTUP_ALLOWANCE_S",
    "CPU_UTILIZATION_METRIC",
    "DEFAULT_TARGET_UTILIZATION",
    "MACHINE_TYPES",
    "MEMORY_HEADROOM",
    "PEAK_FACTOR",
    "SCHEMA_VERSION",
    "STARTUP_WINDOW_S",
    "TIMEOUT_SAFETY",
    "BatchAdvice",
    "Capacity",
    "CapacityError",
    "CapacityResult",
    "DeployAdvice",
    "MachineType",
    "Share",
    "Step",
    "Usable",
    "batch_advice",
    "best_step",
    "cannot_measure_here",
    "capacity_document",
    "deploy_advice",
    "machine_type",
    "markdown",
    "measurable_share",
    "measure_capacity",
    "metrics",
    "no_step_reason",
    "plot_png",
    "read_capacity",
    "refusal",
    "smallest_fitting",
    "usable",
    "write_report",
]
