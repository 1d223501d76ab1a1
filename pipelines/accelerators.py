"""Which GPUs Vertex AI lets each machine type carry (online and batch prediction).

From Vertex's "Configure compute resources for inference" page: N1 machines take P100, V100,
P4 or T4 in given counts; accelerator-optimized series (G2, A2, A3, ...) have their GPU type
and count fixed by the machine type. Checked before a run is submitted, because Vertex only
rejects a wrong pair after the batch job has been queued.
"""

from __future__ import annotations

import re

ACCELERATOR_TYPES = frozenset(
    {
        "NVIDIA_TESLA_P100",
        "NVIDIA_TESLA_V100",
        "NVIDIA_TESLA_P4",
        "NVIDIA_TESLA_T4",
        "NVIDIA_TESLA_A100",
        "NVIDIA_A100_80GB",
        "NVIDIA_L4",
        "NVIDIA_H100_80GB",
        "NVIDIA_H100_MEGA_80GB",
        "NVIDIA_H200_141GB",
        "NVIDIA_B200",
        "NVIDIA_GB200",
        "NVIDIA_RTX_PRO_6000",
    }
)

# N1 GPU counts by vCPU count of the machine (2/4/8, 16, 32).
_N1_COUNTS = {
    "NVIDIA_TESLA_P100": {8: (1, 2, 4), 16: (1, 2, 4), 32: (2, 4)},
    "NVIDIA_TESLA_V100": {8: (1, 2, 4, 8), 16: (2, 4, 8), 32: (4, 8)},
    "NVIDIA_TESLA_P4": {8: (1, 2, 4), 16: (1, 2, 4), 32: (2, 4)},
    "NVIDIA_TESLA_T4": {8: (1, 2, 4), 16: (1, 2, 4), 32: (2, 4)},
}
_N1 = re.compile(r"^n1-(standard|highmem|highcpu)-(2|4|8|16|32)$")

# Accelerator-optimized machine types: (GPU type, GPU count).
_FIXED: dict[str, tuple[str, int]] = {
    **{f"g2-standard-{n}": ("NVIDIA_L4", 1) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("NVIDIA_L4", 2),
    "g2-standard-48": ("NVIDIA_L4", 4),
    "g2-standard-96": ("NVIDIA_L4", 8),
    **{f"a2-highgpu-{n}g": ("NVIDIA_TESLA_A100", n) for n in (1, 2, 4, 8)},
    "a2-megagpu-16g": ("NVIDIA_TESLA_A100", 16),
    **{f"a2-ultragpu-{n}g": ("NVIDIA_A100_80GB", n) for n in (1, 2, 4, 8)},
    **{f"a3-highgpu-{n}g": ("NVIDIA_H100_80GB", n) for n in (1, 2, 4, 8)},
    "a3-edgegpu-8g": ("NVIDIA_H100_80GB", 8),
    "a3-ultragpu-8g": ("NVIDIA_H200_141GB", 8),
    "a4-highgpu-8g": ("NVIDIA_B200", 8),
    "a4x-highgpu-4g": ("NVIDIA_GB200", 4),
    "g4-standard-48": ("NVIDIA_RTX_PRO_6000", 1),
    "g4-standard-96": ("NVIDIA_RTX_PRO_6000", 2),
    "g4-standard-192": ("NVIDIA_RTX_PRO_6000", 4),
    "g4-standard-384": ("NVIDIA_RTX_PRO_6000", 8),
}


def check_accelerator(machine_type: str, accelerator_type: str, accelerator_count: int) -> None:
    """Raise ``ValueError`` naming the fault if Vertex would refuse this GPU configuration.

    An empty ``accelerator_type`` means a CPU-only job and is always accepted.
    """
    if not accelerator_type:
        return
    if accelerator_type not in ACCELERATOR_TYPES:
        raise ValueError(
            f"accelerator type {accelerator_type!r} is not one Vertex offers; "
            f"choose one of {sorted(ACCELERATOR_TYPES)}"
        )
    if machine_type in _FIXED:
        gpu, count = _FIXED[machine_type]
        if (accelerator_type, accelerator_count) != (gpu, count):
            raise ValueError(
                f"machine type {machine_type} comes with {count} x {gpu}; set "
                f"accelerator type {gpu} and count {count} (got {accelerator_count} x "
                f"{accelerator_type})"
            )
        return
    match = _N1.match(machine_type)
    if not match:
        raise ValueError(
            f"machine type {machine_type!r} cannot carry GPUs on Vertex prediction; use an "
            "n1-* machine (T4, P4, P100, V100) or a GPU machine such as g2-standard-8 (L4)"
        )
    if accelerator_type not in _N1_COUNTS:
        raise ValueError(
            f"{accelerator_type} cannot be attached to N1 machines; use "
            f"{sorted(_N1_COUNTS)} or a matching accelerator-optimized machine type"
        )
    vcpus = int(match.group(2))
    allowed = _N1_COUNTS[accelerator_type][8 if vcpus <= 8 else vcpus]
    if accelerator_count not in allowed:
        raise ValueError(
            f"{machine_type} takes {list(allowed)} x {accelerator_type}, not {accelerator_count}"
        )
