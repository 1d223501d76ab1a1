"""GPU configurations Vertex accepts or refuses, checked before submit."""

import pytest

from pipelines.accelerators import check_accelerator


@pytest.mark.parametrize(
    ("machine", "gpu", "count"),
    [
        ("n1-standard-8", "NVIDIA_TESLA_T4", 1),
        ("n1-highmem-4", "NVIDIA_TESLA_T4", 4),
        ("n1-standard-16", "NVIDIA_TESLA_V100", 8),
        ("n1-standard-32", "NVIDIA_TESLA_P4", 2),
        ("g2-standard-8", "NVIDIA_L4", 1),
        ("a2-highgpu-2g", "NVIDIA_TESLA_A100", 2),
        ("n1-standard-4", "", 0),
        ("e2-standard-4", "", 0),
    ],
)
def test_accepted(machine: str, gpu: str, count: int) -> None:
    check_accelerator(machine, gpu, count)


@pytest.mark.parametrize(
    ("machine", "gpu", "count", "message"),
    [
        ("n1-standard-8", "NVIDIA_TESLA_K80", 1, "'NVIDIA_TESLA_K80' is not one Vertex offers"),
        ("n1-standard-8", "NVIDIA_TESLA_T4", 3, "n1-standard-8 takes [1, 2, 4] x NVIDIA_TESLA_T4"),
        ("n1-standard-32", "NVIDIA_TESLA_T4", 1, "takes [2, 4] x NVIDIA_TESLA_T4, not 1"),
        ("n1-standard-16", "NVIDIA_TESLA_V100", 1, "takes [2, 4, 8] x NVIDIA_TESLA_V100"),
        ("n1-standard-8", "NVIDIA_L4", 1, "NVIDIA_L4 cannot be attached to N1 machines"),
        ("g2-standard-8", "NVIDIA_TESLA_T4", 1, "g2-standard-8 comes with 1 x NVIDIA_L4"),
        ("a2-highgpu-2g", "NVIDIA_TESLA_A100", 1, "comes with 2 x NVIDIA_TESLA_A100"),
        ("e2-standard-8", "NVIDIA_TESLA_T4", 1, "'e2-standard-8' cannot carry GPUs"),
    ],
)
def test_refused(machine: str, gpu: str, count: int, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        check_accelerator(machine, gpu, count)
    assert message in str(caught.value)
