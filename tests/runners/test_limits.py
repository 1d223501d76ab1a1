"""CPU and memory limits on a server, and the resource use read from its cgroup.

A real container under ``--cpus 0.5 --memory 256 MiB`` (the base image running a Python
script that fills memory and then spins): the engine records both limits, the CPU seconds
its cgroup counts grow with the work but no faster than the limit lets them, the time held
back by the limit grows, and the peak memory holds what the script filled. Over its memory
limit a container is killed, not swapped; a worker process killed for memory is counted while
the container lives on. Process mode refuses limits it cannot apply.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.runners import (
    Engine,
    ProcessRunner,
    ServerSpec,
    StartError,
    UsageUnavailableError,
    free_local_port,
    start_server,
)
from components.runners import process as sp

MIB = 1024 * 1024
FILL_MIB = 64
FILL_AND_SPIN = f"""
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
block = b"x" * ({FILL_MIB} * {MIB})  # written, so charged to the cgroup
print("filled", flush=True)
while True:
    pass
"""
LABELS = {"test": "runner-limits"}


def spinning(
    image: str, *, cpus: float | None = None, memory_bytes: int | None = None
) -> ServerSpec:
    """The base image running ``FILL_AND_SPIN`` under the limits given."""
    return ServerSpec(
        image,
        entrypoint="python",
        args=("-c", FILL_AND_SPIN),
        labels=LABELS,
        stop_timeout_s=5,
        cpus=cpus,
        memory_bytes=memory_bytes,
    )


def test_a_spec_refuses_limits_that_limit_nothing() -> None:
    with pytest.raises(ValueError, match="cpus=0: a CPU limit must be above 0"):
        ServerSpec("image", cpus=0)
    with pytest.raises(ValueError, match=r"cpus=-1\.0"):
        ServerSpec("image", cpus=-1.0)
    with pytest.raises(ValueError, match="memory_bytes=1024: a memory limit must be at least"):
        ServerSpec("image", memory_bytes=1024)
    assert not ServerSpec("image").limited
    assert ServerSpec("image", cpus=0.5).limited
    assert ServerSpec("image", memory_bytes=512 * MIB).limited


def test_process_mode_refuses_limits_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sp.PROCESS_DIR_ENV, str(tmp_path))
    spec = ServerSpec("image", env={"AIP_STORAGE_URI": str(tmp_path)}, cpus=1.0)
    with pytest.raises(StartError, match=r"process mode cannot limit .* cpus=1.0"):
        ProcessRunner().start(spec, free_local_port())
    with pytest.raises(StartError, match="no cgroup of its own"):
        ProcessRunner().start(ServerSpec("image", memory_bytes=512 * MIB), free_local_port())
    assert not list(tmp_path.iterdir()), "process mode started a server it could not limit"


@pytest.mark.container
def test_limits_reach_the_container_and_its_cgroup_counts_the_work(
    engine: Engine, base_image: str
) -> None:
    spec = spinning(base_image, cpus=0.5, memory_bytes=256 * MIB)
    with start_server(engine, spec) as container:
        host = container.runner.command(
            "inspect",
            "--format",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}}",
            container.id,
        ).stdout.split()
        assert host == [str(500_000_000), str(256 * MIB), str(256 * MIB)]  # no swap beyond

        deadline = time.monotonic() + 30
        while "filled" not in container.logs():
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.1)
        first = container.usage()
        started = time.monotonic()
        time.sleep(2.0)
        second = container.usage()
        wall = time.monotonic() - started

        used = second.cpu_seconds - first.cpu_seconds
        assert used > 0.3 * wall, f"{used:.2f} CPU s in {wall:.2f} s: the spinning went uncounted"
        assert used < 0.5 * wall + 0.1, f"{used:.2f} CPU s in {wall:.2f} s: over the 0.5 limit"
        assert first.throttled_seconds is not None and second.throttled_seconds is not None
        assert second.throttled_seconds > first.throttled_seconds  # the limit held it back
        assert second.peak_memory_bytes is not None
        assert FILL_MIB * MIB <= second.peak_memory_bytes <= 256 * MIB
        assert 0 < second.memory_bytes <= second.peak_memory_bytes
        assert second.oom_kills == 0

        stop = container.stop()
        assert (stop.exit_code, stop.killed) == (0, False)
        with pytest.raises(UsageUnavailableError, match="cgroup goes when it exits"):
            container.usage()


@pytest.mark.container
def test_over_its_memory_limit_a_container_is_killed(engine: Engine, base_image: str) -> None:
    spec = spinning(base_image, memory_bytes=FILL_MIB // 2 * MIB)
    with start_server(engine, spec) as container:
        deadline = time.monotonic() + 30
        while (state := container.state()).running:
            assert time.monotonic() < deadline, "filling 64 MiB under a 32 MiB limit went on"
            time.sleep(0.1)
        # SIGKILL from the kernel, not swapped. (podman 4.3 on cgroup v1 leaves OOMKilled
        # false here; the cgroup's own count, below, is what tells.)
        assert state.exit_code == 137, state
        assert "filled" not in container.logs()
        with pytest.raises(UsageUnavailableError, match="not running"):
            container.usage()


WORKER_OVER_LIMIT = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
worker = subprocess.run([sys.executable, "-c", "b = b'x' * ({FILL_MIB} * {MIB})"])
print("worker exit", worker.returncode, flush=True)
time.sleep(60)
"""


@pytest.mark.container
def test_a_worker_killed_for_memory_is_counted_while_the_container_lives(
    engine: Engine, base_image: str
) -> None:
    spec = ServerSpec(
        base_image,
        entrypoint="python",
        args=("-c", WORKER_OVER_LIMIT),
        labels=LABELS,
        stop_timeout_s=5,
        memory_bytes=FILL_MIB // 2 * MIB,
    )
    with start_server(engine, spec) as container:
        deadline = time.monotonic() + 30
        while "worker exit" not in container.logs():
            assert time.monotonic() < deadline, container.logs()
            time.sleep(0.1)
        assert "worker exit -9" in container.logs()  # the largest process went: the worker
        assert container.state().running
        usage = container.usage()
        assert usage.oom_kills is not None and usage.oom_kills >= 1
        assert usage.peak_memory_bytes is not None
        assert usage.peak_memory_bytes <= FILL_MIB // 2 * MIB
