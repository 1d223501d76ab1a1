"""One capacity step end to end (``measure_capacity``, ``compile.py capacity``) on real images:
the penguins serving image measured for a machine type under two CPU shares of this host,
scaled to the same machine (the advice agrees) and to a larger one (the advice follows it); a
memory-hungry image refused for a small machine, naming one it fits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from components.capacity import measure_capacity
from components.capacity.measure import host_cpus
from components.runners import Engine
from tests.support import compile_cli

pytestmark = pytest.mark.container

# See test_measure: a plateau the server's CPU sets (the scikit-learn path: the compiled
# graph is so fast that the load generator, not the limit, would set it).
NO_MERGING = {"SERVING_MAX_BATCH_INSTANCES": "1", "SERVING_PREDICTOR": "scikit-learn"}
BUDGET_S = 30.0
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def two_cpus() -> None:
    if host_cpus() < 2:
        pytest.skip("measuring needs 2 CPUs: one for the server's limit, one for the load")


def measure(image: str, model_dir: Path, out: Path, **options) -> object:
    started = time.monotonic()
    result = measure_capacity(
        image, model_dir, out, budget_seconds=BUDGET_S, latency_slo_ms=1000.0, **options
    )
    TIMINGS[f"{out.name}"] = time.monotonic() - started
    assert TIMINGS[out.name] < 90
    return result


def test_two_shares_scale_to_the_same_machine_and_a_larger_machine_to_more(
    engine: Engine, serving_image_without_model: str, model_dir: Path, tmp_path: Path
) -> None:
    options = {"engine": engine, "env": NO_MERGING, "instances_per_request": 5}
    options |= {"expected_qps": 2000.0}
    one = measure(serving_image_without_model, model_dir, tmp_path / "n1-2-at-1", cpus=1.0,
                  machine="n1-standard-2", **options)  # fmt: skip
    half = measure(serving_image_without_model, model_dir, tmp_path / "n1-2-at-half",
                   cpus=0.5, machine="n1-standard-2", **options)  # fmt: skip
    larger = measure(serving_image_without_model, model_dir, tmp_path / "n1-8-at-1", cpus=1.0,
                     machine="n1-standard-8", **options)  # fmt: skip
    for result in (one, half, larger):
        assert result.refusal is None and result.deploy is not None
        assert "Measured under a" in result.document["measurement_note"]  # scaled, and said
        for name in ("capacity.json", "capacity.md", "capacity.png"):
            assert (result.files.json.parent / name).is_file()
    measured = [r.document["measured"]["scale"] for r in (one, half, larger)]
    assert measured[1] == pytest.approx(2 * measured[0], rel=0.01)
    # Half the CPU, twice the scale: the same machine's advice, within 30%.
    ratio = one.deploy.per_replica_qps / half.deploy.per_replica_qps
    assert 0.7 <= ratio <= 1.3, (one.deploy, half.deploy)
    # A machine with four times the vCPUs: about four times a replica, fewer replicas.
    grows = larger.deploy.per_replica_qps / one.deploy.per_replica_qps
    assert 3.0 <= grows <= 5.0, (one.deploy, larger.deploy)
    assert larger.deploy.min_replica_count <= one.deploy.min_replica_count
    # At most a quarter of Vertex's 60 s (request_s is rounded: 14.98 s reads 15.0).
    assert one.batch is not None and one.batch.request_s <= 60 / 4


def test_a_memory_hungry_image_is_refused_for_a_small_machine_naming_one_it_fits(
    wrong_answers_image: str, model_dir: Path, tmp_path: Path
) -> None:
    result = compile_cli(
        "capacity", "--image", wrong_answers_image, "--model-dir", str(model_dir),
        "--machine-type", "e2-highcpu-2", "--output-dir", str(tmp_path),
        "--env", "HOLD_MEMORY_MB=1800",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused: memory rule: peak" in result.stderr
    assert "does not fit e2-highcpu-2's" in result.stderr
    assert "the smallest machine it fits is e2-" in result.stderr
    document = json.loads((tmp_path / "capacity.json").read_text())
    assert "killed for lack of memory under e2-highcpu-2" in document["memory_probe"]


@pytest.mark.parametrize("cpus", [1.0, 1.4])
def test_a_host_without_a_core_to_spare_says_why_it_cannot_measure(
    monkeypatch: pytest.MonkeyPatch, cpus: float
) -> None:
    from components.capacity import run

    monkeypatch.setattr(run, "host_cpus", lambda: cpus)
    reason = run.cannot_measure_here("n1-standard-2")
    assert reason is not None and "the load generator keeps 1" in reason
    with pytest.raises(ValueError, match="n1-standard-3"):
        run.cannot_measure_here("n1-standard-3")  # a typo is an error, not a skip


def test_process_mode_cannot_measure(monkeypatch: pytest.MonkeyPatch) -> None:
    from components.capacity import run
    from components.runners import ENGINE_ENV, PROCESS

    monkeypatch.setenv(ENGINE_ENV, PROCESS)
    assert "process mode" in (run.cannot_measure_here() or "")
