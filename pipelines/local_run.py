"""Run the whole train-to-serve pipeline on this machine: ``compile.py run-local``.

The pipeline is ``build_pipeline(backend="local")``: the Vertex pipeline's DAG with local
stand-ins for the Model Registry, endpoints and batch prediction. ``kfp.local`` runs it
(``SubprocessRunner`` in the current interpreter; the build, check, deploy and batch steps
drive podman or docker themselves). ``run_local`` adds what a person at a terminal needs
around it:

* a check that a container engine works, before anything is trained;
* process mode (``serving="process"``, ``--serving process``): where no engine works, no image
  is built and the contract check, the endpoint and the batch job run the same server code as
  local processes with Vertex's environment (``components/runners/process.py``), a weaker
  check that the summary labels (``"serving": "process"``);
* the batch input: by default every row of the training table, features only, one JSON
  object per line (what a user would send to Vertex's batch prediction);
* one line per step, with its time and key result, each step's whole log in
  ``<run>/logs/<step>.log``, and a failed step's last log lines (``run_view.RunView``);
  a failed run undeploys the model it deployed (``undo_deploy``);
* a summary of the run (model version, image, contract report, endpoint URL, batch output and
  counts, wall time per step) printed and written as ``summary.json`` in the run's directory.

Directory layout under ``output_dir`` (default ``outputs/``)::

    train-to-serve-local-<time>/   one kfp.local run: a folder per task, logs/, summary.json
    registry/                      the local model registry (kept across runs)
    endpoints/                     the local endpoint records (kept across runs)
    batch-input/                   batch instances written from the data set
    batch-predictions/             prediction-<model>-<time>/ per batch job, as on Vertex
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from components import vertex
from components.imaging import BuildError, choose_base_image
from components.runners import (
    ENGINE_ENV,
    PROCESS,
    PROCESS_MODE_NOTE,
    ProcessRunner,
    RunnerError,
    detect_engine,
)
from components.stand_ins import (
    BatchInputError,
    EndpointError,
    get_endpoint,
    resolve_inputs,
    undeploy,
    undeploy_model,
)
from components.training import (
    TrainingInputError,
    check_gate_metric,
    check_training_inputs,
    load_table,
)
from pipelines.parameters import DEFAULTS, check_rollout
from pipelines.run_view import ANSI, PIPELINE_LOG, RunView, task_outputs

DEFAULT_OUTPUT_DIR = Path("outputs")
DEFAULT_GATES = {"classification": ("accuracy", 0.8), "regression": ("r2", 0.5)}
"""Gate metric and threshold by task, when none is given."""
STEPS = (
    "train",
    "build-image",
    "contract-check",
    "capacity-check",
    "evaluation-gate",
    "local-model-upload",
    "local-model-deploy",
    "smoke-test",
    "promote",
    "local-batch-predict",
)
"""The pipeline's tasks in DAG order (kfp.local's task names) on a run that ships; a failed
smoke test runs ``roll-back`` in place of ``promote``."""
SUMMARY_FILE = "summary.json"
SERVING_MODES = ("container", PROCESS)
"""How the run serves the model: the image in podman/docker, or process mode."""

KFP_PYTHON_IMAGE_WARNING = "You may be attemping to run a task that uses custom or non-Python"
"""kfp.local's warning, once per task, that a task's image is no Python image: ours (the
components image) is, under another name, and the task runs in this interpreter anyway."""


class LocalRunError(RuntimeError):
    """The local run cannot start or did not finish; the message says why and what to do."""


@dataclass
class LocalRunOptions:
    """What ``compile.py run-local`` passes; defaults train a classifier on penguins."""

    output_dir: Path = DEFAULT_OUTPUT_DIR
    parameters: dict[str, Any] = field(default_factory=dict)
    """Values of ``SHARED_PARAMETERS`` given; the others take their defaults, and the gate
    ``DEFAULT_GATES[task]``."""
    batch_instances: str = ""
    """jsonl/csv file(s) to predict; empty: every row of the training table."""
    serving: str = "container"
    """``container`` (podman/docker) or ``process`` (process mode: no engine needed, weaker;
    also chosen by ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process``)."""
    machine_type: str = vertex.MACHINE_TYPE
    """The Vertex machine type the capacity step measures for."""
    latency_slo_ms: float = 200.0
    expected_qps: float = 10.0
    verbose: bool = False
    """Print kfp.local's whole output (every task's log) as well as the step lines."""

    def pipeline_arguments(self) -> dict[str, Any]:
        """The shared pipeline parameters: the defaults, the task's gate, then those given."""
        task = self.parameters.get("task", DEFAULTS["task"])
        if task not in DEFAULT_GATES:
            raise LocalRunError(f"unknown task {task!r}; use one of {sorted(DEFAULT_GATES)}")
        metric, threshold = DEFAULT_GATES[task]
        gate = {"gate_metric": metric, "gate_threshold": threshold}
        # Unset, the batch size is the capacity step's advice (0 asks for it).
        return {**DEFAULTS, **gate, "batch_size": 0, **self.parameters}


def write_batch_instances(
    data: str, target: str, feature_columns: list[str], destination: Path
) -> int:
    """Write the table's feature columns as jsonl instances (missing values as null).

    This is the default batch input: the rows a user would score, in Vertex's jsonl shape
    (one JSON object keyed by feature name per line). Returns the number of lines.
    """
    frame, default_target = load_table(data)
    frame.columns = [str(c) for c in frame.columns]
    target = target or default_target or ""
    features = feature_columns or [c for c in frame.columns if c != target]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise TrainingInputError(f"feature columns {missing} are not in {data!r}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    frame[features].to_json(destination, orient="records", lines=True)
    return len(frame)


def serving_mode(requested: str) -> str:
    """``process`` when asked for by ``requested`` or ``TRAIN_TO_SERVE_CONTAINER_ENGINE``,
    else ``container``; ``LocalRunError`` for an unknown mode."""
    if requested not in SERVING_MODES:
        raise LocalRunError(f"unknown serving mode {requested!r}; use one of {SERVING_MODES}")
    explicit = os.environ.get(ENGINE_ENV, "").strip() == PROCESS
    return PROCESS if explicit else requested


def check_engine(serving: str = "container") -> str:
    """The runner's reference (``process`` in process mode); ``LocalRunError`` saying what to
    do when it does not work."""
    if serving == PROCESS:
        try:
            return ProcessRunner.create().reference
        except RunnerError as exc:
            raise LocalRunError(f"process mode cannot run the model server here: {exc}") from exc
    try:
        engine = detect_engine()
        choose_base_image(engine)
    except (RunnerError, BuildError) as exc:
        raise LocalRunError(
            "run-local builds the serving image and runs it as Vertex would, which needs "
            f"podman or docker, and none works here:\n  {exc}\n"
            "Set one up with `bash scripts/setup-container-engine.sh` (Debian/Ubuntu, as "
            "root; `make run` does this), or point TRAIN_TO_SERVE_CONTAINER_ENGINE at a "
            "working podman/docker binary.\n"
            f"Or run with `--serving process`: {PROCESS_MODE_NOTE}."
        ) from exc
    return engine.reference


def undo_deploy(run_dir: Path) -> str:
    """Undeploy the model a failed run deployed, where it still is: a run that failed must
    not leave its version taking traffic (the split goes back to the endpoint's other models;
    an endpoint left with none is undeployed, router and all). One sentence saying what was
    done, or what is left for the user."""
    endpoint = task_outputs(run_dir / "local-model-deploy").get("endpoint", {}).get("metadata", {})
    deployed_id = endpoint.get("deployedModelId")
    if not deployed_id:
        return "It deployed nothing."
    endpoint_id = str(endpoint["resourceName"]).rsplit("/", 1)[-1]
    endpoints_dir = endpoint["endpointsDir"]
    try:
        if deployed_id not in get_endpoint(endpoint_id, endpoints_dir).deployed_ids:
            return f"Its deployed model {deployed_id} is no longer deployed."
        undeploy_model(endpoint_id, deployed_id, endpoints_dir=endpoints_dir)
        if not get_endpoint(endpoint_id, endpoints_dir).deployed_ids:
            undeploy(endpoint_id, endpoints_dir=endpoints_dir)
            return (
                f"Its deployed model {deployed_id} and endpoint {endpoint_id}, which served "
                "nothing else, were undeployed."
            )
    except EndpointError as exc:
        return (
            f"Its deployed model {deployed_id} stays on endpoint {endpoint_id} ({exc}); "
            f"undeploy it with `compile.py endpoints undeploy {endpoint_id} --deployed-model "
            f"{deployed_id} --endpoints-dir {endpoints_dir}`."
        )
    return (
        f"Its deployed model {deployed_id} was undeployed from endpoint {endpoint_id}: its "
        "other models serve as before the run."
    )


def _newest_run(root: Path, pipeline_name: str, after: float) -> Path:
    runs = [p for p in root.glob(f"{pipeline_name}-*") if p.is_dir() and p.stat().st_mtime >= after]
    if not runs:
        raise LocalRunError(f"kfp.local wrote no run directory under {root}")
    return max(runs, key=lambda p: p.stat().st_mtime)


def _uri_path(uri: str) -> str:
    return uri.removeprefix("file://")


def summarize(run_dir: Path, view: RunView, wall_seconds: float) -> dict[str, Any]:
    """The run's summary, from each task's outputs in ``run_dir`` and the step times."""
    out = {step: task_outputs(run_dir / step) for step in STEPS}
    train, check = out["train"], out["contract-check"]
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "framework": train.get("model", {}).get("metadata", {}).get("framework"),
        "model_dir": _uri_path(train.get("model", {}).get("uri", "")),
        "metrics": train.get("metrics", {}).get("metadata", {}),
        "image": out["build-image"].get("image_uri"),
        "contract_report": _uri_path(check.get("report", {}).get("uri", "")) or None,
        "contract_check": check.get("metrics", {}).get("metadata", {}),
        "gate_passed": out["evaluation-gate"].get("Output"),
    }
    upload = out["local-model-upload"].get("model", {}).get("metadata", {})
    if upload:
        summary["model_version"] = {
            key: upload.get(key)
            for key in ("resourceName", "versionId", "versionAliases", "parentModel")
        }
    endpoint = out["local-model-deploy"].get("endpoint", {}).get("metadata", {})
    if endpoint:
        summary["endpoint"] = {
            key: endpoint.get(key) for key in ("resourceName", "url", "deployedModelId")
        }
    capacity = out["capacity-check"]
    document = (
        json.loads(Path(_uri_path(capacity["capacity"]["uri"])).read_text()) if capacity else {}
    )
    if document:  # empty in process mode: nothing measured
        summary["capacity"] = {
            "machine_type": document["machine_type"],
            "report": _uri_path(capacity["report"]["uri"]),
            "note": document["measurement_note"],
            "cold_start_s": document["measured"]["cold_start_s"],
            "deploy": document["deploy"],
            "no_deploy_advice": document["no_best_step_reason"],
            "batch_size": capacity.get("batch_size"),
        }
    record = out["promote"].get("record_json", {}).get("uri")
    if record:
        rollout = json.loads(Path(_uri_path(record)).read_text())
        summary["rollout"] = {
            "decision": rollout["decision"],
            "record": _uri_path(out["promote"]["record"]["uri"]),
            "traffic_before": rollout["rollout"]["trafficBefore"],
            "traffic_after": rollout["rollout"]["trafficAfter"],
            "default_alias_moved": rollout["rollout"]["aliasMoved"],
            "undeployed": rollout["rollout"]["undeployed"],
            "smoke_latency_ms": rollout["smokeTest"]["latencyMs"]["p50"],
        }
    job = out["local-batch-predict"].get("batch_prediction_job", {}).get("metadata", {})
    if job:
        counted = job["summary"]  # the runner's BatchSummary, counted from its output files
        summary["batch"] = {
            "output_dir": _uri_path(job["outputInfo"]["gcsOutputDirectory"]),
            "completionStats": job.get("completionStats"),
            "input_lines": int(counted["input_count"]),
            "prediction_lines": int(counted["prediction_count"]),
            "error_lines": int(counted["error_count"]),
        }
    summary["step_seconds"] = {s: view.seconds[s] for s in STEPS if s in view.seconds}
    summary["wall_seconds"] = round(wall_seconds, 2)
    return summary


def run_local(options: LocalRunOptions, out: TextIO | None = None) -> dict[str, Any]:
    """Run the local pipeline with kfp.local; print progress; return and write the summary.

    In process mode the kfp.local tasks, which inherit this process's environment, get
    ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process`` for the run.

    Raises:
        LocalRunError: no container engine (process mode: the server cannot run), or a step
            failed (the message names it).
        TrainingInputError: bad training data or columns, before anything runs.
    """
    out = out or sys.stdout
    started = time.monotonic()
    serving = serving_mode(options.serving)
    check_engine(serving)
    if serving != PROCESS:
        return _run_pipeline(options, out, started, serving)
    out.write(f"serving: {PROCESS_MODE_NOTE}\n")
    saved = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = PROCESS
    try:
        return _run_pipeline(options, out, started, serving)
    finally:
        if saved is None:
            os.environ.pop(ENGINE_ENV, None)
        else:
            os.environ[ENGINE_ENV] = saved


def _run_pipeline(
    options: LocalRunOptions, out: TextIO, started: float, serving: str
) -> dict[str, Any]:
    """``run_local`` once the engine (or process mode) is set up."""
    from kfp import local

    from pipelines.train_to_serve import LOCAL_PIPELINE_NAME, build_pipeline

    root = options.output_dir.resolve()
    parameters = options.pipeline_arguments()
    try:
        check_rollout(parameters)
        # A typo in these would otherwise fail only in the train step or at the gate, after
        # the engine is set up, or after the build and the checks.
        check_gate_metric(parameters["task"], parameters["gate_metric"])
        check_training_inputs(
            parameters["data"],
            parameters["target"],
            parameters["task"],
            parameters["feature_columns"],
            parameters["framework"],
            parameters["estimator"],
            dict(parameters["hyperparameters"]),
            parameters["seed"],
        )
    except (ValueError, TrainingInputError) as exc:
        raise LocalRunError(str(exc)) from exc
    instances = options.batch_instances
    if instances:  # a missing file must stop the run now, not after training and deploying
        try:
            resolve_inputs(instances)
        except BatchInputError as exc:
            raise LocalRunError(f"--batch-instances: {exc}") from exc
    else:
        data = parameters["data"]
        destination = root / "batch-input" / f"{Path(data).stem}.jsonl"
        count = write_batch_instances(
            data, parameters["target"], parameters["feature_columns"], destination
        )
        instances = str(destination)
        out.write(f"batch input: {count} rows of {data!r} as jsonl in {destination}\n")
    arguments = {
        "registry_dir": str(root / "registry"),
        "endpoints_dir": str(root / "endpoints"),
        "batch_instances": instances,
        "batch_output_dir": str(root / "batch-predictions"),
        "deploy_machine_type": options.machine_type,
        "latency_slo_ms": options.latency_slo_ms,
        "expected_qps": options.expected_qps,
        **parameters,
    }
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
    )
    pipeline = build_pipeline(backend="local")
    began = time.time() - 1
    view = RunView(
        out,
        STEPS,
        functools.partial(_newest_run, root, LOCAL_PIPELINE_NAME, began),
        verbose=options.verbose,
    )
    saved, sys.stdout = sys.stdout, view
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=KFP_PYTHON_IMAGE_WARNING)
            pipeline(**arguments)
    except RuntimeError as exc:
        sys.stdout = saved
        logs = view.close_run()
        failed = view.failed_steps()
        run_dir = _newest_run(root, LOCAL_PIPELINE_NAME, began)
        where = f"step {failed[0]!r}" if failed else "the pipeline"
        outputs = run_dir / failed[0] if failed else run_dir
        log = logs / f"{failed[0] if failed else PIPELINE_LOG}.log"
        if not options.verbose:
            out.write(f"--- the last lines of {log} ---\n{view.tail(log.stem)}\n---\n")
        raise LocalRunError(
            f"{where} failed ({ANSI.sub('', str(exc)).rstrip('.')}). Its log: {log} (its last "
            f"lines are above); its outputs (a contract check's report among them) are in "
            f"{outputs}. {undo_deploy(run_dir)}"
        ) from exc
    finally:
        sys.stdout = saved
    view.close_run()
    run_dir = _newest_run(root, LOCAL_PIPELINE_NAME, began)
    summary = {"serving": serving, **summarize(run_dir, view, time.monotonic() - started)}
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    summary["summary_file"] = str(run_dir / SUMMARY_FILE)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few lines a person reads at the end of the run."""
    lines = [f"run: {summary['run_dir']}"]
    if summary.get("serving") == "process":
        lines.append(f"serving: {PROCESS_MODE_NOTE}")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in summary["metrics"].items())
    lines.append(f"model ({summary['framework']}): {summary['model_dir']} ({metrics})")
    lines.append(f"image: {summary['image']}")
    verdict = summary["contract_check"].get("passed")
    lines.append(
        f"contract check: {'passed' if verdict else 'see report'}; "
        f"report {summary['contract_report']}"
    )
    if capacity := summary.get("capacity"):
        deploy = capacity["deploy"]
        advice = (
            f"advice {deploy['min_replica_count']}-{deploy['max_replica_count']} replicas, CPU "
            f"target {deploy['autoscaling_target']}%"
            if deploy
            else f"no deploy advice ({capacity['no_deploy_advice']})"
        )
        lines.append(
            f"capacity on {capacity['machine_type']}: cold start {capacity['cold_start_s']:.2f} s; "
            f"{advice}, batch size {capacity['batch_size']}; report {capacity['report']}"
        )
    if not summary.get("gate_passed"):
        lines.append("evaluation gate: FAILED; nothing was uploaded, deployed or batch-predicted")
    if version := summary.get("model_version"):
        lines.append(
            f"model version: {version['resourceName']} (aliases: "
            f"{', '.join(version['versionAliases'] or [])})"
        )
    if endpoint := summary.get("endpoint"):
        lines.append(f"endpoint: {endpoint['resourceName']}: POST {endpoint['url']}")
    if rollout := summary.get("rollout"):
        lines.append(
            f"rollout: {rollout['decision']} after a passed smoke test (median "
            f"{rollout['smoke_latency_ms']:.1f} ms); traffic {rollout['traffic_before']} -> "
            f"{rollout['traffic_after']}; default alias "
            f"{'moved' if rollout['default_alias_moved'] else 'not moved'}; undeployed "
            f"{', '.join(rollout['undeployed']) or 'nothing'}; record {rollout['record']}"
        )
    if batch := summary.get("batch"):
        stats = batch["completionStats"] or {}
        lines.append(
            f"batch prediction: {batch['output_dir']}: {batch['prediction_lines']} predictions, "
            f"{batch['error_lines']} errors (successful {stats.get('successfulCount')}, "
            f"failed {stats.get('failedCount')})"
        )
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in summary["step_seconds"].items())
    lines.append(f"wall time: {summary['wall_seconds']:.1f} s ({steps})")
    lines.append(f"summary: {summary.get('summary_file', '')}")
    return "\n".join(lines)
