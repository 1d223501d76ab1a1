"""Building the serving image on this machine, with podman or docker.

* ``choose_base_image(engine)`` picks the serving image's ``BASE_IMAGE``:
  ``TRAIN_TO_SERVE_BASE_IMAGE`` if set; else ``docker.io/library/python:3.11-slim`` when it is
  present or can be pulled; else ``localhost/train-to-serve-python:3.11``, the Debian-based
  stand-in that the set-up script builds on machines that cannot reach Docker Hub.
* ``build(engine, ...)`` streams the engine's output line by line to a callback, passes the
  host's CA bundle as the build secret ``ca`` (pip behind a TLS-intercepting proxy), and on
  failure raises ``BuildError`` carrying the failing step and the output's tail.
* ``build_serving_image`` builds a context laid out by ``context.assemble_build_context``;
  ``build_local`` builds a model's image as its ``plan.BuildPlan`` says. In process mode
  nothing is built: the server runs from this checkout.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.imaging.context import assemble_build_context
from components.imaging.names import local_image_name
from components.imaging.plan import DEFAULT_IMAGE_NAME, BuiltImage, default_tag, prepare
from components.runners import PROCESS, Engine, ProcessRunner, detect_runner
from components.runners.engine import BUILDKIT_FIX, SETUP_HINT, child_env, normalise_id
from serving_image.server import artifact

logger = logging.getLogger(__name__)

BASE_IMAGE_ENV = "TRAIN_TO_SERVE_BASE_IMAGE"
"""Environment variable naming the base image to build the serving image from."""
CA_BUNDLE_ENV = "TRAIN_TO_SERVE_CA_BUNDLE"
"""Environment variable naming the CA bundle to give builds (``""`` or ``none``: give none)."""
PULL_TIMEOUT_ENV = "TRAIN_TO_SERVE_PULL_TIMEOUT"
"""Seconds allowed for pulling the registry base image (default 30)."""
REGISTRY_BASE_IMAGE = "docker.io/library/python:3.11-slim"
LOCAL_BASE_IMAGE = "localhost/train-to-serve-python:3.11"
"""Built by ``scripts/setup-container-engine.sh`` where Docker Hub cannot be reached."""
CA_BUNDLE_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some BSDs
)
CA_SECRET_ID = "ca"
"""Build secret id the Dockerfile reads (``RUN --mount=type=secret,id=ca``)."""
OUTPUT_LINES = 60
"""Build output lines kept for an error message."""

_STEP_RE = re.compile(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: |^(#\d+) \[[^\]]+\] ")
"""A step's first line: podman's ``STEP 3/9: RUN ...``, BuildKit's ``#7 [stage 3/9] RUN ...``."""
_BUILDKIT_ERROR_RE = re.compile(r"^(#\d+) ERROR")
"""BuildKit's line for the step that failed (``#7 ERROR: ...``): its steps run in parallel, so
the last step line seen may be another stage's."""


class BuildError(RuntimeError):
    """An image build failed, or cannot start. ``step`` is the failing step's line,
    ``output_tail`` the last lines of the build output."""

    def __init__(self, message: str, *, step: str = "", output_tail: str = "", returncode: int = 1):
        super().__init__(message)
        self.step = step
        self.output_tail = output_tail
        self.returncode = returncode


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` made."""

    image_id: str
    """Content-addressed id, ``sha256:...``; usable wherever an image name is."""
    tag: str
    seconds: float
    steps: int = 0
    """Build steps seen in the output."""
    cached_steps: int = 0
    """Of those, steps answered from the layer cache."""


def build(
    engine: Engine,
    context_dir: str | Path,
    tag: str,
    build_args: Mapping[str, str] | None = None,
    *,
    dockerfile: str | Path | None = None,
    on_line: Callable[[str], None] | None = None,
    ca_bundle: str | Path | bool | None = True,
    labels: Mapping[str, str] | None = None,
    timeout: float = 3600,
    extra_args: Sequence[str] = (),
) -> BuildResult:
    """Build ``context_dir`` into ``tag`` with ``engine`` and return the new image's id.

    Args:
        context_dir: the build context (see ``assemble_build_context``).
        tag: the image name to give it, e.g. ``localhost/penguins-server:1``.
        build_args: ``--build-arg`` values, e.g. ``{"BASE_IMAGE": ...}``.
        dockerfile: the Dockerfile, default ``<context_dir>/Dockerfile``.
        on_line: called with every output line (without newline) as it arrives;
            default: log each at DEBUG.
        ca_bundle: CA bundle to give the build as secret ``ca``: True finds the host's
            (``find_ca_bundle``), a path uses that one, False/None gives none.
        labels: ``--label`` values for the image.
        timeout: seconds before the build is killed.
        extra_args: more engine arguments, placed before the context.

    Raises:
        BuildError: the build failed or timed out; the message holds the failing step,
            the output's last lines and a hint when the cause is recognised.
    """
    context = Path(context_dir)
    if not context.is_dir():
        raise BuildError(f"build context {context} is not a directory")
    args = ["build", "-t", tag]
    if dockerfile is not None:
        args += ["-f", str(dockerfile)]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    ca = find_ca_bundle() if ca_bundle is True else (Path(ca_bundle) if ca_bundle else None)
    if ca is not None:
        if not ca.is_file():
            raise BuildError(f"CA bundle {ca} does not exist (set {CA_BUNDLE_ENV} or pass None)")
        args += ["--secret", f"id={CA_SECRET_ID},src={ca}"]
    if engine.name == "docker":
        args += ["--progress=plain"]  # BuildKit's step lines, one per line, as podman prints
    with tempfile.TemporaryDirectory(prefix="tts-build-") as scratch:
        iidfile = Path(scratch) / "iid"
        args += ["--iidfile", str(iidfile), *extra_args, str(context)]
        started = time.monotonic()
        rc, step, tail, steps, cached = _stream(engine, args, engine.build_env, on_line, timeout)
        seconds = time.monotonic() - started
        if rc != 0:
            raise BuildError(
                _build_failure_message(engine.name, tag, rc, step, tail, seconds),
                step=step,
                output_tail=tail,
                returncode=rc,
            )
        image_id = iidfile.read_text().strip() if iidfile.exists() else ""
    image_id = normalise_id(image_id) if image_id else (engine.image_id(tag) or "")
    if not image_id:
        raise BuildError(f"{engine.name} build of {tag} reported success but left no image id")
    return BuildResult(image_id, tag, seconds, steps, cached)


def _stream(
    engine: Engine,
    args: Sequence[str],
    env: Mapping[str, str],
    on_line: Callable[[str], None] | None,
    timeout: float,
) -> tuple[int, str, str, int, int]:
    """Run a command, feeding each output line to ``on_line``; return (rc, the failing step's
    line (else the last step line), output tail, steps seen, cached steps)."""
    emit = on_line or (lambda line: logger.debug("%s", line))
    tail: deque[str] = deque(maxlen=OUTPUT_LINES)
    step, failed, steps, cached = "", "", 0, 0
    buildkit_steps: dict[str, str] = {}  # "#7" -> its step line
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        [engine.path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
        env=child_env(env),
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if started := _STEP_RE.search(line):
                step, steps = line, steps + 1
                if started.group(1):
                    buildkit_steps[started.group(1)] = line
            elif (error := _BUILDKIT_ERROR_RE.search(line)) and not failed:
                failed = buildkit_steps.get(error.group(1), "")
            if "Using cache" in line or line.endswith(" CACHED"):
                cached += 1
            emit(line)
            if time.monotonic() > deadline:
                proc.kill()
                tail.append(f"[killed: the build ran longer than {timeout:.0f} s]")
                break
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            tail.append(f"[killed: the build ran longer than {timeout:.0f} s]")
    return rc, failed or step, "\n".join(tail), steps, cached


_BASE_CACHE: dict[tuple[str, str], str] = {}


def choose_base_image(engine: Engine, *, pull_timeout: float | None = None) -> str:
    """The ``BASE_IMAGE`` to build the serving image from (see the module docstring).

    Raises ``BuildError`` when neither base image can be had.
    """
    forced = os.environ.get(BASE_IMAGE_ENV, "").strip()
    if forced:
        return forced
    key = (engine.path, engine.name)
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    if pull_timeout is None:
        pull_timeout = float(os.environ.get(PULL_TIMEOUT_ENV, "") or 30)
    if engine.image_exists(REGISTRY_BASE_IMAGE) or engine.pull(REGISTRY_BASE_IMAGE, pull_timeout):
        choice = REGISTRY_BASE_IMAGE
    elif engine.image_exists(LOCAL_BASE_IMAGE):
        choice = LOCAL_BASE_IMAGE
    else:
        raise BuildError(
            f"no base image for the serving image: {REGISTRY_BASE_IMAGE} cannot be pulled and "
            f"{LOCAL_BASE_IMAGE} does not exist in {engine.name}'s image store. Fix: {SETUP_HINT} "
            f"(it builds {LOCAL_BASE_IMAGE} from Debian packages), or set {BASE_IMAGE_ENV}."
        )
    _BASE_CACHE[key] = choice
    return choice


def find_ca_bundle() -> Path | None:
    """The host's CA bundle to hand to builds: ``$TRAIN_TO_SERVE_CA_BUNDLE`` (``""`` or
    ``none`` turns it off), else ``PIP_CERT``/``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE`` if they
    name a file, else the usual system locations."""
    forced = os.environ.get(CA_BUNDLE_ENV)
    if forced is not None:
        forced = forced.strip()
        return Path(forced) if forced and forced.lower() != "none" else None
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var, "").strip()
        if value and Path(value).is_file():
            return Path(value)
    for candidate in CA_BUNDLE_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def build_serving_image(
    engine: Engine,
    tag: str,
    model_dir: str | Path | None = None,
    *,
    base_image: str | None = None,
    on_line: Callable[[str], None] | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    source_dir: str | Path | None = None,
    timeout: float = 3600,
    framework: str = "",
    pins: Mapping[str, str] | None = None,
) -> BuildResult:
    """Assemble a context (``assemble_build_context``, with ``pins`` for the requirements) in
    a temporary directory and build it with ``BASE_IMAGE`` from ``choose_base_image`` unless
    ``base_image`` is given, and ``FRAMEWORK`` (the Dockerfile's choice of requirements) from
    ``framework``, else from ``model_dir``'s manifest, else the Dockerfile's default
    (scikit-learn)."""
    if not framework and model_dir is not None:
        framework = str(artifact.read_manifest(model_dir)["framework"])
    args = {
        "BASE_IMAGE": base_image or choose_base_image(engine),
        **({"FRAMEWORK": framework} if framework else {}),
        **(build_args or {}),
    }
    with tempfile.TemporaryDirectory(prefix="tts-context-") as scratch:
        context = assemble_build_context(
            Path(scratch) / "context", model_dir, source_dir=source_dir, pins=pins
        )
        return build(engine, context, tag, args, on_line=on_line, labels=labels, timeout=timeout)


def _build_failure_message(
    engine: str, tag: str, rc: int, step: str, tail: str, seconds: float
) -> str:
    hints = []
    tls_failure = "CERTIFICATE_VERIFY_FAILED" in tail or "certificate verify failed" in tail
    if tls_failure:
        hints.append(
            "TLS to PyPI is intercepted and the build has no CA that trusts it: set "
            f"{CA_BUNDLE_ENV} to the CA bundle that does (the build gets it as secret "
            f"'{CA_SECRET_ID}')"
        )
    if "pinging container registry" in tail or "no such host" in tail or "pull access" in tail:
        hints.append(
            "the base image cannot be pulled; build from a local one: "
            f"{SETUP_HINT}, and pass BASE_IMAGE=choose_base_image(engine)"
        )
    if not tls_failure and (
        "No matching distribution" in tail or "Could not find a version" in tail
    ):
        hints.append(
            "pip cannot find a pinned requirement for the base image's Python; check "
            "serving_image/requirements.txt against Python 3.11"
        )
    if "buildx component is missing" in tail or "unknown flag: --secret" in tail:
        hints.append(f"this docker cannot build with BuildKit; {BUILDKIT_FIX}")
    if "no space left" in tail.lower():
        hints.append(f"the disk is full: free space, e.g. `{engine} image prune`")
    message = (
        f"{engine} build of {tag} failed (exit {rc}) after {seconds:.1f} s"
        + (f" at step: {step}" if step else "")
        + f"\n--- last lines of the build output ---\n{tail}"
    )
    if hints:
        message += "\n--- likely cause ---\n" + "\n".join(f"* {h}" for h in hints)
    return message


def process_image_reference(manifest: Mapping[str, Any]) -> str:
    """What ``build_local`` returns in process mode, where nothing is built:
    ``process:serving_image@<first 12 of the model's sha256>``."""
    return f"{PROCESS}:serving_image@{str(manifest['model_sha256'])[:12]}"


def _local_digest(engine: Engine, image_id: str, name: str) -> str:
    """The manifest digest the engine records for ``name`` (podman does for local builds;
    docker only after a push), or ``""``."""
    record = engine.image_inspect(image_id)
    for repo_digest in record.get("RepoDigests") or []:
        repo, _, digest = str(repo_digest).partition("@")
        if repo == name and digest:
            return digest
    return str(record.get("Digest") or "")


def build_local(
    model_dir: str | Path,
    image_name: str = DEFAULT_IMAGE_NAME,
    *,
    bake_model: bool = True,
    gpu: bool = False,
    engine: Engine | ProcessRunner | None = None,
    base_image: str = "",
    on_line: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Build the serving image for ``model_dir`` with podman or docker on this machine.

    Args:
        model_dir: the train component's model directory (``model_manifest.json`` inside).
        image_name: ``name[:tag]``; a bare name is built as ``localhost/name``; the default
            tag is ``default_tag(...)``.
        bake_model: copy the model into the image at ``/model`` (default), or build the
            runtime image that loads it from ``AIP_STORAGE_URI``.
        engine: the engine to use; default ``runners.detect_runner()``. In process mode
            (a ``ProcessRunner``) nothing is built: the reference is
            ``process_image_reference(manifest)`` and the digest ``""``.
        base_image: ``BASE_IMAGE``; default ``choose_base_image(engine)``.
        on_line: called with each line of build output; default: log each at INFO.

    Returns:
        The image, referenced by digest where the engine gives one (podman does).

    Raises:
        runners.RunnerNotFoundError: no working podman or docker (with the fix).
        BuildError: the build failed; holds the failing step's output.
        BuildImageInputError / artifact.ManifestError: bad name or model directory.
    """
    plan = prepare(model_dir, bake_model, gpu)
    tagged = local_image_name(image_name, default_tag(plan.manifest, bake_model, gpu))
    engine = engine or detect_runner()
    if isinstance(engine, ProcessRunner):  # process mode: the server runs from this checkout
        logger.info("process mode: no image is built; the server runs as a local process")
        return BuiltImage(process_image_reference(plan.manifest), "", PROCESS, 0.0)
    result = build_serving_image(
        engine,
        tagged,
        model_dir if bake_model else None,
        base_image=base_image or None,
        on_line=on_line or (lambda line: logger.info("%s", line)),
        labels=plan.labels,
        framework=plan.framework,
        pins=plan.pins,
    )
    name = tagged.rsplit(":", 1)[0]
    digest = _local_digest(engine, result.image_id, name)
    reference = f"{name}@{digest}" if digest else tagged
    logger.info(
        "built %s with %s in %.1f s (%d/%d steps cached)",
        reference,
        engine.name,
        result.seconds,
        result.cached_steps,
        result.steps,
    )
    return BuiltImage(
        reference=reference,
        digest=digest,
        builder=engine.name,
        seconds=result.seconds,
        image_id=result.image_id,
        tagged=tagged,
    )
