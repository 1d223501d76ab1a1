"""Build the serving image for a trained model, locally (podman/docker) or with Cloud Build.

The image is built from ``serving_image/`` (its ``Dockerfile``, pinned ``requirements.txt`` and
the ``server/`` package; ``container_engine.assemble_build_context`` lays the context out). The
model is either **baked in** at ``/model`` (``bake_model=True``, the default) or left out, in
which case the server loads it from ``AIP_STORAGE_URI`` when it starts (the Model must then be
uploaded with ``artifactUri`` set to the model directory).

Baked in is the default because the image digest then pins everything that decides a
prediction: server code, library versions and the model bytes. What the contract check tests
locally is exactly what Vertex AI pulls; the server starts without reaching Cloud Storage (no
download on every replica start, no dependence on the serving identity's bucket access); and
batch prediction from an unmanaged container model works with no ``artifactUri`` at all. The
cost is one image per model version, which is cheap: only the last layer (the model files)
differs between two models. Choose ``bake_model=False`` for one runtime image shared by many
models trained with the same library versions.

Two builders:

* ``build_local``: podman or docker on this machine (``container_engine.detect_engine``). The
  engine's step lines (``STEP 3/9: ...``) are logged as they come, the host's CA bundle is
  handed to pip inside the build (TLS-intercepting proxies), and a failed build raises
  ``container_engine.BuildError`` with the failing step and its output.
* ``build_with_cloud_build``: on Vertex AI Pipelines a component's pod has no Docker daemon.
  The context is packed (``.tar.gz``), uploaded to the staging bucket, built by Cloud Build in
  the pipeline's region and pushed to Artifact Registry in that region; the build log is
  tailed from the staging bucket as it is written. Returns ``image@sha256:...``.
  ``cloud_build_request`` is the pure request construction (tested offline, field by field).

The model's ``framework`` (from ``model_manifest.json``) is the ``FRAMEWORK`` build argument:
``scikit-learn`` installs ``requirements.txt``, ``tensorflow`` adds
``requirements-tensorflow.txt`` (tensorflow-cpu). Before either build the model's library
versions (scikit-learn, numpy and pandas; or tensorflow, keras and numpy) are compared with
the pins of those files: a model is never built into an image that would load it with other
library versions. ``gpu=True`` builds a TensorFlow model's GPU variant
(``FRAMEWORK=tensorflow-gpu``, ``requirements-tensorflow-gpu.txt``: TensorFlow with CUDA) for
the pipeline's GPU batch prediction job.

``build_model_image`` picks the builder (``"auto"``: the local engine when one works, else
Cloud Build when its settings are given); ``build_image`` is the KFP component around it.
"""

import gzip
import logging
import re
import tarfile
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kfp.dsl import Input, Model

# Imported from its module, not from kfp.dsl: inside a running component kfp.dsl stops
# exporting ``component``, yet the component body imports this module (see train.py).
from kfp.dsl.component_decorator import component

from components import container_engine as ce
from components.images import COMPONENTS_IMAGE
from serving_image.server import manifest as contract

if TYPE_CHECKING:  # imported where used: google-cloud-build takes ~1 s to import
    from google.cloud.devtools import cloudbuild_v1

logger = logging.getLogger(__name__)

BUILDERS = ("auto", "local", "cloud-build")
PINNED_LIBRARIES = ("scikit-learn", "numpy", "pandas")
"""Libraries whose version must be the same in training and serving (the model is a pickle)."""
FRAMEWORK_PINS = {
    "scikit-learn": PINNED_LIBRARIES,
    "tensorflow": ("tensorflow", "keras", "numpy"),
    "tensorflow-gpu": ("tensorflow", "keras", "numpy"),
}
"""Per model framework, the libraries whose training version the image must pin."""
DISTRIBUTION_ALIASES = {"tensorflow-cpu": "tensorflow"}
"""Requirement names that install another distribution's module (same version numbers)."""
DEFAULT_IMAGE_NAME = "train-to-serve-model"
LOCAL_REGISTRY = "localhost"
LABEL_PREFIX = "io.train-to-serve"

CLOUD_BUILD_DOCKER = "gcr.io/cloud-builders/docker"
"""The builder image of the Cloud Build step (Docker CLI with the worker's daemon)."""
CLOUD_BUILD_STEP_ID = "build-serving-image"
CLOUD_BUILD_TAG = "train-to-serve"
"""Build tag (not a Docker tag) that finds our builds: ``gcloud builds list --filter tags=...``."""
CLOUD_BUILD_TIMEOUT_S = 1800
STAGING_DIR = "train-to-serve/build-image"
"""Under the staging bucket (and its prefix): ``contexts/`` and ``logs/``."""
MULTI_REGIONS = ("us", "europe", "asia")
FAILED_STATUSES = ("FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED")
TERMINAL_STATUSES = ("SUCCESS", *FAILED_STATUSES)

_AR_HOST_RE = re.compile(r"^(?P<location>[a-z][a-z0-9-]*[a-z0-9])-docker\.pkg\.dev$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REPOSITORY_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOCATION_RE = re.compile(r"^[a-z]+(-[a-z]+\d*)*\d*$")
# Docker reference grammar: path components of lower-case alphanumerics joined by separators.
_NAME_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_LOG_STEP_RE = re.compile(r'^Step #(?P<index>\d+)(?: - "[^"]*")?: ?(?P<text>.*)$')


class BuildImageInputError(ValueError):
    """A build input is wrong (image name, region, bucket, model); the message says how."""


class CloudBuildError(RuntimeError):
    """A Cloud Build build did not succeed; the message holds the failing step's output."""


@dataclass(frozen=True)
class BuiltImage:
    """An image ``build_local`` or ``build_with_cloud_build`` made."""

    reference: str
    """What to pull or run: ``name@sha256:...`` where the engine gives a digest, else
    ``name:tag``."""
    digest: str
    """``sha256:...`` manifest digest, or ``""`` (docker gives none before a push)."""
    builder: str
    """``podman``, ``docker`` or ``cloud-build``."""
    seconds: float
    image_id: str = ""
    """Local engines: the content-addressed image id (``sha256:...``)."""
    tagged: str = ""
    """The ``name:tag`` it was built as."""


@dataclass(frozen=True)
class ArtifactRegistryImage:
    """A Docker image in Artifact Registry: ``{location}-docker.pkg.dev/{project}/{repository}/
    {name}:{tag}``."""

    location: str
    project: str
    repository: str
    name: str
    tag: str

    @property
    def repository_uri(self) -> str:
        """The image without tag or digest."""
        host = f"{self.location}-docker.pkg.dev"
        return f"{host}/{self.project}/{self.repository}/{self.name}"

    @property
    def uri(self) -> str:
        """The tagged image."""
        return f"{self.repository_uri}:{self.tag}"

    def pinned(self, digest: str) -> str:
        """The image by digest, ``...@sha256:...``."""
        return f"{self.repository_uri}@{digest}"


@dataclass(frozen=True)
class StagingLocation:
    """Where build contexts and build logs go: ``gs://{bucket}/{prefix}``."""

    bucket: str
    prefix: str

    def object_name(self, *parts: str) -> str:
        """An object name under the prefix and ``STAGING_DIR``."""
        return "/".join(p for p in (self.prefix, STAGING_DIR, *parts) if p)

    def context_object(self, context_sha256: str) -> str:
        """The object name of a packed build context, named by its content."""
        return self.object_name("contexts", f"{context_sha256}.tar.gz")

    @property
    def logs_uri(self) -> str:
        """``Build.logs_bucket``: Cloud Build writes ``{logs_uri}/log-{build_id}.txt``."""
        return f"gs://{self.bucket}/{self.object_name('logs')}"

    def log_object(self, build_id: str) -> str:
        """The object name of a build's log."""
        return self.object_name("logs", f"log-{build_id}.txt")


# ------------------------------------------------------------------- parsing --
def parse_image_name(image: str) -> tuple[str, str, str]:
    """Split ``[host/]path[:tag]`` into host (``""`` when none), path and tag (``""`` when
    none), checking path and tag. As in Docker, the first part is a registry host when more
    parts follow and it has a ``.`` or ``:`` or is ``localhost``.

    Raises:
        BuildImageInputError: a digest, or a path or tag Docker would refuse.
    """
    text = image.strip()
    if "@" in text:
        raise BuildImageInputError(
            f"image name {image!r} has a digest; give a name (and optionally a tag): the "
            "digest is what the build produces"
        )
    first, _, rest = text.partition("/")
    host = first if rest and ("." in first or ":" in first or first == LOCAL_REGISTRY) else ""
    path = rest if host else text
    path, _, tag = path.partition(":")
    parts = path.split("/")
    bad = [part for part in parts if not _NAME_COMPONENT_RE.match(part)]
    if bad or len(path) > 255:
        raise BuildImageInputError(
            f"invalid image name {image!r}: bad part(s) {bad}; use lower-case letters, digits "
            "and single '.', '_', '-' between them, parts separated by '/', e.g. "
            "'penguins-server' or 'team/penguins-server'"
        )
    if (tag and not _TAG_RE.match(tag)) or text.endswith(":"):
        raise BuildImageInputError(
            f"invalid tag {tag!r} in {image!r}: up to 128 letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return host, path, tag


def artifact_registry_image(
    image_name: str,
    *,
    project: str = "",
    location: str = "",
    repository: str = "",
    default_tag: str = "latest",
) -> ArtifactRegistryImage:
    """Resolve and check an Artifact Registry image name.

    ``image_name`` is either a full ``{location}-docker.pkg.dev/{project}/{repository}/name
    [:tag]`` (``project``/``location``/``repository``, when given, must agree with it) or a
    bare ``name[:tag]`` placed in ``repository`` of ``project`` in ``location``. The
    repository's region must be the pipeline's (Vertex pulls serving images from the Model's
    region; multi-regions ``us``/``europe``/``asia`` are refused).

    Raises:
        BuildImageInputError: naming the part that is wrong and what to give instead.
    """
    host, name, tag = parse_image_name(image_name)
    if host:
        match = _AR_HOST_RE.match(host)
        parts = name.split("/")
        if not match or len(parts) < 3:
            raise BuildImageInputError(
                f"{image_name!r} is not an Artifact Registry Docker image: expected "
                "LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/NAME[:TAG] (gcr.io and Docker Hub "
                "names cannot be pushed by this component), or a bare NAME[:TAG] with project, "
                "location and repository given"
            )
        given = {"location": location, "project": project, "repository": repository}
        found = {"location": match["location"], "project": parts[0], "repository": parts[1]}
        for key, value in given.items():
            if value and value != found[key]:
                hint = (
                    "; the repository must be in the pipeline's region, where Vertex AI "
                    "pulls the serving image"
                    if key == "location"
                    else ""
                )
                raise BuildImageInputError(
                    f"image {image_name!r} is in {key} {found[key]!r} but {key} {value!r} was "
                    f"given{hint}"
                )
        location, project, repository = found["location"], found["project"], found["repository"]
        name = "/".join(parts[2:])
    missing = [
        k
        for k, v in (("project", project), ("location", location), ("repository", repository))
        if not v
    ]
    if missing:
        raise BuildImageInputError(
            f"cannot name an Artifact Registry image for {image_name!r}: {missing} not given"
        )
    if not _PROJECT_RE.match(project):
        raise BuildImageInputError(
            f"invalid project id {project!r}: 6-30 lower-case letters, digits and hyphens, "
            "starting with a letter (the id, not the project number or display name)"
        )
    if location in MULTI_REGIONS:
        raise BuildImageInputError(
            f"location {location!r} is a multi-region; Vertex AI needs the serving image in a "
            "regional repository in the Model's region (e.g. us-central1)"
        )
    if not _LOCATION_RE.match(location):
        raise BuildImageInputError(f"invalid location {location!r}; e.g. 'us-central1'")
    if not _REPOSITORY_RE.match(repository):
        raise BuildImageInputError(
            f"invalid repository {repository!r}: lower-case letters, digits and hyphens, "
            "starting with a letter, at most 63 characters"
        )
    return ArtifactRegistryImage(location, project, repository, name, tag or default_tag)


def parse_staging_bucket(uri: str) -> StagingLocation:
    """Parse ``gs://bucket[/prefix]`` (a ``/gcs/bucket/...`` FUSE path is refused with advice).

    Raises:
        BuildImageInputError: not a ``gs://`` URI, or an invalid bucket name.
    """
    text = uri.strip()
    if not text.startswith("gs://"):
        hint = f" (use gs://{text[5:]})" if text.startswith("/gcs/") else ""
        raise BuildImageInputError(
            f"staging bucket {uri!r} must be a gs:// URI, e.g. gs://my-bucket/staging{hint}: "
            "Cloud Build reads the build context from Cloud Storage"
        )
    bucket, _, prefix = text[5:].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise BuildImageInputError(
            f"invalid bucket name {bucket!r} in {uri!r}: 3-222 lower-case letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return StagingLocation(bucket, prefix.strip("/"))


def local_image_name(image_name: str, default_tag: str) -> str:
    """``host/path:tag`` for a local build: a name without a registry host goes under
    ``localhost/`` (what podman calls it anyway, and a valid docker name)."""
    host, path, tag = parse_image_name(image_name)
    return f"{host or LOCAL_REGISTRY}/{path}:{tag or default_tag}"


# ------------------------------------------------------------- model checks --
def read_pinned_requirements(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by lower-case name without extras
    (``tensorflow[and-cuda]`` is ``tensorflow``; ``tensorflow-cpu`` too, by alias)."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        requirement = line.split("#", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        if sep:
            name = name.split("[", 1)[0].strip().lower()
            pins[DISTRIBUTION_ALIASES.get(name, name)] = version.strip()
    return pins


def requirements_files(framework: str) -> list[Path]:
    """The serving image's requirement files that ``FRAMEWORK=framework`` installs.

    Raises:
        BuildImageInputError: a framework the serving image does not serve.
    """
    if framework not in FRAMEWORK_PINS:
        raise BuildImageInputError(
            f"the model's framework {framework!r} has no serving image; the image serves "
            f"{sorted(FRAMEWORK_PINS)}: retrain with one of them"
        )
    source = ce.serving_image_dir()
    extra = [] if framework == "scikit-learn" else [source / f"requirements-{framework}.txt"]
    return [source / "requirements.txt", *extra]


def check_library_versions(
    manifest: Mapping[str, Any], requirements: Path | Sequence[Path]
) -> dict[str, str]:
    """Compare the model's library versions (``FRAMEWORK_PINS`` of its framework) with the
    pins of the image's requirement files.

    Returns the model's versions of those libraries. A manifest without ``libraries``
    (hand-made models) is logged and passes: the server's load-time self-check still guards it.

    Raises:
        BuildImageInputError: a version differs; building would give an image that refuses
            (or, worse, mis-reads) the model.
    """
    libraries = manifest.get("libraries") or {}
    if not libraries:
        logger.warning(
            "the model manifest records no library versions; cannot check them against %s",
            requirements,
        )
        return {}
    files = [requirements] if isinstance(requirements, Path) else list(requirements)
    pins = {name: v for path in files for name, v in read_pinned_requirements(path).items()}
    pinned = FRAMEWORK_PINS.get(str(manifest.get("framework", "scikit-learn")), PINNED_LIBRARIES)
    versions = {name: str(libraries[name]) for name in pinned if name in libraries}
    mismatched = {
        name: (version, pins.get(name, "unpinned"))
        for name, version in versions.items()
        if pins.get(name) != version
    }
    if mismatched:
        listing = ", ".join(
            f"{name} {model} (image: {image})" for name, (model, image) in mismatched.items()
        )
        raise BuildImageInputError(
            f"the model was trained with {listing}; the serving image "
            f"({', '.join(map(str, files))}) would load it with other versions. Retrain with "
            "the pinned versions, or change the pins to the model's and rebuild"
        )
    return versions


def image_labels(
    manifest: Mapping[str, Any], bake_model: bool, versions: Mapping[str, str]
) -> dict[str, str]:
    """Image labels saying what the image serves (``podman image inspect`` shows them)."""
    labels = {f"{LABEL_PREFIX}.model-source": "baked" if bake_model else "AIP_STORAGE_URI"}
    if bake_model:
        labels[f"{LABEL_PREFIX}.model-sha256"] = str(manifest["model_sha256"])
    if versions:
        pins = " ".join(f"{name}=={version}" for name, version in versions.items())
        labels[f"{LABEL_PREFIX}.libraries"] = pins
    return labels


def default_tag(manifest: Mapping[str, Any], bake_model: bool, gpu: bool = False) -> str:
    """``model-<first 12 of the model's sha256>`` for a baked image, else ``latest``;
    ``-gpu`` appended for the GPU variant."""
    tag = f"model-{str(manifest['model_sha256'])[:12]}" if bake_model else "latest"
    return f"{tag}-gpu" if gpu else tag


def image_framework(framework: str, gpu: bool) -> str:
    """The ``FRAMEWORK`` build argument for a model of ``framework``.

    ``gpu`` asks for the image that uses a GPU when one is attached (a Vertex GPU batch
    job): ``tensorflow-gpu`` (TensorFlow with CUDA) for TensorFlow models. scikit-learn
    never uses a GPU, so its image is the same either way (logged).
    """
    if gpu and framework == "tensorflow":
        return "tensorflow-gpu"
    if gpu:
        logger.info("%s does not use GPUs: the GPU variant is the CPU image", framework)
    return framework


def _prepare(
    model_dir: str | Path, bake_model: bool, gpu: bool
) -> tuple[dict[str, Any], dict[str, str], str]:
    """Read the model's manifest and check its library versions against the image's pins;
    return the manifest, the image labels and the ``FRAMEWORK`` build argument."""
    manifest = contract.read_manifest(model_dir)
    framework = image_framework(str(manifest["framework"]), gpu)
    versions = check_library_versions(manifest, requirements_files(framework))
    return manifest, image_labels(manifest, bake_model, versions), framework


# -------------------------------------------------------------------- local --
def _local_digest(engine: ce.Engine, image_id: str, name: str) -> str:
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
    engine: ce.Engine | None = None,
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
        engine: the engine to use; default ``container_engine.detect_engine()``. In process
            mode nothing is built: the reference is ``process:serving_image@<model sha256
            prefix>`` and the digest ``""``.
        base_image: ``BASE_IMAGE``; default ``container_engine.choose_base_image(engine)``.
        on_line: called with each line of build output; default: log each at INFO.

    Returns:
        The image, referenced by digest where the engine gives one (podman does).

    Raises:
        container_engine.EngineNotFoundError: no working podman or docker (with the fix).
        container_engine.BuildError: the build failed; holds the failing step's output.
        BuildImageInputError / manifest.ManifestError: bad name or model directory.
    """
    manifest, labels, framework = _prepare(model_dir, bake_model, gpu)
    tagged = local_image_name(image_name, default_tag(manifest, bake_model, gpu))
    engine = engine or ce.detect_engine()
    if engine.name == ce.PROCESS:  # process mode: the server runs from this checkout
        from components.server_process import image_reference

        logger.info("process mode: no image is built; the server runs as a local process")
        return BuiltImage(image_reference(manifest), "", ce.PROCESS, 0.0)
    result = ce.build_serving_image(
        engine,
        tagged,
        model_dir if bake_model else None,
        base_image=base_image or None,
        on_line=on_line or (lambda line: logger.info("%s", line)),
        labels=labels,
        framework=framework,
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


# -------------------------------------------------------------- Cloud Build --
def _reset_tar_info(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Same bytes for the same files: no owners or times; modes kept (scripts stay
    executable)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def pack_context(context_dir: str | Path, destination: str | Path) -> str:
    """Write ``context_dir``'s files as a reproducible ``.tar.gz`` (paths relative to the
    context, sorted; no owners, times or gzip timestamp) and return its sha256: the same
    context always gives the same bytes, so an unchanged context is not uploaded twice."""
    root = Path(context_dir)
    with (
        open(destination, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for path in sorted(root.rglob("*")):
            arcname = path.relative_to(root).as_posix()
            tar.add(path, arcname=arcname, recursive=False, filter=_reset_tar_info)
    return contract.sha256_file(destination)


def cloud_build_request(
    image: ArtifactRegistryImage,
    staging: StagingLocation,
    context_object: str,
    *,
    build_args: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    timeout_s: int = CLOUD_BUILD_TIMEOUT_S,
    service_account: str = "",
    machine_type: str = "",
) -> "cloudbuild_v1.CreateBuildRequest":
    """The ``CreateBuildRequest`` that builds and pushes the serving image (pure, offline).

    One step runs ``docker build`` (BuildKit, for the Dockerfile's ``RUN --mount``) on the
    uploaded context with ``--build-arg`` for each of ``build_args`` and ``--label`` for each
    label; ``images`` makes Cloud Build push the image after the step and record its digest in
    ``results.images`` (a separate push step would push twice). The build runs in the
    image's region (``parent``); its log is written to the staging bucket (``GCS_ONLY``), where
    ``build_with_cloud_build`` tails it and the pipeline's service account can read it.

    Args:
        image: the Artifact Registry image to push (its region is the build's).
        staging: the staging location (the log goes to ``staging.logs_uri``).
        context_object: object name of the packed context in ``staging.bucket``.
        build_args: ``--build-arg`` values, ``BASE_IMAGE`` among them.
        labels: ``--label`` values.
        timeout_s: the build's time limit.
        service_account: email or ``projects/-/serviceAccounts/EMAIL`` to run the build as;
            empty: the project's default Cloud Build service account.
        machine_type: a ``BuildOptions.MachineType`` name (e.g. ``E2_HIGHCPU_8``); empty: the
            default worker.
    """
    from google.cloud.devtools import cloudbuild_v1

    args = ["build", "--progress=plain", "--tag", image.uri]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    args.append(".")
    options = cloudbuild_v1.BuildOptions(logging=cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY)
    if machine_type:
        names = [m.name for m in cloudbuild_v1.BuildOptions.MachineType if m.value]
        if machine_type not in names:
            raise BuildImageInputError(f"unknown machine type {machine_type!r}; one of {names}")
        options.machine_type = cloudbuild_v1.BuildOptions.MachineType[machine_type]
    if service_account and "/" not in service_account:
        service_account = f"projects/{image.project}/serviceAccounts/{service_account}"
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            storage_source=cloudbuild_v1.StorageSource(
                bucket=staging.bucket, object_=context_object
            )
        ),
        steps=[
            cloudbuild_v1.BuildStep(
                id=CLOUD_BUILD_STEP_ID,
                name=CLOUD_BUILD_DOCKER,
                args=args,
                env=["DOCKER_BUILDKIT=1"],
            )
        ],
        images=[image.uri],
        logs_bucket=staging.logs_uri,
        options=options,
        timeout=timedelta(seconds=timeout_s),
        tags=[CLOUD_BUILD_TAG],
        service_account=service_account,
    )
    return cloudbuild_v1.CreateBuildRequest(
        parent=f"projects/{image.project}/locations/{image.location}",
        project_id=image.project,
        build=build,
    )


class _LogTail:
    """Reads a Cloud Build log object as it grows; keeps each step's last lines."""

    def __init__(self, blob: Any, keep: int = 40):
        self.blob = blob
        self.offset = 0
        self.partial = b""
        self.by_step: dict[int, deque[str]] = defaultdict(lambda: deque(maxlen=keep))

    def read(self, final: bool = False) -> list[str]:
        """The complete lines written since the last call (all of them when ``final``)."""
        from google.api_core import exceptions

        try:
            chunk = self.blob.download_as_bytes(start=self.offset, checksum=None)
        except (exceptions.NotFound, exceptions.RequestRangeNotSatisfiable):
            chunk = b""  # not written yet, or nothing new
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = b"" if final else lines.pop()
        text = [line.decode("utf-8", "replace").rstrip("\r") for line in lines if line]
        for line in text:
            match = _LOG_STEP_RE.match(line)
            if match:
                self.by_step[int(match["index"])].append(match["text"])
        return text


def _failure_message(build: "cloudbuild_v1.Build", log: _LogTail) -> str:
    """Why a build failed: status, failing step, that step's last output lines, log URL."""
    status = type(build).Status(build.status).name
    lines = [f"Cloud Build {build.id} ended {status}: {build.status_detail or 'no detail'}"]
    if build.failure_info and build.failure_info.detail:
        lines.append(f"failure: {build.failure_info.detail}")
    failed = [
        (index, step)
        for index, step in enumerate(build.steps)
        if type(build).Status(step.status).name in FAILED_STATUSES
    ]
    for index, step in failed[:1]:
        lines.append(
            f"failing step #{index} ({step.id or step.name}): {step.name} {' '.join(step.args)}"
            + (f" (exit {step.exit_code})" if step.exit_code else "")
        )
        output = log.by_step.get(index)
        if output:
            lines.append("--- last lines of its output ---")
            lines.extend(output)
    if not failed and status != "SUCCESS":
        lines.append("no step failed: the push of the image or the build itself failed")
    lines.append(f"full log: {build.log_url or log.blob.name}")
    return "\n".join(lines)


def build_with_cloud_build(
    model_dir: str | Path,
    image_name: str,
    *,
    project: str,
    location: str,
    staging_bucket: str,
    repository: str = "",
    bake_model: bool = True,
    gpu: bool = False,
    base_image: str = ce.REGISTRY_BASE_IMAGE,
    timeout_s: int = CLOUD_BUILD_TIMEOUT_S,
    service_account: str = "",
    machine_type: str = "",
    poll_seconds: float = 5.0,
    credentials: Any = None,
    on_line: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Build the serving image with Cloud Build and push it to Artifact Registry.

    Packs the build context (``pack_context``) and uploads it to
    ``{staging_bucket}/train-to-serve/build-image/contexts/<sha256>.tar.gz`` (skipped when that
    object exists: same name, same bytes), creates the build (``cloud_build_request``) in
    ``location``, then polls it: status changes are logged with the log URL, and the build
    log's new lines (``Step #0 - "build-serving-image": STEP 3/9 ...``) are passed to
    ``on_line`` as Cloud Build writes them to the staging bucket.

    Args:
        model_dir: the model directory (for a baked image it is copied into the context).
        image_name: ``name[:tag]`` in ``repository``, or a full
            ``{location}-docker.pkg.dev/{project}/{repository}/name[:tag]``.
        project: the Google Cloud project id (builds and pushes there).
        location: the pipeline's region; the build runs there and the repository must be
            there.
        staging_bucket: ``gs://bucket[/prefix]`` for the context and the build log.
        repository: the Artifact Registry Docker repository (if ``image_name`` is bare).
        bake_model: copy the model in (default) or build the ``AIP_STORAGE_URI`` runtime image.
        base_image: ``BASE_IMAGE`` for the Dockerfile (Cloud Build workers reach Docker Hub).
        timeout_s: Cloud Build's time limit for the build.
        service_account: the identity to build as; empty: Cloud Build's default.
        machine_type: ``BuildOptions.MachineType`` name, empty for the default worker.
        poll_seconds: how often to check the build and its log.
        credentials: google-auth credentials for both clients; default: ADC.
        on_line: called with each line of the build log; default: log at INFO.

    Returns:
        The pushed image; its ``reference`` is
        ``{location}-docker.pkg.dev/{project}/{repository}/{name}@sha256:...``.

    Raises:
        BuildImageInputError: bad image name, region, bucket or model (before any request).
        CloudBuildError: the build did not succeed; the message has the failing step's
            output and the log URL.
    """
    from google.api_core import exceptions
    from google.cloud import storage
    from google.cloud.devtools import cloudbuild_v1

    emit = on_line or (lambda line: logger.info("%s", line))
    manifest, labels, framework = _prepare(model_dir, bake_model, gpu)
    image = artifact_registry_image(
        image_name,
        project=project,
        location=location,
        repository=repository,
        default_tag=default_tag(manifest, bake_model, gpu),
    )
    staging = parse_staging_bucket(staging_bucket)
    started = time.monotonic()
    storage_client = storage.Client(project=image.project, credentials=credentials)
    bucket = storage_client.bucket(staging.bucket)
    with tempfile.TemporaryDirectory(prefix="tts-cloud-build-") as scratch:
        context = ce.assemble_build_context(
            Path(scratch) / "context", model_dir if bake_model else None
        )
        packed = Path(scratch) / "context.tar.gz"
        context_object = staging.context_object(pack_context(context, packed))
        try:
            bucket.blob(context_object).upload_from_filename(str(packed), if_generation_match=0)
            logger.info(
                "uploaded the build context (%.1f MB) to gs://%s/%s",
                packed.stat().st_size / 1e6,
                staging.bucket,
                context_object,
            )
        except exceptions.PreconditionFailed:
            logger.info("build context already at gs://%s/%s", staging.bucket, context_object)
    request = cloud_build_request(
        image,
        staging,
        context_object,
        build_args={"BASE_IMAGE": base_image, "FRAMEWORK": framework},
        labels=labels,
        timeout_s=timeout_s,
        service_account=service_account,
        machine_type=machine_type,
    )
    client = cloudbuild_v1.CloudBuildClient(credentials=credentials)
    operation = client.create_build(request=request)
    build = operation.metadata.build
    name = f"{request.parent}/builds/{build.id}"
    logger.info("Cloud Build %s started for %s; log: %s", build.id, image.uri, build.log_url)
    log = _LogTail(bucket.blob(staging.log_object(build.id)))
    status = ""
    while True:
        build = client.get_build(
            request=cloudbuild_v1.GetBuildRequest(name=name, project_id=image.project, id=build.id)
        )
        now = cloudbuild_v1.Build.Status(build.status).name
        done = now in TERMINAL_STATUSES
        for line in log.read(final=done):
            emit(line)
        if now != status:
            status = now
            logger.info("Cloud Build %s: %s (%.0f s)", build.id, status, time.monotonic() - started)
        if done:
            break
        time.sleep(poll_seconds)
    if status != "SUCCESS":
        raise CloudBuildError(_failure_message(build, log))
    digests = [i.digest for i in build.results.images if i.name == image.uri and i.digest]
    if not digests:
        raise CloudBuildError(
            f"Cloud Build {build.id} succeeded but recorded no digest for {image.uri}; "
            f"results: {list(build.results.images)}; log: {build.log_url}"
        )
    reference = image.pinned(digests[0])
    logger.info("pushed %s", reference)
    return BuiltImage(
        reference=reference,
        digest=digests[0],
        builder="cloud-build",
        seconds=time.monotonic() - started,
        tagged=image.uri,
    )


# ----------------------------------------------------------------- dispatch --
def build_model_image(
    model_dir: str | Path,
    image_name: str = DEFAULT_IMAGE_NAME,
    *,
    builder: str = "auto",
    bake_model: bool = True,
    gpu: bool = False,
    project: str = "",
    location: str = "",
    repository: str = "",
    staging_bucket: str = "",
    service_account: str = "",
    base_image: str = "",
) -> BuiltImage:
    """Build with ``builder``: ``"local"`` (``build_local``), ``"cloud-build"``
    (``build_with_cloud_build``) or ``"auto"``: the local engine when one works, else Cloud
    Build when ``project``, ``location`` and ``staging_bucket`` are given. An empty
    ``base_image`` means the builder's default.

    Raises:
        BuildImageInputError: unknown builder, or ``auto`` with neither an engine nor the Cloud
            Build settings (the message gives both ways out).
    """
    if builder not in BUILDERS:
        raise BuildImageInputError(f"unknown builder {builder!r}; choose one of {BUILDERS}")
    cloud_settings = {"project": project, "location": location, "staging_bucket": staging_bucket}
    engine = None
    if builder == "auto":
        try:
            engine = ce.detect_engine()
        except ce.EngineNotFoundError as exc:
            missing = [key for key, value in cloud_settings.items() if not value]
            if missing:
                raise BuildImageInputError(
                    f"cannot build the serving image: no local container engine ({exc})\n"
                    f"and Cloud Build needs {missing} (and a repository, or a full Artifact "
                    "Registry image name). Give those, or set up an engine."
                ) from None
            logger.info("no local container engine; building with Cloud Build")
        builder = "local" if engine else "cloud-build"
    if builder == "local":
        return build_local(
            model_dir,
            image_name,
            bake_model=bake_model,
            gpu=gpu,
            engine=engine,
            base_image=base_image,
        )
    return build_with_cloud_build(
        model_dir,
        image_name,
        repository=repository,
        bake_model=bake_model,
        gpu=gpu,
        service_account=service_account,
        base_image=base_image or ce.REGISTRY_BASE_IMAGE,
        **cloud_settings,
    )


@component(base_image=COMPONENTS_IMAGE)
def build_image(
    model: Input[Model],
    image_name: str = "train-to-serve-model",  # literal: KFP captures only the function
    builder: str = "auto",
    bake_model: bool = True,
    gpu: bool = False,
    project: str = "",
    location: str = "",
    repository: str = "",
    staging_bucket: str = "",
    service_account: str = "",
    base_image: str = "",
) -> NamedTuple("Outputs", [("image_uri", str), ("digest", str)]):
    """Build the serving container image for a trained model.

    Builds ``serving_image/`` (the model server, Vertex AI's custom-container contract) for
    the model, either with the model baked in at ``/model`` (default: the image digest then
    pins code, library versions and model together, and the server needs no Cloud Storage
    access to start) or without it, to load it from ``AIP_STORAGE_URI`` (upload the Model
    with ``artifactUri`` = the model's URI). The model's scikit-learn, numpy and pandas
    versions must equal the image's pins; the build stops before it starts otherwise.

    Locally (kfp.local, workstations, CI) the image is built with podman or docker, the
    engine's step lines streamed to the log. On Vertex AI Pipelines there is no Docker daemon:
    the build runs on Cloud Build in ``location`` and the image is pushed to Artifact Registry
    there, the build log streamed to the task's log. A failed build shows the failing step's
    output.

    Args:
        model: the train component's model directory.
        image_name: ``name[:tag]`` (default tag: ``model-<sha256 prefix>`` when baked, else
            ``latest``), or a full ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/NAME[:TAG]``.
        builder: ``"auto"`` (the local engine when one works, else Cloud Build when
            ``project``, ``location`` and ``staging_bucket`` are given), ``"local"`` or
            ``"cloud-build"``.
        bake_model: bake the model into the image (default) or load it from
            ``AIP_STORAGE_URI``.
        gpu: build the variant that uses an attached GPU (for a GPU batch prediction job):
            TensorFlow with CUDA for a TensorFlow model (tag suffix ``-gpu``); a
            scikit-learn model's image is the same either way.
        project: Google Cloud project for Cloud Build and Artifact Registry.
        location: the pipeline's region; the Artifact Registry repository must be there.
        repository: Artifact Registry Docker repository (when ``image_name`` is bare).
        staging_bucket: ``gs://bucket[/prefix]`` for the build context and the build log.
        service_account: identity Cloud Build runs as (empty: Cloud Build's default).
        base_image: the image the serving image builds ``FROM`` (a Debian-based Python 3.11; empty:
            ``python:3.11-slim``, or locally the stand-in ``setup-container-engine.sh`` made
            where Docker Hub cannot be reached). E.g. an Artifact Registry remote repository
            in front of Docker Hub, to avoid its pull limits on Cloud Build.

    Returns:
        image_uri: the image to serve, pinned by digest where the builder gives one
            (``...@sha256:...``; a docker-built local image keeps its tag).
        digest: ``sha256:...``, or ``""`` when the engine gave none.
    """
    from components.build_image import build_model_image

    built = build_model_image(
        model.path,
        image_name,
        builder=builder,
        bake_model=bake_model,
        gpu=gpu,
        project=project,
        location=location,
        repository=repository,
        staging_bucket=staging_bucket,
        service_account=service_account,
        base_image=base_image,
    )
    return (built.reference, built.digest)
