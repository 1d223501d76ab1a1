"""Choosing a container engine: one is chosen only when it can build what our Dockerfiles need
(BuildKit secret and cache mounts), not merely when it answers.

Each test runs detection on a PATH it controls (a directory of its own; the standard
directories hidden too), with the real engines linked into it:

* docker can build: the docker under test in the docker pass (``make test-docker``: Debian's
  docker.io 20.10, BuildKit built in) is chosen before podman, and builds a Dockerfile that
  reads a build secret.
* docker cannot build: a docker CLI from 23.0 on without the buildx plugin answers ``docker
  version`` but fails every BuildKit build. Detection passes it over for the real podman,
  logs why and the fix, and probes it once per process. The CLI is ``STAND_IN_DOCKER``
  everywhere, and also the real one where this machine has such a CLI.
* only podman: podman is chosen, and nothing is said about a docker that is not there.
* neither: the error names each engine, why it failed, and the fixes; a docker asked for by
  name that cannot build is refused, not swapped for podman.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.imaging.local import build
from components.runners import ENGINE_ENV, Engine, RunnerNotFoundError, detect_engine
from components.runners import engine as engine_module
from tests.conftest import unavailable

STAND_IN_DOCKER = r"""#!/bin/sh
# Stand-in for the docker 28.2.2 CLI (the static build from download.docker.com) without the
# buildx plugin, talking to Debian 12's dockerd 20.10.24: what it prints and its exit status,
# measured with /usr/local/bin/docker on this kind of machine. Shell built-ins only (the test's
# PATH holds nothing else); each call is appended to "$0.calls".
printf '%s\n' "$*" >> "$0.calls"
case "$1 $DOCKER_BUILDKIT" in
  "version "*) printf '20.10.24+dfsg1\n' ;;  # asked as `version --format {{.Server.Version}}`
  "build 1")
    printf 'ERROR: BuildKit is enabled but the buildx component is missing or broken.\n' >&2
    printf '       Install the buildx component to build images with BuildKit:\n' >&2
    printf '       https://docs.docker.com/go/buildx/\n' >&2
    exit 1 ;;
  *) printf 'stand-in docker: not mimicked: %s\n' "$*" >&2; exit 2 ;;
esac
"""
HOST_PATH = f"{os.environ.get('PATH', '')}:{engine_module.DEFAULT_PATH}"
"""Where this machine's real engines are (read before any test hides them)."""
BUILDX_MISSING = "BuildKit is enabled but the buildx component is missing or broken"
SECRET_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN --mount=type=secret,id=ca test "$(cat /run/secrets/ca)" = detect-test-secret
"""


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only directory detection searches (PATH and the standard directories), no engine
    named by the environment."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.setattr(engine_module, "DEFAULT_PATH", str(directory))
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    return directory


def link(bin_dir: Path, name: str, target: str) -> Path:
    """``bin_dir/name`` pointing at the executable ``target``."""
    path = bin_dir / name
    path.symlink_to(target)
    return path


def stand_in_docker(bin_dir: Path) -> Path:
    """``STAND_IN_DOCKER`` as ``bin_dir/docker``."""
    path = bin_dir / "docker"
    path.write_text(STAND_IN_DOCKER)
    path.chmod(0o755)
    return path


def real_podman() -> str:
    """The real podman, which every case where detection falls back needs."""
    path = shutil.which("podman", path=HOST_PATH)
    if path is None:
        unavailable("podman is not installed: run scripts/setup-container-engine.sh")
    return path


def real_docker_without_buildx() -> str | None:
    """A real docker CLI from 23.0 on without the buildx plugin whose daemon answers, if this
    machine has one (this kind of machine: the static docker 28.2.2 in /usr/local/bin)."""
    for directory in dict.fromkeys(HOST_PATH.split(":")):
        path = Path(directory, "docker")
        if not os.access(path, os.X_OK):
            continue
        versions = subprocess.run(
            [path, "version", "--format", "{{.Client.Version}} {{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.split()
        if len(versions) != 2 or int(versions[0].split(".")[0]) < 23:
            continue  # no daemon answers, or BuildKit is built into this CLI
        plugin = subprocess.run([path, "buildx", "version"], capture_output=True, check=False)
        if plugin.returncode != 0:
            return str(path)
    return None


@pytest.fixture(params=["stand-in", "real"])
def docker_without_buildx(request: pytest.FixtureRequest) -> str:
    """A docker CLI that answers but cannot build: the stand-in, or this machine's real one."""
    if request.param == "stand-in":
        return ""  # made in the test's own bin directory
    real = real_docker_without_buildx()
    if real is None:
        pytest.skip("no real docker CLI >= 23.0 without buildx (and a daemon) on this machine")
    return real


@pytest.mark.container
def test_a_docker_that_can_build_is_chosen_before_podman_and_builds_with_a_secret(
    engine: Engine, base_image: str, bin_dir: Path, tmp_path: Path
) -> None:
    if engine.name != "docker":
        pytest.skip(f"the docker pass runs this (make test-docker); this pass uses {engine.name}")
    link(bin_dir, "docker", engine.path)
    link(bin_dir, "podman", real_podman())  # there too: docker comes first

    chosen = detect_engine(refresh=True)

    assert (chosen.name, Path(chosen.path).parent) == ("docker", bin_dir)
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(SECRET_DOCKERFILE)
    secret = tmp_path / "secret"
    secret.write_text("detect-test-secret")
    tag = "localhost/train-to-serve-detect-test:secret"
    result = build(chosen, context, tag, {"BASE_IMAGE": base_image}, ca_bundle=secret)
    assert chosen.image_id(tag) == result.image_id  # the RUN that reads the secret passed
    chosen.remove_image(tag)


@pytest.mark.container
def test_a_docker_that_cannot_build_is_passed_over_for_podman_with_the_reason(
    docker_without_buildx: str, bin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    podman = link(bin_dir, "podman", real_podman())
    docker = (
        link(bin_dir, "docker", docker_without_buildx)
        if docker_without_buildx
        else stand_in_docker(bin_dir)
    )

    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        chosen = detect_engine(refresh=True)
        again = detect_engine()

    assert (chosen.name, chosen.path) == ("podman", str(podman))
    assert again is chosen
    (record,) = caplog.records
    said = record.getMessage()
    assert said.startswith(f"container engine: podman ({podman}); passed over: docker ({docker}")
    assert BUILDX_MISSING in said
    assert "Fix: give docker a BuildKit builder: install Docker's buildx plugin" in said
    if not docker_without_buildx:  # the stand-in counts its calls: one probe per process
        calls = Path(f"{docker}.calls").read_text().splitlines()
        assert [call.split()[0] for call in calls] == ["version", "build"]


@pytest.mark.container
def test_with_only_podman_podman_is_chosen_and_nothing_is_said(
    bin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    podman = link(bin_dir, "podman", real_podman())

    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        chosen = detect_engine(refresh=True)

    assert (chosen.name, chosen.path) == ("podman", str(podman))
    assert chosen.version[0].isdigit()
    assert not caplog.records


def test_with_neither_the_error_names_each_engine_and_the_fixes(bin_dir: Path) -> None:
    docker = stand_in_docker(bin_dir)

    with pytest.raises(RunnerNotFoundError) as raised:
        detect_engine(refresh=True)

    lines = str(raised.value).splitlines()
    assert lines[0] == "no working container engine. Tried:"
    assert lines[1].startswith(f"  - docker ({docker}, server 20.10.24+dfsg1) answers but cannot")
    assert BUILDX_MISSING in lines[1]
    assert "install Docker's buildx plugin" in lines[1]
    assert "or use podman (scripts/setup-container-engine.sh sets it up)" in lines[1]
    assert lines[2] == "  - podman: not found on PATH"
    assert lines[3].startswith("Fix: run scripts/setup-container-engine.sh from the repository")


def test_a_docker_asked_for_that_cannot_build_is_refused_not_swapped(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docker = stand_in_docker(bin_dir)
    (bin_dir / "podman").symlink_to("/bin/true")  # would answer, but was not asked for
    monkeypatch.setenv(ENGINE_ENV, "docker")

    with pytest.raises(RunnerNotFoundError) as raised:
        detect_engine(refresh=True)

    lines = str(raised.value).splitlines()
    assert lines[0] == "no working container engine. Tried only 'docker' (the one requested):"
    assert lines[1].startswith(f"  - docker ({docker}, server 20.10.24+dfsg1) answers but cannot")
    assert len(lines) == 3  # podman, though there, was not tried
    assert lines[2].endswith(f"Or unset {ENGINE_ENV} to let the project choose.")
