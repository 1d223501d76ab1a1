"""Local batch prediction: inputs as Vertex converts them, faults, resume after SIGKILL, and the
component against the real serving container.

The runner is tested against ``batch_fault_server.py``, a real HTTP server process
that answers 500/503/504, stalls past the runner's timeout, resets connections and answers 400
for poisoned instances. Every instance carries an ``id``; the tests check that each input line
comes out as exactly one prediction line or one error line. ``pytest -s`` shows the figures.

The container tests (``-m container``) build the serving image, register the penguins model
and run ``local_batch_predict`` under kfp.local; without a working engine they are skipped on
a workstation and FAIL in CI (``CI=true``).
"""

import fcntl
import gc
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from components.files import TEMP_SUFFIX
from components.local_batch_predict import local_batch_predict
from components.runners import Engine, free_local_port
from components.stand_ins import (
    ERRORS_PREFIX,
    RESULTS_PREFIX,
    BatchInputError,
    BatchPredictError,
    BatchSummary,
    FieldSelection,
    count_records,
    read_records,
    run_batch,
)
from components.stand_ins.batch_job import JOB_LABEL
from components.stand_ins.batch_runner import LOCK_FILE
from components.stand_ins.resources import JOBS_PREFIX
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from tests.support import REPO_ROOT
from tests.support.stand_ins import container_spec, upload_checked

FAULT_SERVER = Path(__file__).resolve().parent / "batch_fault_server.py"


# --- helpers ---------------------------------------------------------------------------------


def write_jsonl(path: Path, values: list[Any]) -> Path:
    path.write_text("".join(json.dumps(value) + "\n" for value in values))
    return path


def read_lines(directory: Path, prefix: str) -> list[dict[str, Any]]:
    """Every line of every ``<prefix>-*`` file, as Vertex output readers glob them."""
    return [
        json.loads(line)
        for path in sorted(directory.glob(f"{prefix}-*"))
        for line in path.read_text().splitlines()
    ]


def outputs(directory: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return read_lines(directory, RESULTS_PREFIX), read_lines(directory, ERRORS_PREFIX)


def instances_with_ids(count: int, poison: set[int] = frozenset(), short: set[int] = frozenset()):
    rows = []
    for i in range(count):
        row: dict[str, Any] = {"id": i, "x": i * 0.5}
        if i in poison:
            row["poison"] = True
        if i in short:
            row["short"] = True
        rows.append(row)
    return rows


def ids_once(predictions: list[dict[str, Any]], errors: list[dict[str, Any]]) -> Counter[int]:
    """How often each instance id occurs among all output lines."""
    return Counter(line["instance"]["id"] for line in predictions + errors)


@pytest.fixture
def fault_server() -> Iterator[Callable[..., str]]:
    """Factory: start ``batch_fault_server.py`` with options; returns its base URL."""
    processes: list[subprocess.Popen[str]] = []

    def start(*options: str) -> str:
        process = subprocess.Popen(
            [sys.executable, str(FAULT_SERVER), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        processes.append(process)
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("listening on"), f"fault server did not start: {line!r}"
        return f"http://127.0.0.1:{line.split()[-1]}"

    yield start
    for process in processes:
        process.kill()
        process.wait(10)


# --- inputs ----------------------------------------------------------------------------------


def records(path: Path, fmt: str, **selection: Any) -> list[tuple[Any, dict[str, Any], str]]:
    fields = FieldSelection(**selection)
    # The instance as sent (a jsonl line sent whole is held as its own text, a Fragment).
    return [
        (orjson.loads(orjson.dumps(r.instance)), json.loads(r.opening[:-1] + b"}"), r.error)
        for r in read_records([path], fmt, fields)
    ]


def test_jsonl_values_are_sent_as_they_are_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1, "b": "x"}\n\n[1, 2]\r\n"text"\n{oops\n')
    got = records(path, "jsonl")
    assert got[:3] == [
        ({"a": 1, "b": "x"}, {"instance": {"a": 1, "b": "x"}}, ""),
        ([1, 2], {"instance": [1, 2]}, ""),
        ("text", {"instance": "text"}, ""),
    ]
    instance, label, error = got[3]
    assert (instance, label) == (None, {"instance": "{oops"})
    assert error.startswith(f"{path} line 5 is not valid JSON")
    assert count_records(path, "jsonl") == 4


def test_csv_rows_become_arrays_as_vertex_converts_them(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(
        'id,species,"bill length",note\n'
        '1,"Adelie",39.1,"said ""hi"", left"\n'
        '2,"Gentoo",,\n'
        "3,Adelie,40,x\n"  # unquoted text: not a number
        '4,"Gentoo",41\n'  # a value short
        '5,"Gentoo",4e1,"x"y\n'  # text after a closing quote
    )
    got = records(path, "csv")
    assert got[0] == ([1.0, "Adelie", 39.1, 'said "hi", left'], {"instance": got[0][0]}, "")
    assert got[1][0] == [2.0, "Gentoo", None, None]  # empty unquoted cells: null
    assert [error for _, _, error in got[2:]] == [
        f"{path} line 4 is not usable CSV: unquoted value 'Adelie' is not a number; "
        "double-quote strings",
        f"{path} line 5 is not usable CSV: 3 values for the header's 4 columns",
        f"{path} line 6 is not usable CSV: unexpected text after a quoted value at column 19",
    ]
    assert got[2][1] == {"instance": "3,Adelie,40,x"}  # the raw line, never lost
    assert count_records(path, "csv") == 5


def test_key_field_and_field_selection(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"k": "a", "x": 1, "y": 2}, {"x": 3}, [1]])
    got = records(jsonl, "jsonl", key_field="k")
    assert got[0] == ({"x": 1, "y": 2}, {"key": "a"}, "")
    assert got[1][2] == f"{jsonl} line 2: no key field 'k'"
    assert "is not a JSON object" in got[2][2]
    assert records(jsonl, "jsonl", included=("y", "x"))[0][0] == {"y": 2, "x": 1}
    assert records(jsonl, "jsonl", excluded=("k",))[0][:2] == (
        {"x": 1, "y": 2},
        {"instance": {"x": 1, "y": 2}},
    )

    csv = tmp_path / "a.csv"
    csv.write_text('k,x,y\n"a",1,2\n')
    assert records(csv, "csv", key_field="k") == [([1.0, 2.0], {"key": "a"}, "")]
    assert records(csv, "csv", included=("y", "x")) == [([2.0, 1.0], {"instance": [2.0, 1.0]}, "")]
    assert records(csv, "csv", key_field="k", excluded=("y",)) == [([1.0], {"key": "a"}, "")]
    with pytest.raises(BatchInputError, match=r"no column\(s\) \['z'\] in the header"):
        records(csv, "csv", key_field="z")
    with pytest.raises(BatchInputError, match="not both"):
        FieldSelection(included=("x",), excluded=("y",))


def test_missing_inputs_and_bad_settings_are_named(tmp_path: Path) -> None:
    url, out = "http://127.0.0.1:9/predict", tmp_path / "out"
    with pytest.raises(BatchInputError, match=r"nope\.jsonl does not exist"):
        run_batch(url, tmp_path / "nope.jsonl", out)
    with pytest.raises(BatchInputError, match=r"no instances file matches '.*\*\.jsonl'"):
        run_batch(url, str(tmp_path / "*.jsonl"), out)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(BatchInputError, match="no instances in"):
        run_batch(url, tmp_path / "empty.jsonl", out)
    with pytest.raises(BatchInputError, match="instances_format 'tf-record'"):
        run_batch(url, tmp_path / "empty.jsonl", out, instances_format="tf-record")
    with pytest.raises(BatchInputError, match="batch_size must be at least 1"):
        run_batch(url, tmp_path / "empty.jsonl", out, batch_size=0)


def test_output_format_globs_and_keys(tmp_path: Path, fault_server: Callable[..., str]) -> None:
    url = fault_server() + "/predict"
    write_jsonl(tmp_path / "in-1.jsonl", [{"id": 0, "x": 1}, {"id": 1, "x": 2, "poison": True}])
    (tmp_path / "in-2.jsonl").write_text('{"id": 2, "x": 3}\nnot json\n')
    out = tmp_path / "out"

    thresholds = gc.get_threshold()
    summary = run_batch(url, str(tmp_path / "in-*.jsonl"), out, shard_size=3, progress=False)

    assert gc.get_threshold() == thresholds  # rarer collections during the run only
    assert sorted(p.name for p in out.iterdir()) == [
        ".batch-state.json",
        ".batch.lock",
        "prediction.errors_stats-00000-of-00002",
        "prediction.errors_stats-00001-of-00002",
        "prediction.results-00000-of-00002",
        "prediction.results-00001-of-00002",
        "summary.json",
    ]
    # The instance is the input line's own JSON text, copied; the rest is compact.
    assert (out / "prediction.results-00000-of-00002").read_text().splitlines() == [
        '{"instance":{"id": 0, "x": 1},"prediction":{"id":0,"double":2}}',
        '{"instance":{"id": 2, "x": 3},"prediction":{"id":2,"double":6}}',
    ]
    assert read_lines(out, ERRORS_PREFIX) == [
        {
            "instance": {"id": 1, "x": 2, "poison": True},
            "error": {
                "code": 3,
                "message": 'Non-OK result 400 ({"error": "instance 0 is poisoned", "instance": 0})',
            },
        },
        {
            "instance": "not json",
            "error": {
                "code": 3,
                "message": f"{tmp_path / 'in-2.jsonl'} line 2 is not valid JSON: invalid literal, "
                "expected 'null': line 1 column 1 (char 0)",
            },
        },
    ]
    assert (summary.input_count, summary.prediction_count, summary.error_count) == (4, 2, 2)
    assert summary.reconciled and summary.splits == 2  # [0, 1, 2] -> [0] + [1, 2] -> [1] + [2]
    assert json.loads((out / "summary.json").read_text()) == summary.to_json()

    keyed = tmp_path / "keyed"
    rows = [{"k": "a", "id": 0, "x": 1}, {"k": "b", "id": 1, "x": 2, "poison": True}]
    run_batch(url, write_jsonl(tmp_path / "k.jsonl", rows), keyed, key_field="k", progress=False)
    predictions, errors = outputs(keyed)
    assert predictions == [{"key": "a", "prediction": {"id": 0, "double": 2}}]
    assert [(line["key"], line["error"]["code"]) for line in errors] == [("b", 3)]


# --- faults ----------------------------------------------------------------------------------


def run_faulty(base: str, tmp_path: Path, **settings: Any) -> BatchSummary:
    """``run_batch`` of ``tmp_path/in.jsonl`` into ``tmp_path/out`` against the fault server at
    ``base``, retrying at once (backoff 0.01 s)."""
    return run_batch(
        base + "/predict",
        tmp_path / "in.jsonl",
        tmp_path / "out",
        backoff_s=0.01,
        progress=False,
        **settings,
    )


def test_faults_lose_and_duplicate_nothing(
    tmp_path: Path, fault_server: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = fault_server("--fault-rate", "0.1", "--stall-s", "1.0", "--seed", "7")
    poison, short = {17, 500, 1234, 1999}, {800}
    rows = instances_with_ids(2000, poison, short)
    write_jsonl(tmp_path / "in.jsonl", rows)

    started = time.monotonic()
    summary = run_faulty(
        base, tmp_path, batch_size=16, workers=8, timeout_s=0.5, max_retries=4, shard_size=300
    )
    seconds = time.monotonic() - started

    predictions, errors = outputs(tmp_path / "out")
    assert ids_once(predictions, errors) == Counter(range(2000))  # none lost, none duplicated
    for line in predictions:
        assert line["prediction"] == {
            "id": line["instance"]["id"],
            "double": 2 * line["instance"]["x"],
        }
    by_id = {line["instance"]["id"]: line["error"] for line in errors}
    assert set(by_id) == poison | short
    for i in poison:
        assert by_id[i] == {
            "code": 3,
            "message": 'Non-OK result 400 ({"error": "instance 0 is poisoned", "instance": 0})',
        }
    assert by_id[800] == {
        "code": 13,
        "message": "Exceeded retries (5 attempts): answered 0 predictions for 1 instances",
    }
    assert summary.reconciled and summary.input_count == 2000
    assert (summary.prediction_count, summary.error_count) == (1995, 5)
    stats = httpx.get(base + "/stats").json()
    assert all(
        stats.get(f"fault {kind}", 0) > 0 for kind in ("500", "503", "504", "stall", "reset")
    )
    assert summary.retries >= sum(v for k, v in stats.items() if k.startswith("fault"))
    with capsys.disabled():  # the figures show without -s too
        print(
            f"\n  faults: {summary.input_count} lines in, {summary.prediction_count} predictions "
            f"+ {summary.error_count} errors; {summary.requests} requests, {summary.retries} "
            f"retries, {summary.splits} splits, {seconds:.1f} s; server: {stats}"
        )


def test_every_attempt_failing_ends_in_error_lines_not_a_hang(
    tmp_path: Path, fault_server: Callable[..., str]
) -> None:
    base = fault_server("--fault-rate", "1.0", "--stall-s", "0.3")
    write_jsonl(tmp_path / "in.jsonl", instances_with_ids(4))
    summary = run_faulty(base, tmp_path, batch_size=4, timeout_s=0.2, max_retries=1)
    predictions, errors = outputs(tmp_path / "out")
    assert predictions == [] and ids_once(predictions, errors) == Counter(range(4))
    assert all(
        line["error"]["message"].startswith("Exceeded retries (2 attempts): ") for line in errors
    )
    assert {line["error"]["code"] for line in errors} <= {
        4,
        13,
        14,
    }  # deadline, internal, unavailable
    assert summary.splits == 3 and summary.reconciled


def test_a_server_refusing_connections_stops_the_run_and_it_resumes(
    tmp_path: Path, fault_server: Callable[..., str]
) -> None:
    write_jsonl(tmp_path / "in.jsonl", instances_with_ids(10))
    dead = f"http://127.0.0.1:{free_local_port()}/predict"
    with pytest.raises(BatchPredictError, match="run again with the same output directory"):
        run_batch(
            dead,
            tmp_path / "in.jsonl",
            tmp_path / "out",
            max_retries=1,
            backoff_s=0.01,
            progress=False,
        )
    assert outputs(tmp_path / "out") == ([], [])
    summary = run_batch(
        fault_server() + "/predict", tmp_path / "in.jsonl", tmp_path / "out", progress=False
    )
    assert summary.prediction_count == 10 and summary.reconciled


# --- resume ----------------------------------------------------------------------------------

RUNNER = """
import json, sys
from components.stand_ins import run_batch
print(json.dumps(run_batch(**json.loads(sys.argv[1])).to_json()))
"""


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(
    tmp_path: Path, fault_server: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = fault_server("--delay-s", "0.02")
    rows = instances_with_ids(3000, poison={5, 1500, 2999})
    write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    settings = {
        "predict_url": base + "/predict",
        "instances": str(tmp_path / "in.jsonl"),
        "output_dir": str(out),
        "batch_size": 10,
        "workers": 4,
        "shard_size": 100,
        "backoff_s": 0.01,
        "progress": False,
    }
    kills = []
    for wanted in (3, 12):  # kill twice, after some shards each time
        runner = subprocess.Popen(
            [sys.executable, "-c", RUNNER, json.dumps(settings)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while len(list(out.glob(f"{RESULTS_PREFIX}-*"))) < wanted:
            assert runner.poll() is None, runner.communicate()
            assert time.monotonic() < deadline, "the runner wrote too few shards"
            time.sleep(0.005)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        kills.append(len(list(out.glob(f"{RESULTS_PREFIX}-*"))))
    assert kills[-1] < 30, "the run finished before it was killed: nothing was tested"

    summary = run_batch(**settings)
    predictions, errors = outputs(out)
    assert ids_once(predictions, errors) == Counter(range(3000))
    assert {line["instance"]["id"] for line in errors} == {5, 1500, 2999}
    assert summary.reconciled and summary.resumed_shards == kills[-1]
    assert not list(out.glob(f".*{TEMP_SUFFIX}"))
    with capsys.disabled():  # the figures show without -s too
        print(
            f"\n  resume: killed with {kills} of 30 shards written; the re-run did "
            f"{30 - summary.resumed_shards}: {summary.prediction_count} predictions + "
            f"{summary.error_count} errors = {summary.input_count} lines"
        )


def test_an_interrupted_shard_commit_is_redone_cleanly(
    tmp_path: Path, fault_server: Callable[..., str]
) -> None:
    """A kill between a shard's errors file and its results file: the shard is redone, its
    stale errors file replaced or removed, and partial files deleted."""
    url = fault_server() + "/predict"
    write_jsonl(tmp_path / "in.jsonl", instances_with_ids(4, poison={0}))
    out = tmp_path / "out"
    run_batch(url, tmp_path / "in.jsonl", out, shard_size=2, progress=False)
    (out / "prediction.results-00000-of-00002").unlink()  # shard 0: errors file only
    (out / "prediction.results-00001-of-00002").unlink()  # shard 1: a stale errors file
    (out / "prediction.errors_stats-00001-of-00002").write_text('{"instance": {"id": 3}}\n')
    (out / f".prediction.results-00001-of-00002{TEMP_SUFFIX}").write_text('{"x"')

    summary = run_batch(url, tmp_path / "in.jsonl", out, shard_size=2, progress=False)

    predictions, errors = outputs(out)
    assert ids_once(predictions, errors) == Counter(range(4))
    assert [line["instance"]["id"] for line in errors] == [0]
    assert not (out / "prediction.errors_stats-00001-of-00002").exists()
    assert not list(out.glob(f".*{TEMP_SUFFIX}"))
    assert summary.resumed_shards == 0 and summary.reconciled


def test_resuming_a_different_batch_is_refused(
    tmp_path: Path, fault_server: Callable[..., str]
) -> None:
    url = fault_server() + "/predict"
    source = write_jsonl(tmp_path / "in.jsonl", instances_with_ids(5))
    out = tmp_path / "out"
    run_batch(url, source, out, progress=False)
    assert run_batch(url, source, out, batch_size=2, progress=False).resumed_shards == 1

    with pytest.raises(
        BatchPredictError,
        match=r"different batch prediction \(changed since: parameters\)",
    ):
        run_batch(url, source, out, parameters={"output": "label"}, progress=False)
    write_jsonl(source, instances_with_ids(6))
    with pytest.raises(BatchPredictError, match=r"changed since: inputs\).*new output directory"):
        run_batch(url, source, out, progress=False)
    with (out / LOCK_FILE).open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a run in progress holds it
        with pytest.raises(BatchPredictError, match="another batch prediction is writing"):
            run_batch(url, source, out, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "prediction.results-00000-of-00001").write_text("")
    with pytest.raises(BatchPredictError, match=r"no \.batch-state\.json"):
        run_batch(url, source, foreign, progress=False)


# --- the component, with the real serving container ------------------------------------------


def job_containers(engine: Engine) -> list[str]:
    out = engine.command("ps", "-a", "-q", "--filter", f"label={JOB_LABEL}", timeout=60)
    return out.stdout.split()


@pytest.mark.container
def test_kfp_local_batch_predict_against_the_serving_container(
    engine: Engine, image: str, model_dir: Path, tmp_path: Path
) -> None:
    from kfp import dsl, local
    from kfp.dsl import Artifact

    spec = container_spec(image)

    @dsl.pipeline
    def predict(source: str, registry_dir: str, instances: str, output_dir: str) -> Artifact:
        uploaded = upload_checked(source, registry_dir, spec)
        job = local_batch_predict(
            model=uploaded.outputs["model"],
            registry_dir=registry_dir,
            instances=instances,
            output_dir=output_dir,
            batch_size=7,
            workers=2,
        )
        return job.outputs["batch_prediction_job"]

    samples = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    bad = {**samples[0], "bill_length_mm": "long"}  # the server answers 400
    lines = [json.dumps(row) for row in samples * 3] + [json.dumps(bad), "{not json"]
    (tmp_path / "instances.jsonl").write_text("\n".join(lines) + "\n")

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "runs"),
        raise_on_error=True,
    )
    started = time.monotonic()
    try:
        job = predict(
            source=str(model_dir),
            registry_dir=str(tmp_path / "registry"),
            instances=str(tmp_path / "instances.jsonl"),
            output_dir=str(tmp_path / "predictions"),
        ).output
    finally:
        assert job_containers(engine) == []  # stopped and removed, whatever happened
    seconds = time.monotonic() - started

    metadata = job.metadata
    assert metadata["resourceName"].startswith(JOBS_PREFIX)
    assert metadata["model"].endswith("@1") and metadata["state"] == "JOB_STATE_SUCCEEDED"
    assert metadata["completionStats"] == {
        "successfulCount": 3 * len(samples),
        "failedCount": 2,
        "incompleteCount": 0,
    }
    results = Path(metadata["outputInfo"]["gcsOutputDirectory"])
    assert results == Path(job.uri) == Path(metadata["gcsOutputDirectory"])
    assert results.parent == tmp_path / "predictions"
    assert results.name.startswith("prediction-penguins-") and results.name.endswith("Z")

    predictions, errors = outputs(results)
    assert [line["instance"] for line in predictions] == samples * 3
    assert json_difference(expected * 3, [line["prediction"] for line in predictions]) is None
    assert [line["instance"] for line in errors] == [bad, "{not json"]
    assert errors[0]["error"]["code"] == 3 and "bill_length_mm" in errors[0]["error"]["message"]
    print(f"\n  kfp.local upload + batch predict (container start to removal): {seconds:.1f} s")
