"""``compile.py batch-predict`` against a real model server process (no container).

The command line is the batch runner on its own: any server URL, Vertex's output files,
exit status 0 only when every instance got a prediction.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving_image.server import artifact
from tests.support import REPO_ROOT
from tests.support.servers import LaunchedServer, StartupTimeline


def batch_predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "compile.py", "batch-predict", "--no-progress", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lines(directory: Path, pattern: str) -> list[Any]:
    return [
        json.loads(line)
        for path in sorted(directory.glob(pattern))
        for line in path.read_text().splitlines()
    ]


def test_every_line_becomes_one_prediction_or_one_error_and_the_exit_status_says_which(
    penguins_server: tuple[LaunchedServer, StartupTimeline],
    penguins_model_dir: Path,
    tmp_path: Path,
) -> None:
    server = penguins_server[0]
    instances = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
    source = tmp_path / "instances.jsonl"
    bad = {**instances[0], "bill_length_mm": "not a number"}
    rows = [json.dumps(i) for i in instances] + [json.dumps(bad), "{not json"]
    source.write_text("\n".join(rows) + "\n")

    out = tmp_path / "out"
    url = server.url(server.predict_route)
    result = batch_predict("--url", url, "--instances", str(source), "--output-dir", str(out))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{len(rows)} instances in = {len(instances)} predictions + 2 errors" in result.stdout
    results = lines(out, "prediction.results-*")
    # Equal up to float rounding: batch sizes change the order of BLAS sums.
    for result_line, want in zip(results, expected, strict=True):
        assert result_line["prediction"]["label"] == want["label"]
        assert result_line["prediction"]["probabilities"] == pytest.approx(want["probabilities"])
    assert [r["instance"] for r in results] == instances
    errors = lines(out, "prediction.errors_stats-*")
    assert len(errors) == 2
    assert all(e["error"]["code"] and e["error"]["message"] for e in errors)

    clean = tmp_path / "clean.jsonl"
    clean.write_text("\n".join(json.dumps(i) for i in instances) + "\n")
    again = batch_predict(
        "--url", url, "--instances", str(clean), "--output-dir", str(tmp_path / "out2")
    )
    assert again.returncode == 0, again.stdout + again.stderr


def test_an_unreadable_input_is_named_with_exit_status_2(tmp_path: Path) -> None:
    result = batch_predict(
        "--url",
        "http://127.0.0.1:9/predict",
        "--instances",
        str(tmp_path / "missing.jsonl"),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert "missing.jsonl" in result.stderr


def test_bad_timeout_and_retry_settings_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "instances.jsonl"
    source.write_text("[1]\n")
    common = ["--url", "http://127.0.0.1:9/predict", "--instances", str(source)]
    out = ["--output-dir", str(tmp_path / "out")]
    timeout = batch_predict(*common, *out, "--timeout", "0")
    assert timeout.returncode == 2 and "--timeout must be more than 0" in timeout.stderr
    retries = batch_predict(*common, *out, "--max-retries", "-1")
    assert retries.returncode == 2 and "--max-retries must be 0 or more" in retries.stderr
    assert not (tmp_path / "out").exists()
