"""Vertex AI's prediction machine types as data, what a serving container gets of one, and the
share of one this host can measure.

The table is generated from each family's rule (vCPU sizes, memory per vCPU, GPUs), as
Compute Engine publishes them for the families Vertex AI serves on. Memory is in GiB as
Compute Engine counts it (its ``memoryMb`` is MiB: n1-standard-1 is 3840). Families that are
not here (a2, a3, c2, n2d, ...) are refused by name, not guessed.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

MIB = 1024**2
GIB = 1024**3

L4 = "NVIDIA_L4"
"""Vertex's ``AcceleratorType`` name of the GPU on g2 machines."""


@dataclass(frozen=True)
class MachineType:
    """One machine type: its vCPUs, its memory and its GPUs (``gpu_type`` is Vertex's
    ``AcceleratorType`` name, ``None`` without GPUs)."""

    name: str
    vcpus: int
    memory_bytes: int
    gpus: int = 0
    gpu_type: str | None = None

    @property
    def family(self) -> str:
        """``n1-standard`` of ``n1-standard-4``."""
        return self.name.rpartition("-")[0]


@dataclass(frozen=True)
class Family:
    """A family's rule: the vCPU counts it comes in and the memory per vCPU; ``gpus`` pairs a
    vCPU count with its fixed GPU count (accelerator-optimized families only)."""

    name: str
    gib_per_vcpu: float
    sizes: tuple[int, ...]
    gpu_type: str | None = None
    gpus: tuple[tuple[int, int], ...] = ()


FAMILIES: tuple[Family, ...] = (
    Family("e2-standard", 4.0, (2, 4, 8, 16, 32)),
    Family("e2-highmem", 8.0, (2, 4, 8, 16)),
    Family("e2-highcpu", 1.0, (2, 4, 8, 16, 32)),
    Family("n1-standard", 3.75, (2, 4, 8, 16, 32, 64, 96)),
    Family("n1-highmem", 6.5, (2, 4, 8, 16, 32, 64, 96)),
    Family("n1-highcpu", 0.9, (2, 4, 8, 16, 32, 64, 96)),
    Family("n2-standard", 4.0, (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)),
    Family("n2-highmem", 8.0, (2, 4, 8, 16, 32, 48, 64, 80, 96, 128)),
    Family("n2-highcpu", 1.0, (2, 4, 8, 16, 32, 48, 64, 80, 96)),
    Family(
        "g2-standard",
        4.0,
        (4, 8, 12, 16, 24, 32, 48, 96),
        gpu_type=L4,
        gpus=((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8)),
    ),
)
"""The families' rules (Compute Engine's machine families pages)."""

MEMORY_EXCEPTIONS_GIB: Mapping[str, float] = MappingProxyType({"n2-highmem-128": 864.0})
"""The machines whose memory breaks their family's per-vCPU rule."""


def _generate() -> dict[str, MachineType]:
    table = {}
    for family in FAMILIES:
        for vcpus in family.sizes:
            name = f"{family.name}-{vcpus}"
            gib = MEMORY_EXCEPTIONS_GIB.get(name, family.gib_per_vcpu * vcpus)
            gpus = dict(family.gpus).get(vcpus, 0)
            table[name] = MachineType(
                name=name,
                vcpus=vcpus,
                memory_bytes=round(gib * 1024) * MIB,  # whole MiB, as memoryMb
                gpus=gpus,
                gpu_type=family.gpu_type if gpus else None,
            )
    return table


MACHINE_TYPES: Mapping[str, MachineType] = MappingProxyType(_generate())
"""Every machine type by name."""

EVICTION_RESERVE_BYTES = 100 * MIB
"""Memory the kubelet keeps free before it evicts (GKE's hard eviction threshold)."""
SMALL_MACHINE_RESERVE_BYTES = 255 * MIB
"""GKE's memory reserve for a machine under 1 GiB."""
MEMORY_RESERVE_TIERS: tuple[tuple[float, float], ...] = (
    (4, 0.25),
    (8, 0.20),
    (16, 0.10),
    (128, 0.06),
    (math.inf, 0.02),
)
"""GKE's memory reserve: (up to GiB, share of the memory in this tier)."""
CPU_RESERVE_TIERS: tuple[tuple[float, float], ...] = (
    (1, 0.06),
    (2, 0.01),
    (4, 0.005),
    (math.inf, 0.0025),
)
"""GKE's CPU reserve: (up to vCPUs, share of the vCPUs in this tier)."""
MIN_MEASURED_CPUS = 0.5
"""Ours: the smallest CPU limit worth measuring under; below it timer and scheduling noise
outweigh the server."""


@dataclass(frozen=True)
class Usable:
    """What a serving container can use of one machine: vCPUs and memory bytes."""

    cpus: float
    memory_bytes: int


def _tiered(amount: float, tiers: tuple[tuple[float, float], ...]) -> float:
    reserved, floor = 0.0, 0.0
    for ceiling, share in tiers:
        if amount <= floor:
            break
        reserved += (min(amount, ceiling) - floor) * share
        floor = ceiling
    return reserved


def usable(machine: MachineType) -> Usable:
    """The machine less the reserve of the node's own agents.

    Ours: Vertex AI publishes no figure for what its agents (kubelet, logging, monitoring, its
    prediction proxy) keep of a replica's node. Vertex runs replicas on Kubernetes, so we take
    GKE's published node reserve: CPU 6 % of the first vCPU, 1 % of the second, 0.5 % of the
    third and fourth, 0.25 % of the rest; memory 25 % of the first 4 GiB, 20 % of the next 4,
    10 % of the next 8, 6 % of the next 112, 2 % above 128 GiB (255 MiB under 1 GiB), plus the
    100 MiB eviction threshold. CPU is rounded down to 0.01 vCPU, memory to 1 MiB.
    """
    gib = machine.memory_bytes / GIB
    if machine.memory_bytes < GIB:
        memory_reserve = SMALL_MACHINE_RESERVE_BYTES
    else:
        memory_reserve = math.ceil(_tiered(gib, MEMORY_RESERVE_TIERS) * GIB)
    memory = machine.memory_bytes - memory_reserve - EVICTION_RESERVE_BYTES
    cpus = machine.vcpus - _tiered(machine.vcpus, CPU_RESERVE_TIERS)
    return Usable(cpus=math.floor(cpus * 100 + 1e-9) / 100, memory_bytes=memory // MIB * MIB)


def family_names() -> tuple[str, ...]:
    """The families in the table, in table order."""
    return tuple(family.name for family in FAMILIES)


def machine_type(name: str) -> MachineType:
    """The machine type called ``name``; ``ValueError`` naming the families and the nearest
    names when the table has no such machine."""
    try:
        return MACHINE_TYPES[name]
    except KeyError:
        pass
    family = name.rpartition("-")[0]
    nearest = [m for m in MACHINE_TYPES if m.rpartition("-")[0] == family]
    nearest = nearest or difflib.get_close_matches(name, list(MACHINE_TYPES), n=4, cutoff=0.6)
    hint = f"; nearest: {', '.join(nearest)}" if nearest else ""
    raise ValueError(
        f"machine type {name!r} is not one Vertex AI serves on in our table (families: "
        f"{', '.join(family_names())}){hint}; name one of these"
    )


def smallest_fitting(
    memory_bytes: int,
    *,
    family: str | None = None,
    min_vcpus: float = 1,
    gpus: bool = False,
) -> MachineType:
    """The smallest machine whose usable memory holds ``memory_bytes`` and that has at least
    ``min_vcpus`` vCPUs: fewest vCPUs first (price follows vCPUs), then least memory,
    then name. Only ``family`` when given; GPU machines only with ``gpus=True`` (or a GPU
    ``family``). ``ValueError`` when none fits."""
    if family is not None and family not in family_names():
        raise ValueError(
            f"family {family!r} is not in our table ({', '.join(family_names())}); name one "
            "of these or none"
        )
    candidates = [
        machine
        for machine in MACHINE_TYPES.values()
        if (family is None or machine.family == family)
        and (family is not None or gpus or not machine.gpus)
        and usable(machine).memory_bytes >= memory_bytes
        and machine.vcpus >= min_vcpus
    ]
    if not candidates:
        where = f"family {family}" if family else "our table"
        raise ValueError(
            f"no machine type in {where} has {memory_bytes / GIB:.2f} GiB of usable memory and "
            f"{min_vcpus:g} vCPUs (the usable rule keeps a reserve for Vertex's agents); "
            "reduce the model's memory or look beyond these families"
        )
    return min(candidates, key=lambda m: (m.vcpus, m.memory_bytes, m.name))


@dataclass(frozen=True)
class Share:
    """The limits to measure ``machine`` under on this host, and the factor that scales the
    measured throughput up to the whole machine (1.0: measured at the full usable share)."""

    machine: MachineType
    cpu_limit: float
    memory_limit_bytes: int
    scale: float
    host_cpus: float
    load_cpus: float

    @property
    def scaled(self) -> bool:
        """Whether the throughput is extrapolated rather than measured at full size."""
        return self.scale > 1.0

    def note(self) -> str:
        """What the measurement stands for, in a sentence for the report."""
        machine_cpus = usable(self.machine).cpus
        memory = f"{self.memory_limit_bytes / GIB:.2f} GiB"
        if not self.scaled:
            return (
                f"measured at {self.machine.name}'s full usable share: {self.cpu_limit:g} vCPUs "
                f"and {memory}"
            )
        return (
            f"measured under a {self.cpu_limit:g} vCPU limit, not {self.machine.name}'s "
            f"{machine_cpus:g} usable vCPUs ({memory}): this host has {self.host_cpus:g} CPUs "
            f"and keeps {self.load_cpus:g} for the load generator. Throughput is scaled by "
            f"{self.scale:g}, which assumes it grows in proportion to CPU: an upper bound, "
            "reached only when the server runs as many workers as the machine has vCPUs"
        )


def measurable_share(machine: MachineType, host_cpus: float, load_cpus: float) -> Share:
    """The CPU limit the container gets beside the load generator, and the scale factor.

    The container is limited to the machine's usable vCPUs when the host has them beside the
    ``load_cpus`` the load generator needs (``scale`` 1.0); otherwise to what is left, rounded
    down to 0.01 vCPU, and ``scale`` is usable vCPUs / limit (rounded to 0.001). Memory is
    always the machine's usable memory: memory is not scaled. ``ValueError`` when less than
    ``MIN_MEASURED_CPUS`` is left.
    """
    if host_cpus <= 0 or load_cpus < 0:
        raise ValueError(
            f"host_cpus={host_cpus!r}, load_cpus={load_cpus!r}: the host needs CPUs and the "
            "load generator a non-negative number of them"
        )
    share = usable(machine)
    left = math.floor((host_cpus - load_cpus) * 100 + 1e-9) / 100
    if left < MIN_MEASURED_CPUS:
        raise ValueError(
            f"this host has {host_cpus:g} CPUs and the load generator keeps {load_cpus:g}: "
            f"{left:g} left is under the {MIN_MEASURED_CPUS:g} CPU minimum to measure under; "
            "run on a host with more CPUs or give the load generator fewer"
        )
    limit = min(share.cpus, left)
    return Share(
        machine=machine,
        cpu_limit=limit,
        memory_limit_bytes=share.memory_bytes,
        scale=round(share.cpus / limit, 3),
        host_cpus=host_cpus,
        load_cpus=load_cpus,
    )
