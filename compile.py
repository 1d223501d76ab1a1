#!/usr/bin/env python3
"""Command-line entry point: run the train-to-serve flow locally and check serving containers.

Each subcommand has its own ``--help``. Subcommands are thin: they parse flags, call the
library code in ``components/`` and ``pipelines/``, and turn its errors into one clear line
and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A bad flag or value; printed as one line, exit status 2."""


def _json_object(text: str) -> dict:
    """Parse a JSON object given on the command line (argparse ``type=``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _comma_list(text: str) -> list[str]:
    """Parse a comma-separated list given on the command line (argparse ``type=``)."""
    return [item.strip() for item in text.split(",") if item.strip()]


FLAG_TYPES: dict[type, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    list: _comma_list,
    dict: _json_object,
}
"""How a pipeline parameter's flag reads its value, by the type of the parameter's default."""


def _escaped(text: str) -> str:
    """Help text as argparse wants it: a literal ``%`` doubled (argparse formats help)."""
    return text.replace("%", "%%")


def _add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per parameter both pipelines share (``pipelines.parameters``); a flag left out
    leaves the parameter out, so that the pipeline's default (or run-local's gate by task)
    applies."""
    from pipelines.local_run import DEFAULT_GATES
    from pipelines.parameters import SHARED_PARAMETERS

    by_task = {
        "gate_metric": ", ".join(f"{m} for {task}" for task, (m, _) in DEFAULT_GATES.items()),
        "gate_threshold": ", ".join(f"{t:g} for {task}" for task, (_, t) in DEFAULT_GATES.items()),
    }
    for parameter in SHARED_PARAMETERS:
        default = parameter.default
        if isinstance(default, bool):  # a switch: given means true
            parser.add_argument(
                parameter.flag,
                dest=parameter.name,
                action="store_true",
                default=argparse.SUPPRESS,
                help=_escaped(parameter.help),
            )
            continue
        shown = ",".join(default) if isinstance(default, list) else json.dumps(default)
        parser.add_argument(
            parameter.flag,
            dest=parameter.name,
            type=FLAG_TYPES[type(default)],
            choices=parameter.choices or None,
            default=argparse.SUPPRESS,
            help=_escaped(f"{parameter.help} (default: {by_task.get(parameter.name, shown)})"),
        )


def _add_run_local(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.local_run import DEFAULT_OUTPUT_DIR, SERVING_MODES, LocalRunOptions

    parser = subparsers.add_parser(
        "run-local",
        help="run the whole train-to-serve pipeline on this machine (kfp.local + podman/docker)",
        description=(
            "Run the train-to-serve pipeline with kfp.local: train -> build the serving image "
            "-> contract check -> evaluation gate -> upload to a local model registry -> in "
            "parallel, the rollout on a local endpoint (deployed next to the serving version at "
            "a canary share, smoke-tested through the endpoint, promoted or rolled back) and a "
            "local batch prediction job with Vertex's output format. Needs podman or docker "
            "(scripts/setup-container-engine.sh sets podman up), or --serving process (a "
            "weaker check without an engine). Defaults train a classifier "
            "on the bundled Palmer penguins data set and batch-predict all its rows. Prints a "
            "line per step (each step's log goes to <run>/logs/), and ends with a summary, "
            "also written as summary.json in the run's directory."
        ),
    )
    _add_pipeline_flags(parser)
    parser.add_argument(
        "--batch-instances",
        default="",
        help="jsonl or csv file(s) (path or glob) to batch-predict (default: the data's rows)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where runs are written"
    )
    parser.add_argument(
        "--deploy-machine-type",
        default=LocalRunOptions.machine_type,
        help="the Vertex machine type the capacity step measures for (%(default)s)",
    )
    parser.add_argument(
        "--latency-slo-ms",
        type=float,
        default=LocalRunOptions.latency_slo_ms,
        help="the capacity step's p99 objective (%(default)g)",
    )
    parser.add_argument(
        "--expected-qps",
        type=float,
        default=LocalRunOptions.expected_qps,
        help="the traffic the capacity step advises replicas for (%(default)g)",
    )
    parser.add_argument(
        "--serving",
        default=SERVING_MODES[0],
        choices=SERVING_MODES,
        help=(
            "container: build the image and run it with podman/docker (default); process: "
            "the weaker fallback where no engine works (no image built; see the README)"
        ),
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="print every step's whole log as it runs (always written to <run>/logs/)",
    )
    parser.set_defaults(handler=_run_local)


def _run_local(args: argparse.Namespace) -> int:
    from pipelines.local_run import LocalRunOptions, format_summary, run_local
    from pipelines.parameters import SHARED_PARAMETERS

    given = {p.name: getattr(args, p.name) for p in SHARED_PARAMETERS if hasattr(args, p.name)}
    if given.get("batch_size", 1) < 1:
        raise UsageError("--batch-size must be at least 1")
    summary = run_local(
        LocalRunOptions(
            output_dir=args.output_dir,
            parameters=given,
            batch_instances=args.batch_instances,
            serving=args.serving,
            machine_type=args.deploy_machine_type,
            latency_slo_ms=args.latency_slo_ms,
            expected_qps=args.expected_qps,
            verbose=args.verbose,
        )
    )
    print("\n" + format_summary(summary))
    return 0


def _add_compile(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compile",
        help="compile the pipeline (and each component) to YAML",
        description=(
            "Write the train-to-serve pipeline spec, and each of our components as a reusable "
            "YAML, for Vertex AI Pipelines. Our Python components run in the components image "
            "(components/Dockerfile): name it with --components-image, or give --project (and "
            "--region) to use REGION-docker.pkg.dev/PROJECT/train-to-serve/components:VERSION."
        ),
    )
    parser.add_argument("--output", type=Path, default=Path("pipeline.yaml"))
    parser.add_argument(
        "--components-dir",
        type=Path,
        help="where to write one YAML per component (default: components/ beside --output)",
    )
    parser.add_argument("--components-image", help="image URI our components run in")
    parser.add_argument("--project", help="derive the components image from this project")
    parser.add_argument("--region", default="us-central1", help="region of that image")
    parser.add_argument(
        "--cache-training",
        action="store_true",
        help="let a run with the same inputs reuse an earlier run's trained model (off by "
        "default: a scheduled run must retrain on the data behind the same URI)",
    )
    parser.set_defaults(handler=_compile)


def _compile(args: argparse.Namespace) -> int:
    from importlib.metadata import version

    from kfp import compiler

    from components.images import COMPONENTS_IMAGE, with_image
    from components.package_model import package_model
    from pipelines.parameters import caching_note
    from pipelines.train_to_serve import OUR_COMPONENTS, build_pipeline

    if args.components_image:
        image = args.components_image
    elif args.project:
        # Our naming scheme: repository "train-to-serve" in the run's region, the project's
        # version as tag.
        image = (
            f"{args.region}-docker.pkg.dev/{args.project}/train-to-serve/components:"
            f"{version('train-to-serve')}"
        )
    else:
        image = COMPONENTS_IMAGE
        print(
            f"warning: no --components-image or --project given; the YAML names {image}, "
            "which Vertex cannot pull unless you push it under that name",
            file=sys.stderr,
        )
    image = _pin_components_image(image)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(image, cache_training=args.cache_training)
    compiler.Compiler().compile(pipeline, str(args.output))
    components_dir = args.components_dir or args.output.parent / "components"
    components_dir.mkdir(parents=True, exist_ok=True)
    # The pipeline's components, and package_model for models trained elsewhere.
    reusable = {**OUR_COMPONENTS, "package_model": package_model}
    for name, component in reusable.items():
        compiler.Compiler().compile(
            with_image(component, image), str(components_dir / f"{name}.yaml")
        )
    print(f"wrote {args.output} and {len(reusable)} component YAMLs in {components_dir}")
    print(f"components image: {image}")
    print(caching_note(args.output, None))
    return 0


def _pin_components_image(image: str) -> str:
    """The components image by digest when this machine's engine knows its pushed digest;
    else as given, with a warning: a tag may point elsewhere by the time a run starts."""
    from components.images import pinned
    from components.runners import RunnerError, RunnerNotFoundError, detect_engine

    digests: list[str] = []
    try:
        engine = detect_engine()
        if engine.image_exists(image):
            digests = list(engine.image_inspect(image).get("RepoDigests") or [])
    except (RunnerNotFoundError, RunnerError):
        pass
    found = pinned(image, digests)
    if found is None:
        print(
            f"warning: the components image {image} is named by tag: each run uses whatever "
            "the tag points to when it starts. Push it, then compile again on this machine "
            "(its digest is then known here) or pass --components-image "
            "REPOSITORY@sha256:... (gcloud artifacts docker images describe IMAGE)",
            file=sys.stderr,
        )
        return image
    return found


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``submit`` and ``schedule create``: where and how a run is created."""
    import os

    parser.add_argument(
        "--project",
        default=os.environ.get("GOOGLE_CLOUD_PROJECT", ""),
        help="Google Cloud project ID (default: $GOOGLE_CLOUD_PROJECT)",
    )
    parser.add_argument("--region", default="us-central1", help="Vertex AI region")
    parser.add_argument(
        "--pipeline-root", required=True, help="gs:// folder for the run's artifacts"
    )
    parser.add_argument(
        "--template",
        type=Path,
        required=True,
        help="compiled pipeline YAML (written by the compile subcommand)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter; repeat for more (lists and dicts as JSON)",
    )
    parser.add_argument("--params-file", type=Path, help="YAML or JSON file of pipeline parameters")
    parser.add_argument(
        "--capacity",
        type=Path,
        metavar="CAPACITY_JSON",
        help="capacity.json of `compile.py capacity`: deploy machine, replicas, CPU "
        "autoscaling target, batch size and batch replicas from its advice, where the "
        "parameters leave them unset",
    )
    parser.add_argument("--display-name", default="train-to-serve")
    parser.add_argument("--service-account", help="service account the run executes as")
    parser.add_argument("--network", help="VPC network for the run (projects/N/global/networks/X)")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="run label; repeatable"
    )
    parser.add_argument(
        "--allow-cross-region",
        action="store_true",
        help="let the pipeline's location parameter differ from --region",
    )
    parser.add_argument(
        "--no-cache",
        dest="enable_caching",
        action="store_false",
        default=None,
        help="caching off for every task; by default the compiled policy holds: tasks that "
        "create or change resources never cached, train only when compiled with "
        "--cache-training",
    )


def _run_settings(args: argparse.Namespace) -> Any:
    """Turn the shared run flags into ``RunSettings``; parameter files first, flags override."""
    from pipelines.parameters import (
        coerce_text_values,
        parse_assignments,
        read_parameter_file,
        root_parameters,
    )
    from pipelines.vertex_jobs import RunSettings, SubmitError

    if not args.template.is_file():
        raise SubmitError(f"pipeline template {args.template} not found; run compile first")
    parameters: dict[str, Any] = {}
    if args.params_file:
        parameters.update(read_parameter_file(args.params_file))
    parameters.update(
        coerce_text_values(parse_assignments(args.param), root_parameters(args.template))
    )
    if args.capacity:
        parameters.update(_advised(args.capacity, parameters, args.template))
    return RunSettings(
        template=args.template,
        project=args.project,
        region=args.region,
        pipeline_root=args.pipeline_root,
        parameters=parameters,
        display_name=args.display_name,
        job_id=getattr(args, "job_id", None),
        enable_caching=args.enable_caching,
        labels=parse_assignments(args.label, "--label"),
        service_account=args.service_account,
        network=args.network,
        allow_cross_region=args.allow_cross_region,
    )


def _advised(path: Path, parameters: dict[str, Any], template: Path) -> dict[str, Any]:
    """The parameters a capacity report fills (``advised_parameters``), each choice printed."""
    from pipelines.parameters import advised_parameters, root_parameters

    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"--capacity {path}: not a readable capacity.json ({exc}); write one with "
            "compile.py capacity --image IMAGE --model-dir DIR --machine-type TYPE"
        ) from None
    declared = root_parameters(template)
    framework = declared.get("framework", {}).get("defaultValue")
    try:
        advised = advised_parameters(document, {"framework": framework, **parameters})
    except KeyError as exc:
        raise UsageError(
            f"--capacity {path}: no {exc} field: not a capacity.json of compile.py capacity"
        ) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--capacity {path}: {exc}") from None
    for note in advised.notes:
        print(f"capacity: {note}")
    values = dict(advised.values)
    for name in sorted(set(values) - set(declared)):  # a template compiled before it existed
        print(
            f"capacity: {name}: {values.pop(name)!r} not applied: {template} has no such "
            "parameter; compile it again with this version to apply it"
        )
    return values


def _add_submit(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="submit a pipeline run to Vertex AI Pipelines",
        description=(
            "Check the parameters against the compiled pipeline (names, types, required values), "
            "then submit one run with google.cloud.aiplatform.PipelineJob."
        ),
    )
    _add_run_flags(parser)
    parser.add_argument("--job-id", help="run ID (lowercase letters, digits, hyphens)")
    parser.set_defaults(handler=_submit)


def _submit(args: argparse.Namespace) -> int:
    from pipelines.parameters import caching_note
    from pipelines.vertex_jobs import submit

    job = submit(_run_settings(args))
    print(f"submitted {job.resource_name}")
    print(caching_note(args.template, args.enable_caching))
    return 0


def _add_schedule(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schedule",
        help="create, list, pause, resume or delete retraining schedules",
        description="Scheduled retraining with Vertex AI PipelineJobSchedule.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a schedule for the pipeline")
    _add_run_flags(create)
    create.add_argument("--cron", required=True, help='5-field cron, e.g. "0 3 * * 1"')
    create.add_argument("--time-zone", help="IANA time zone for the cron, e.g. Europe/Berlin")
    create.add_argument("--schedule-name", default="train-to-serve-retraining")
    create.add_argument("--max-concurrent-runs", type=int, default=1)
    create.add_argument("--max-runs", type=int, help="stop after this many runs")
    create.add_argument("--start-time", help="ISO 8601 with offset, e.g. 2026-12-01T00:00:00Z")
    create.add_argument("--end-time", help="ISO 8601 with offset")
    create.add_argument(
        "--allow-queueing",
        action="store_true",
        help="queue a run instead of skipping it when max concurrent runs is reached",
    )
    create.set_defaults(handler=_schedule_create)
    for action, text in (
        ("list", "list schedules"),
        ("pause", "pause a schedule"),
        ("resume", "resume a schedule"),
        ("delete", "delete a schedule"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--project", required=True)
        sub.add_argument("--region", default="us-central1")
        if action != "list":
            sub.add_argument("schedule", help="schedule ID or full resource name")
        sub.set_defaults(handler=_schedule_action)


def _schedule_create(args: argparse.Namespace) -> int:
    from pipelines.parameters import caching_note
    from pipelines.vertex_jobs import ScheduleSettings, create_schedule

    created = create_schedule(
        _run_settings(args),
        ScheduleSettings(
            cron=args.cron,
            time_zone=args.time_zone,
            display_name=args.schedule_name,
            max_concurrent_runs=args.max_concurrent_runs,
            max_runs=args.max_runs,
            start_time=args.start_time,
            end_time=args.end_time,
            allow_queueing=args.allow_queueing,
        ),
    )
    print(f"created schedule {created.resource_name}")
    print(caching_note(args.template, args.enable_caching))
    return 0


def _schedule_action(args: argparse.Namespace) -> int:
    from pipelines.vertex_jobs import schedule_action

    for row in schedule_action(
        args.action,
        project=args.project,
        region=args.region,
        schedule_id=getattr(args, "schedule", None),
    ):
        print(json.dumps(dict(row)))
    return 0


def _add_preflight(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check that a Google Cloud project is ready for the pipeline",
        description=(
            "Read the project with Google's client libraries: the APIs enabled, the Artifact "
            "Registry repository in the region, the buckets and their location, the roles of "
            "the run's and the build's service accounts. Prints a table with the gcloud command "
            "that fixes each miss; exit status 0 when all hold, 1 otherwise."
        ),
    )
    parser.add_argument("--project", required=True, help="Google Cloud project ID")
    parser.add_argument("--region", default="us-central1", help="the runs' region")
    parser.add_argument("--repository", default="train-to-serve", help="Artifact Registry repo")
    parser.add_argument("--pipeline-root", help="gs:// pipeline root of the runs")
    parser.add_argument("--staging-bucket", help="gs:// staging folder (build contexts)")
    parser.add_argument("--service-account", help="the account runs execute as")
    parser.add_argument("--build-service-account", help="the account Cloud Build runs as")
    parser.set_defaults(handler=_preflight)


def _preflight(args: argparse.Namespace) -> int:
    from pipelines.preflight import Clients, preflight, table

    buckets = [
        (uri, purpose)
        for uri, purpose in (
            (args.pipeline_root, "pipeline root"),
            (args.staging_bucket, "staging"),
        )
        if uri
    ]
    findings = preflight(
        args.project,
        args.region,
        clients=Clients.default(args.project),
        repository=args.repository,
        buckets=buckets,
        service_account=args.service_account or "",
        build_service_account=args.build_service_account or "",
    )
    print(table(findings))
    missing = [f for f in findings if not f.ok]
    print(f"\n{len(missing)} of {len(findings)} checks failed" if missing else "\nall checks hold")
    return 1 if missing else 0


def _add_check_contract(subparsers: argparse._SubParsersAction) -> None:
    from components import vertex
    from components.contract import INSTANCE_FORMATS, CheckSettings

    defaults = CheckSettings()
    parser = subparsers.add_parser(
        "check-contract",
        help="check a serving image against Vertex AI's custom-container contract",
        description=(
            "Start IMAGE the way Vertex AI does (its own entrypoint, the AIP_* variables, the "
            "declared port published) and check liveness, health, predict, malformed requests, "
            "a concurrent burst and SIGTERM with Vertex's numbers. Contract rules (what Vertex "
            "does not survive) fail the check; hygiene rules (what it tolerates: a 5xx on bad "
            "input, an oversize body mishandled, a slow SIGTERM) warn, unless --strict. Prints "
            "the verdict, each violation and each warning; exit status 0 on a pass (warnings "
            "allowed), 1 on a violation, 2 when the check could not run."
        ),
    )
    parser.add_argument("--image", required=True, help="image name or id in the local engine")
    parser.add_argument(
        "--port", type=int, default=vertex.DEFAULT_PORT, help="containerSpec port (%(default)s)"
    )
    parser.add_argument(
        "--health-route",
        default=vertex.DEFAULT_HEALTH_ROUTE,
        help="containerSpec.healthRoute (default: Vertex's, %(default)s)",
    )
    parser.add_argument(
        "--predict-route",
        default=vertex.DEFAULT_PREDICT_ROUTE,
        help="containerSpec.predictRoute (default: Vertex's, %(default)s)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="model directory to mount read-only and name in AIP_STORAGE_URI; its "
        "instances_sample.jsonl and expected_predictions.jsonl are the defaults below",
    )
    parser.add_argument(
        "--instances", type=Path, help="JSON Lines, one instance (object or list) per line"
    )
    parser.add_argument(
        "--expected",
        type=Path,
        help="JSON Lines, one expected prediction per instance (without it: shape only)",
    )
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="container variable"
    )
    parser.add_argument(
        "--startup-deadline",
        type=float,
        default=defaults.startup_deadline_s,
        help="seconds health may take to answer 200 (%(default)g)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=defaults.grace_period_s,
        help="seconds allowed from SIGTERM to exit (%(default)g)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on hygiene rules too (a 5xx on bad input, oversize, SIGTERM), not only on "
        "contract rules",
    )
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="containerSpec.grpcPorts[0]: publish it too and check gRPC there (grpc.health.v1, "
        "ModelInfer on the sample, bad input, reflection); needs --model-dir, whose manifest "
        "names the input tensors. The check sets SERVING_GRPC_PORT to it, which turns this "
        "project's server's gRPC on (other images ignore it)",
    )
    parser.add_argument(
        "--instance-format",
        choices=INSTANCE_FORMATS,
        default=INSTANCE_FORMATS[0],
        help="how instances are sent: object (default: keyed by feature name as exported, the "
        "edge instances also as lists) or list (every instance as a list of values in the "
        "manifest's feature order, what a pre-built scikit-learn container takes; needs "
        "--model-dir)",
    )
    parser.add_argument(
        "--foreign-image",
        action="store_true",
        help="the image is not one this project built (a Vertex pre-built container, a Custom "
        "Prediction Routine, your own server): a plain answer (labels only, or class "
        "probabilities) is compared with the same part of the expected predictions, and an "
        "error on an edge instance is a warning (edge-errors), not a predict-values failure",
    )
    parser.set_defaults(handler=_check_contract)


def _check_contract(args: argparse.Namespace) -> int:
    from components.contract import CheckSettings, as_list, check_image, feature_names, model_sample
    from components.runners import RunnerError
    from serving_image.server import artifact

    if args.instances is None and args.model_dir is None:
        raise UsageError("give --instances FILE.jsonl, or --model-dir with instances_sample.jsonl")
    if args.grpc_port and args.model_dir is None:
        raise UsageError("--grpc-port needs --model-dir: its manifest names ModelInfer's inputs")
    as_lists = args.instance_format == "list"
    if as_lists and args.model_dir is None:
        raise UsageError("--instance-format list needs --model-dir: its manifest has the order")
    env = dict(item.partition("=")[::2] for item in args.env)
    settings = CheckSettings(
        startup_deadline_s=args.startup_deadline,
        grace_period_s=args.grace_period,
        strict=args.strict,
        foreign_image=args.foreign_image,
    )
    try:
        from_model = args.instances is None and args.expected is None
        if from_model and (args.model_dir / artifact.EXPECTED_FILE).is_file():
            instances, expected, kinds = model_sample(args.model_dir, args.instance_format)
        else:
            instances_path = args.instances or args.model_dir / artifact.INSTANCES_FILE
            instances = artifact.read_jsonl(instances_path)
            expected = artifact.read_jsonl(args.expected) if args.expected else None
            kinds = None
            if as_lists:
                names = feature_names(args.model_dir)
                instances = [as_list(instance, names) for instance in instances]
        report = check_image(
            args.image,
            instances=instances,
            expected=expected,
            kinds=kinds,
            port=args.port,
            health_route=args.health_route,
            predict_route=args.predict_route,
            model_dir=args.model_dir,
            env=env,
            settings=settings,
            grpc_port=args.grpc_port,
        )
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except RunnerError as exc:
        print(f"error: the check could not run: {exc}", file=sys.stderr)
        return 2
    print(report.verdict())
    for violation in report.violations:
        print(f"\n{violation.message()}")
    for warning in report.warnings:
        print(f"\nwarning: {warning.message()}")
    if report.startup_s is not None:
        print(f"\nstartup (to first health 200): {report.startup_s:.2f} s")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report.to_markdown(), encoding="utf-8")
        print(f"report written to {args.report}")
    return 0 if report.passed else 1


def _add_endpoints(subparsers: argparse._SubParsersAction) -> None:
    from pipelines.local_run import DEFAULT_OUTPUT_DIR

    parser = subparsers.add_parser(
        "endpoints",
        help="list, call, split traffic on or undeploy the local endpoints run-local deploys",
        description=(
            "The local stand-in for Vertex AI endpoints (components/stand_ins/endpoints.py): "
            "each holds one or more deployed models (a serving container each, started by "
            "run-local's deploy step) behind a router on its own port that splits the traffic "
            "between them; recorded in --endpoints-dir."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoints-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR / "endpoints",
        help="where the endpoints are recorded (default: %(default)s)",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser(
        "list",
        parents=[common],
        help="one JSON line per endpoint: URL, gRPC address, router status, traffic split, "
        "deployed models",
    )
    predict = actions.add_parser(
        "predict", parents=[common], help="send instances to an endpoint, print the response"
    )
    predict.add_argument("endpoint", help="endpoint id (or its resource name)")
    predict.add_argument(
        "--instances",
        type=Path,
        required=True,
        help='.jsonl: one instance per line; .json: a list, or {"instances": [...]}',
    )
    predict.add_argument("--parameters", type=_json_object, help="JSON object sent as parameters")
    predict.add_argument(
        "--grpc",
        action="store_true",
        help="send them to the endpoint's gRPC port as an Open Inference Protocol "
        "ModelInferRequest (to a model whose containerSpec has grpcPorts); prints the same JSON",
    )
    split = actions.add_parser(
        "traffic",
        parents=[common],
        help="set an endpoint's traffic split (the router applies it from the next request)",
    )
    split.add_argument("endpoint", help="endpoint id (or its resource name)")
    split.add_argument(
        "--split",
        required=True,
        help="DEPLOYED_MODEL_ID=PERCENT,... adding up to 100, e.g. 1234=90,5678=10",
    )
    rollback = actions.add_parser(
        "rollback",
        parents=[common],
        help="restore the traffic split before the last change or deploy",
    )
    rollback.add_argument("endpoint", help="endpoint id (or its resource name)")
    undeploy = actions.add_parser(
        "undeploy",
        parents=[common],
        help="undeploy one deployed model, or a whole endpoint (router and containers)",
    )
    which = undeploy.add_mutually_exclusive_group(required=True)
    which.add_argument("endpoint", nargs="?", help="endpoint id (or its resource name)")
    which.add_argument("--all", action="store_true", help="every endpoint in --endpoints-dir")
    undeploy.add_argument(
        "--deployed-model",
        metavar="DMID",
        help="only this deployed model (its share goes to the others in proportion)",
    )
    parser.set_defaults(handler=_endpoints)


def _endpoints(args: argparse.Namespace) -> int:
    from components import stand_ins as le
    from components.runners import RunnerError
    from components.traffic import TrafficSplitError, format_split, parse_split

    directory = args.endpoints_dir
    try:
        if args.action == "list":
            return _endpoints_list(directory)
        if args.action == "predict":
            instances, parameters = le.read_instances(args.instances)
            if args.parameters is not None:
                parameters = args.parameters
            predict = le.grpc_predict if args.grpc else le.predict
            response = predict(args.endpoint, instances, parameters, endpoints_dir=directory)
            print(json.dumps(response, indent=2))
            return 0
        if args.action in ("traffic", "rollback"):
            if args.action == "traffic":
                split = parse_split(args.split)
                endpoint = le.set_traffic(args.endpoint, split, endpoints_dir=directory)
            else:
                endpoint = le.rollback_traffic(args.endpoint, endpoints_dir=directory)
            print(
                f"endpoint {endpoint.endpoint_id}: traffic {format_split(endpoint.traffic_split)} "
                f"(was {format_split(endpoint.previous_traffic_split)})"
            )
            return 0
        if args.deployed_model:
            if args.all:
                raise UsageError("--deployed-model names one endpoint's model; leave out --all")
            endpoint = le.get_endpoint(args.endpoint, directory)
            seconds = le.undeploy_model(
                endpoint.endpoint_id, args.deployed_model, endpoints_dir=directory
            )
            now = le.get_endpoint(endpoint.endpoint_id, directory)
            stopped = f"stopped in {seconds:.1f} s" if seconds is not None else "was not running"
            print(
                f"undeployed {args.deployed_model} from {endpoint.endpoint_id} (container "
                f"{stopped}); traffic {format_split(now.traffic_split)}"
            )
            return 0
        endpoints = (
            le.list_endpoints(directory)
            if args.all
            else [le.get_endpoint(args.endpoint, directory)]
        )
        for endpoint in endpoints:
            seconds = le.undeploy(endpoint.endpoint_id, endpoints_dir=directory)
            count = len(endpoint.deployed_models)
            stopped = f"stopped in {seconds:.1f} s" if seconds is not None else "not running"
            noun = "container" if count == 1 else f"{count} containers"
            print(f"undeployed {endpoint.endpoint_id} ({noun} {stopped}, router stopped)")
        if args.all and not endpoints:
            print(f"no endpoints in {directory}", file=sys.stderr)
        return 0
    except (le.EndpointInputError, TrafficSplitError) as exc:
        raise UsageError(str(exc)) from None
    except (le.EndpointError, RunnerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _endpoints_list(endpoints_dir: Path) -> int:
    from components import stand_ins as le

    endpoints = le.list_endpoints(endpoints_dir)
    for endpoint in endpoints:
        row = {
            "endpoint": endpoint.endpoint_id,
            "display_name": endpoint.display_name,
            "url": endpoint.url,
            "grpc": endpoint.grpc_target or None,
            "router": le.router_status(endpoint, endpoints_dir),
            "traffic_split": endpoint.traffic_split,
            "deployed_models": [
                {
                    "id": deployed.id,
                    "model": deployed.model,
                    "status": le.container_status(deployed)
                    + ("" if deployed.ready else ", not ready (deploy did not finish)"),
                    "traffic": endpoint.traffic_split.get(deployed.id, 0),
                    "grpc": deployed.grpc_target or None,
                }
                for deployed in endpoint.deployed_models
            ],
            "created": endpoint.create_time,
        }
        print(json.dumps(row))
    if not endpoints:
        print(f"no endpoints in {endpoints_dir}", file=sys.stderr)
    return 0


def _add_batch_predict(subparsers: argparse._SubParsersAction) -> None:
    from components.stand_ins import batch_runner as runner
    from components.stand_ins.batch_inputs import FORMATS
    from components.stand_ins.sender import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S

    parser = subparsers.add_parser(
        "batch-predict",
        help="batch-predict files of instances against any running model server",
        description=(
            "Send the instances of jsonl or csv files to a predict URL the way Vertex AI's "
            "batch prediction does (requests of --batch-size instances, a few concurrent "
            "workers, retries with backoff on 429/5xx/timeouts, failing batches split to "
            "isolate bad instances) and write prediction.results-NNNNN-of-MMMMM and "
            "prediction.errors_stats-NNNNN-of-MMMMM files. Re-running into the same output "
            "directory resumes without losing or duplicating a line. Exit status 0 when every "
            "instance got a prediction, 1 when some got an error line, 2 when the job could "
            "not run."
        ),
    )
    parser.add_argument(
        "--url", required=True, help="the predict URL, e.g. http://host:8080/predict"
    )
    parser.add_argument(
        "--instances", required=True, nargs="+", help="input files or glob patterns"
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--format", default=FORMATS[0], choices=FORMATS)
    parser.add_argument(
        "--batch-size", type=int, default=runner.DEFAULT_BATCH_SIZE, help="instances per request"
    )
    parser.add_argument(
        "--workers", type=int, default=runner.DEFAULT_WORKERS, help="concurrent requests"
    )
    parser.add_argument("--key-field", default="", help="field sent back as 'key', not sent")
    parser.add_argument(
        "--parameters", type=_json_object, help="JSON object sent as parameters with every request"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per request"
    )
    parser.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_batch_predict)


def _batch_predict(args: argparse.Namespace) -> int:
    from components.stand_ins import BatchPredictError, run_batch

    for name in ("batch_size", "workers"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be more than 0 seconds, got {args.timeout}")
    if args.max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more, got {args.max_retries}")
    try:
        summary = run_batch(
            args.url,
            args.instances,
            args.output_dir,
            instances_format=args.format,
            batch_size=args.batch_size,
            workers=args.workers,
            parameters=args.parameters,
            key_field=args.key_field,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            progress=not args.no_progress,
        )
    except BatchPredictError as exc:
        raise UsageError(str(exc)) from exc
    print(summary.describe())
    print(f"output: {summary.output_dir}")
    if not summary.reconciled:
        return 2
    return 1 if summary.error_count else 0


def _add_capacity(subparsers: argparse._SubParsersAction) -> None:
    from components import vertex

    parser = subparsers.add_parser(
        "capacity",
        help="measure a serving image's capacity on a Vertex machine type and advise",
        description=(
            "Start IMAGE serving --model-dir under the CPU and memory a Vertex machine type "
            "gives a container (a fraction of it, scaled up, where this host has fewer CPUs "
            "beside the load generator), time its cold start, drive a stepped load (1, 2, 4, "
            "... clients) and advise deploy replicas, the CPU autoscaling target, the batch "
            "size and batch replicas; refuse a machine the model does not fit, naming one it "
            "fits. Writes capacity.json, capacity.md and capacity.png to --output-dir. Exit "
            "status 0 with advice, 1 on a refusal, 2 when it could not measure."
        ),
    )
    parser.add_argument("--image", required=True, help="image name or id in the local engine")
    parser.add_argument("--model-dir", type=Path, required=True, help="the model directory")
    parser.add_argument(
        "--machine-type", default=vertex.MACHINE_TYPE, help="Vertex machine type (%(default)s)"
    )
    parser.add_argument("--latency-slo-ms", type=float, default=200.0, help="p99 objective")
    parser.add_argument("--expected-qps", type=float, default=10.0, help="requests/s expected")
    parser.add_argument("--instances-per-request", type=int, default=1)
    parser.add_argument("--batch-instances", type=int, default=100_000)
    parser.add_argument("--batch-deadline-minutes", type=float, default=60.0)
    parser.add_argument(
        "--cpus", type=float, help="measure under this CPU limit (default: what the host allows)"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs") / "capacity")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="container variable"
    )
    parser.set_defaults(handler=_capacity)


def _capacity(args: argparse.Namespace) -> int:
    from components.capacity import CapacityError, measure_capacity
    from components.runners import RunnerError

    try:
        result = measure_capacity(
            args.image,
            args.model_dir,
            args.output_dir,
            machine=args.machine_type,
            latency_slo_ms=args.latency_slo_ms,
            expected_qps=args.expected_qps,
            instances_per_request=args.instances_per_request,
            batch_instances=args.batch_instances,
            batch_deadline_minutes=args.batch_deadline_minutes,
            cpus=args.cpus,
            env=dict(item.partition("=")[::2] for item in args.env),
        )
    except (CapacityError, RunnerError) as exc:
        print(f"error: could not measure: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    document = result.document
    print(document["measurement_note"])
    if result.deploy:
        deploy = result.deploy
        print(
            f"deploy on {args.machine_type}: {deploy.min_replica_count}-"
            f"{deploy.max_replica_count} replicas, CPU autoscaling target "
            f"{deploy.autoscaling_target}% ({deploy.per_replica_qps:g} requests/s per replica "
            f"at p99 <= {args.latency_slo_ms:g} ms)"
        )
    else:
        print(f"no deploy advice: {document['no_best_step_reason']}")
    if result.batch:
        print(
            f"batch: batch_size {result.batch.batch_size}, {result.batch.replica_count} "
            f"replica(s), about {result.batch.estimated_minutes:g} min"
        )
    print(f"report: {result.files.markdown}")
    if result.refusal:
        print(f"refused: {result.refusal}", file=sys.stderr)
        return 1
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_compile,
    _add_run_local,
    _add_submit,
    _add_schedule,
    _add_preflight,
    _add_check_contract,
    _add_capacity,
    _add_endpoints,
    _add_batch_predict,
]


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="compile.py",
        description="Train-to-serve for Vertex AI: local runs and container contract checks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; errors become one line and an exit status."""
    args = build_parser().parse_args(argv)
    from google.auth.exceptions import DefaultCredentialsError

    from components.training import TrainingInputError
    from pipelines.local_run import LocalRunError
    from pipelines.parameters import ParameterError
    from pipelines.vertex_jobs import AUTH_HINT, SubmitError

    try:
        return args.handler(args)
    except (UsageError, TrainingInputError, ParameterError, SubmitError, LocalRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DefaultCredentialsError:
        print(f"error: {AUTH_HINT}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
