"""A local stand-in for Cloud Build: run a ``cloudbuild_v1.Build`` with podman or docker.

Each step runs as Cloud Build runs it, as far as this machine allows: in order (``waitFor``
may name only earlier steps here), on one user-defined network (Cloud Build's ``cloudbuild``;
named uniquely here, so builds can run side by side), the workspace (a copy of the build's
source) mounted at ``/workspace``, the step's ``dir`` its working directory, ``env`` and
``entrypoint`` as given, and ``$$`` read as ``$`` (Cloud Build's escape for substitutions).

A step of Cloud Build's Docker builder (``gcr.io/cloud-builders/docker``: the Docker CLI
against the build's own daemon; it cannot be pulled here) runs on this machine with a
``docker`` command mapped to the local engine (``docker_shim``): the ``cloudbuild`` network
and the containers' names made this build's own (one engine serves every build here),
podman's build flags, and the host's CA bundle as the build secret ``ca``.

On success, ``images`` are recorded as pushed (with their digests; nothing leaves the
machine) and ``artifacts.objects`` copied to a local folder; on a failure, neither, as on
Cloud Build. The log is Cloud Build's: ``Step #N - "id": line``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from components import vertex
from components.runners import Engine

if TYPE_CHECKING:
    from google.cloud.devtools import cloudbuild_v1

_SUBSTITUTION = re.compile(r"\$(\$|\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


class LocalBuildError(ValueError):
    """The build config asks for something this stand-in cannot do as Cloud Build would."""


@dataclass
class LocalBuild:
    """How a build ran here."""

    build_id: str
    status: str
    """``SUCCESS`` or ``FAILURE``, as Cloud Build names them."""
    step_status: dict[str, str]
    """Step id -> ``SUCCESS``, ``FAILURE`` or ``QUEUED`` (never run)."""
    log: list[str] = field(default_factory=list)
    pushed: dict[str, str] = field(default_factory=dict)
    """Image -> digest, of the images Cloud Build would have pushed (success only)."""
    artifacts_dir: Path | None = None
    """Where ``artifacts.objects`` were copied (success only)."""

    def output(self, step_id: str) -> list[str]:
        """The output lines of one step."""
        index = list(self.step_status).index(step_id)
        prefix = f'Step #{index} - "{step_id}": '
        return [line[len(prefix) :] for line in self.log if line.startswith(prefix)]


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with Cloud Build's substitutions: ``$$`` -> ``$``, ``$NAME``/``${NAME}`` from
    ``values``; ``LocalBuildError`` for a name Cloud Build would not know either."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "$":
            return "$"
        name = name.strip("{}")
        if name not in values:
            raise LocalBuildError(
                f"${name} is not a substitution of this build: write $$ for a literal $"
            )
        return values[name]

    return _SUBSTITUTION.sub(replace, text)


def docker_shim(
    engine: Engine, network: str, suffix: str, state_dir: Path, ca_bundle: Path | None
) -> str:
    """A ``docker`` command for one build: the local engine, with Cloud Build's network mapped
    to this build's, container names made this build's own (``--name X`` runs ``X-suffix``,
    reachable as ``X`` on the network; later ``X`` arguments mean it), ``--progress`` dropped
    for podman, and the CA bundle given to image builds as secret ``ca``."""
    secret = f"--secret id=ca,src={ca_bundle}" if ca_bundle else ""
    drop_progress = "continue" if engine.name == "podman" else ":"
    return f"""#!/usr/bin/env bash
# docker for a local stand-in of Cloud Build: {engine.name}, network {network}
names={state_dir}/container-names
touch "$names"
args=()
alias=()
previous=
for arg in "$@"; do
  if [ "$previous" = --network ] && [ "$arg" = {vertex.CLOUD_BUILD_NETWORK} ]; then
    arg={network}
  elif [ "$previous" = --name ]; then
    echo "$arg" >> "$names"
    alias=(--network-alias "$arg")
    arg="$arg-{suffix}"
  elif grep -qxF -- "$arg" "$names"; then
    arg="$arg-{suffix}"
  fi
  case $arg in
    --network={vertex.CLOUD_BUILD_NETWORK}) arg=--network={network} ;;
    --progress=*) {drop_progress} ;;
  esac
  args+=("$arg")
  previous=$arg
done
if [ "${{args[0]}}" = run ] && [ ${{#alias[@]}} -gt 0 ]; then
  args=(run "${{alias[@]}}" "${{args[@]:1}}")
fi
if [ "${{args[0]}}" = build ] && [ -n "{secret}" ]; then
  args=(build {secret} "${{args[@]:1}}")
fi
exec {engine.path} "${{args[@]}}"
"""


def run_build(
    build: cloudbuild_v1.Build,
    source_dir: str | Path,
    engine: Engine,
    work_dir: str | Path,
    *,
    ca_bundle: Path | None = None,
    substitutions: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> LocalBuild:
    """Run ``build`` here on a copy of ``source_dir``; how it went.

    Args:
        build: the build config (``CreateBuildRequest.build``).
        source_dir: what Cloud Build would unpack from ``build.source`` into ``/workspace``.
        engine: the local container engine.
        work_dir: an empty folder for the workspace, the docker command and the artifacts.
        ca_bundle: the CA bundle image builds get as secret ``ca`` (a TLS-intercepting proxy).
        substitutions: values for ``$NAME`` in step arguments (``PROJECT_ID``, ...).
        on_line: called with each log line as it comes.
    """
    build_id = f"local-{uuid.uuid4().hex[:12]}"
    values = {"BUILD_ID": build_id, **(substitutions or {})}
    work = Path(work_dir)
    workspace = work / "workspace"
    shutil.copytree(source_dir, workspace)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    network = f"tts-cloudbuild-{build_id}"
    shim = bin_dir / "docker"
    shim.write_text(docker_shim(engine, network, build_id, bin_dir, ca_bundle))
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    ids = [step.id or f"step-{index}" for index, step in enumerate(build.steps)]
    result = LocalBuild(build_id, "SUCCESS", dict.fromkeys(ids, "QUEUED"))
    deadline = time.monotonic() + (build.timeout.total_seconds() if build.timeout else 3600)
    engine.command("network", "create", network)
    try:
        for index, step in enumerate(build.steps):
            step_id = list(result.step_status)[index]
            earlier = list(result.step_status)[:index]
            unknown = [w for w in step.wait_for if w not in earlier and w != "-"]
            if unknown:
                raise LocalBuildError(f"step {step_id} waits for {unknown}, not earlier steps")
            argv, cwd = _step_command(step, engine, network, workspace, bin_dir, values)
            env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
            env.update(item.split("=", 1) for item in [*build.options.env, *step.env])
            code = _stream(
                argv, cwd, env, f'Step #{index} - "{step_id}": ', result, on_line, deadline
            )
            result.step_status[step_id] = "SUCCESS" if code == 0 else "FAILURE"
            if code != 0:
                result.status = "FAILURE"
                break
    finally:
        left = engine.command("ps", "-a", "-q", "--filter", f"network={network}", check=False)
        for container in left.stdout.split():
            engine.command("rm", "-f", container, check=False)
        engine.command("network", "rm", network, check=False)
    if result.status == "SUCCESS":
        for image in build.images:
            inspected = engine.image_inspect(image)
            result.pushed[image] = inspected.get("Digest") or inspected["Id"]
        if build.artifacts and build.artifacts.objects.paths:
            result.artifacts_dir = _copy_artifacts(build.artifacts.objects, workspace, work)
    return result


def _step_command(
    step: cloudbuild_v1.BuildStep,
    engine: Engine,
    network: str,
    workspace: Path,
    bin_dir: Path,
    values: Mapping[str, str],
) -> tuple[list[str], Path]:
    """The command line of one step, and where it runs."""
    args = [substitute(arg, values) for arg in step.args]
    if step.name == vertex.CLOUD_BUILD_DOCKER:  # on this machine, docker mapped to the engine
        entrypoint = step.entrypoint or "docker"
        program = str(bin_dir / "docker") if entrypoint == "docker" else entrypoint
        return [program, *args], workspace / step.dir
    run = ["run", "--rm", "--network", network, "--volume", f"{workspace}:/workspace"]
    run += ["--workdir", f"{vertex.CLOUD_BUILD_WORKSPACE}/{step.dir}".rstrip("/")]
    for item in step.env:
        run += ["--env", item]
    if step.entrypoint:
        run += ["--entrypoint", step.entrypoint]
    return [engine.path, *run, step.name, *args], workspace


def _stream(
    argv: list[str],
    cwd: Path,
    env: Mapping[str, str],
    prefix: str,
    result: LocalBuild,
    on_line: Callable[[str], None] | None,
    deadline: float,
) -> int:
    """Run one step, its output into the log line by line; its exit status (124: timed out)."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as process:
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), process.kill)
        timer.start()
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = prefix + raw.rstrip("\n")
                result.log.append(line)
                if on_line:
                    on_line(line)
            code = process.wait()
        finally:
            timer.cancel()
        return 124 if time.monotonic() >= deadline else code


def _copy_artifacts(
    objects: cloudbuild_v1.Artifacts.ArtifactObjects, workspace: Path, work: Path
) -> Path:
    """Copy the files ``objects.paths`` match to ``work/artifacts/<bucket>/<path>``."""
    destination = work / "artifacts" / objects.location.removeprefix("gs://")
    destination.mkdir(parents=True)
    for pattern in objects.paths:
        for match in glob.glob(str(workspace / pattern)):
            shutil.copy2(match, destination / Path(match).name)
    return destination
