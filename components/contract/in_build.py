"""The contract check as steps of the Cloud Build that builds the image (``check_steps``), and
the two commands the checker image runs there (``python -m components.contract.in_build
check|verdict``).

A pipeline task on Vertex has no container engine, but a Cloud Build has Docker: after the
build step, the image is started the way Vertex starts it on the build's ``cloudbuild``
network and checked by name from the next step, before anything is pushed:

1. ``start-serving-image`` (Docker builder): notes the time and runs the image detached as
   ``SERVER_NAME`` with Vertex's ``AIP_*`` environment; no init process, no arguments.
2. ``contract-check`` (the checker image): ``check_server`` against
   ``http://SERVER_NAME:PORT`` with the model's sample (and, with a gRPC port, the gRPC rules
   against ``SERVER_NAME:GRPC_PORT``: on the build's network every port of the container is
   reachable by name, nothing is published); the report goes to ``contract/report.json``. It
   never fails the build itself.
3. ``stop-serving-image`` (Docker builder): SIGTERM, ``docker wait`` within the grace period
   (SIGKILL after it), the exit status and the container's logs to ``contract/``.
4. ``contract-verdict`` (the checker image): adds the SIGTERM rule and the logs, writes
   ``report.md`` and ``metrics.json``, prints the report as one JSON line after
   ``REPORT_PREFIX`` (``read_report`` gets it back from the build log) and the verdict, and
   exits 1 on a violation: the build fails and its ``images`` are not pushed, so the digest
   Cloud Build pushes is the digest that was checked.

Every path is relative to the step's working directory (``/workspace`` on Cloud Build), and
every ``$`` in a script is written ``$$``: Cloud Build reads ``$NAME`` in step arguments as a
substitution. What a build cannot see, the report says: the container's sockets, and for a
GPU image the GPU itself (Cloud Build has none; TensorFlow runs on the CPU there).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from components import vertex
from components.contract.checker import check_server
from components.contract.grpc_rules import GrpcTarget, manifest_features
from components.contract.rules import (
    LOG_TAIL_LINES,
    ContractReport,
    ContractViolation,
    explain_exit,
    sigterm_result,
    skip_result,
)
from components.contract.settings import CheckSettings, checked_env
from components.runners import tail_lines
from serving_image.server import artifact

if TYPE_CHECKING:  # imported where used: google-cloud-build takes ~1 s to import
    from google.cloud.devtools import cloudbuild_v1

SERVER_NAME = "tts-serving"
"""The serving container's name on the build's network."""
OUT_DIR = "contract"
"""Where the steps leave their results, relative to the workspace."""
STEP_IDS = ("start-serving-image", "contract-check", "stop-serving-image", "contract-verdict")
VERDICT_STEP = STEP_IDS[-1]
REPORT_PREFIX = "contract report: "
GPU_NOT_EXERCISED = "not exercised: Cloud Build has no GPU"


def _script(text: str) -> str:
    """A bash script as a Cloud Build step argument: ``$`` escaped as ``$$``."""
    return text.strip().replace("$", "$$")


def check_steps(
    image_uri: str,
    *,
    checker_image: str,
    sample_dir: str,
    wait_for: str,
    port: int = vertex.DEFAULT_PORT,
    health_route: str = vertex.DEFAULT_HEALTH_ROUTE,
    predict_route: str = vertex.DEFAULT_PREDICT_ROUTE,
    env: Mapping[str, str] | None = None,
    storage_uri: str = "",
    settings: CheckSettings | None = None,
    gpu: bool = False,
    grpc_port: int | None = None,
) -> list[cloudbuild_v1.BuildStep]:
    """The four steps that start ``image_uri``, check it, stop it and give the verdict.

    Args:
        image_uri: the image the build step tagged (not pushed yet).
        checker_image: the image with this package (the components image, by digest).
        sample_dir: a directory of the build's source with the model's
            ``instances_sample.jsonl``, ``expected_predictions.jsonl`` (and its manifest).
        wait_for: the id of the step that builds the image.
        port, health_route, predict_route: what ``containerSpec`` will declare.
        env: ``containerSpec.env`` (no ``AIP_`` names).
        storage_uri: ``AIP_STORAGE_URI`` (the model's ``gs://`` URI for an image without the
            model; the build's service account must read it); empty for a baked model.
        settings: the check's numbers (startup deadline, grace period, strict).
        gpu: the image is the GPU variant: the report says the GPU was not exercised.
        grpc_port: ``containerSpec.grpcPorts[0]``, to check gRPC there too; the container
            gets ``SERVING_GRPC_PORT`` set to it unless ``env`` sets it (``checked_env``);
            ``None`` or 0: no gRPC.
    """
    from google.cloud.devtools import cloudbuild_v1

    settings = settings or CheckSettings()
    variables = {
        **checked_env(env, grpc_port),
        **vertex.vertex_environment(port, health_route, predict_route, storage_uri),
    }
    run = ["docker", "run", "--detach", "--network", vertex.CLOUD_BUILD_NETWORK]
    run += ["--name", SERVER_NAME]
    for name, value in variables.items():
        run += ["--env", f"{name}={value}"]
    started = f"mkdir -p {OUT_DIR} && date +%s.%N > {OUT_DIR}/started"
    start = f"{started} && {shlex.join([*run, image_uri])}"
    grace = f"{settings.grace_period_s:g}"
    stop = f"""
out={OUT_DIR}
if [ "$(docker inspect --format '{{{{.State.Running}}}}' {SERVER_NAME})" = true ]; then
  start=$(date +%s.%N)
  docker kill --signal TERM {SERVER_NAME} > /dev/null
  if code=$(timeout {grace} docker wait {SERVER_NAME}); then killed=0
  else docker kill {SERVER_NAME} > /dev/null 2>&1; code=$(docker wait {SERVER_NAME}); killed=1
  fi
  end=$(date +%s.%N)
  printf 'exited_before=0\\nexit_code=%s\\nkilled=%s\\nstart=%s\\nend=%s\\n' \\
    "$code" "$killed" "$start" "$end" > $out/stop.env
else
  code=$(docker inspect --format '{{{{.State.ExitCode}}}}' {SERVER_NAME})
  printf 'exited_before=1\\nexit_code=%s\\n' "$code" > $out/stop.env
fi
docker logs {SERVER_NAME} > $out/container.log 2>&1
docker rm {SERVER_NAME} > /dev/null
"""
    check = [
        "-m", "components.contract.in_build", "check",
        "--url", f"http://{SERVER_NAME}:{port}",
        "--image", image_uri,
        "--health-route", health_route,
        "--predict-route", predict_route,
        "--sample", sample_dir,
        "--startup-deadline", f"{settings.startup_deadline_s:g}",
        "--grace-period", grace,
        *(["--strict"] if settings.strict else []),
    ]  # fmt: skip
    if grpc_port:
        check += ["--grpc-address", f"{SERVER_NAME}:{grpc_port}", "--grpc-port", str(grpc_port)]
    verdict = ["-m", "components.contract.in_build", "verdict", "--grace-period", grace]
    verdict += ["--gpu"] if gpu else []
    ids = dict(zip(("start", "check", "stop", "verdict"), STEP_IDS, strict=True))
    return [
        cloudbuild_v1.BuildStep(
            id=ids["start"],
            name=vertex.CLOUD_BUILD_DOCKER,
            entrypoint="bash",
            args=["-c", _script(start)],
            wait_for=[wait_for],
        ),
        cloudbuild_v1.BuildStep(
            id=ids["check"],
            name=checker_image,
            entrypoint="python",
            args=check,
            wait_for=[ids["start"]],
        ),
        cloudbuild_v1.BuildStep(
            id=ids["stop"],
            name=vertex.CLOUD_BUILD_DOCKER,
            entrypoint="bash",
            args=["-c", _script(stop)],
            wait_for=[ids["check"]],
        ),
        cloudbuild_v1.BuildStep(
            id=ids["verdict"],
            name=checker_image,
            entrypoint="python",
            args=verdict,
            wait_for=[ids["stop"]],
        ),
    ]


def check(args: argparse.Namespace) -> int:
    """Step 2: the rules over HTTP (and gRPC) against the container by name;
    ``report.json``."""
    out = Path(OUT_DIR)
    started_wall = float((out / "started").read_text())
    started = time.monotonic() - (time.time() - started_wall)  # one host, one clock
    instances, expected, kinds = artifact.read_sample(args.sample)
    grpc = None
    if args.grpc_port:
        features = manifest_features(args.sample, args.grpc_port)
        grpc = GrpcTarget(args.grpc_address, args.grpc_port, features)
    settings = CheckSettings(
        startup_deadline_s=args.startup_deadline,
        grace_period_s=args.grace_period,
        strict=args.strict,
    )
    report = check_server(
        args.url,
        instances=instances,
        expected=expected,
        kinds=kinds,
        health_route=args.health_route,
        predict_route=args.predict_route,
        settings=settings,
        started=started,
        grpc=grpc,
    )
    report.target = args.image
    report.settings = {
        "image": args.image,
        "where": f"Cloud Build: the container {SERVER_NAME} on the {vertex.CLOUD_BUILD_NETWORK} "
        "network, checked before the image is pushed",
        **report.settings,
    }
    (out / "report.json").write_text(json.dumps(report.to_dict()), encoding="utf-8")
    print(report.verdict())
    return 0


def _stop_facts(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def verdict(args: argparse.Namespace) -> int:
    """Step 4: the SIGTERM rule and the logs added; the report printed; 1 on a violation."""
    out = Path(OUT_DIR)
    report = ContractReport.from_dict(json.loads((out / "report.json").read_text()))
    stop = _stop_facts(out / "stop.env")
    logs = (out / "container.log").read_text(encoding="utf-8", errors="replace")
    code = int(stop["exit_code"]) if stop.get("exit_code", "").lstrip("-").isdigit() else None
    if stop.get("exited_before") == "1":
        report.rules.append(skip_result("sigterm", "the container had already exited"))
        note = explain_exit(-1 if code is None else code, logs)
        first = next(iter(report.violations), None)
        if first is not None and note not in first.detail:
            first.detail = f"{first.detail}. {note}"
    else:
        seconds = float(stop["end"]) - float(stop["start"])
        report.rules.append(
            sigterm_result(args.grace_period, seconds, code, stop.get("killed") == "1")
        )
        report.stop_s = seconds
    report.logs = logs
    if args.gpu:
        said = [line for line in logs.splitlines() if "runs the model on" in line]
        report.settings["GPU"] = (
            f"{GPU_NOT_EXERCISED}; the server said: {said[0]}"
            if said
            else f"{GPU_NOT_EXERCISED}; the server did not say which device it used"
        )
    (out / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    (out / "metrics.json").write_text(json.dumps(report.metrics()), encoding="utf-8")
    logged = ContractReport.from_dict(report.to_dict())
    logged.logs = tail_lines(logs, LOG_TAIL_LINES)  # what the Markdown report shows
    print(REPORT_PREFIX + json.dumps(logged.to_dict()))
    print(report.verdict())
    if not report.passed:
        print(ContractViolation(report))
        return 1
    return 0


def read_report(lines: Sequence[str]) -> ContractReport:
    """The report the verdict step printed, from its lines of the build log.

    Raises:
        ValueError: the lines hold no report (the build failed before the verdict).
    """
    for line in lines:
        if line.startswith(REPORT_PREFIX):
            return ContractReport.from_dict(json.loads(line[len(REPORT_PREFIX) :]))
    raise ValueError("the build log holds no contract report: the check did not run to its end")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.contract.in_build")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("check", help="step 2: the rules over HTTP")
    run.add_argument("--url", required=True)
    run.add_argument("--image", required=True)
    run.add_argument("--health-route", required=True)
    run.add_argument("--predict-route", required=True)
    run.add_argument("--sample", type=Path, required=True)
    run.add_argument("--startup-deadline", type=float, required=True)
    run.add_argument("--grace-period", type=float, required=True)
    run.add_argument("--strict", action="store_true")
    run.add_argument("--grpc-address", help="host:port of the gRPC port, with --grpc-port")
    run.add_argument("--grpc-port", type=int, help="the container's gRPC port (grpcPorts[0])")
    run.set_defaults(handler=check)
    final = commands.add_parser("verdict", help="step 4: SIGTERM, logs, report, exit status")
    final.add_argument("--grace-period", type=float, required=True)
    final.add_argument("--gpu", action="store_true")
    final.set_defaults(handler=verdict)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
