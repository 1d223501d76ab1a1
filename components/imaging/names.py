"""Image names: Docker references, Artifact Registry images and the Cloud Build staging bucket.

Each is checked here, before any build or request, with a message that says what to give
instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOCAL_REGISTRY = "localhost"
STAGING_DIR = "train-to-serve/build-image"
"""Under the staging bucket (and its prefix): ``contexts/`` and ``logs/``."""
MULTI_REGIONS = ("us", "europe", "asia")

_AR_HOST_RE = re.compile(r"^(?P<location>[a-z][a-z0-9-]*[a-z0-9])-docker\.pkg\.dev$")
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REPOSITORY_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_LOCATION_RE = re.compile(r"^[a-z]+(-[a-z]+\d*)*\d*$")
# Docker reference grammar: path components of lower-case alphanumerics joined by separators.
_NAME_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class BuildImageInputError(ValueError):
    """A build input is wrong (image name, region, bucket, model); the message says how."""


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

    def uri(self, *parts: str) -> str:
        """``gs://bucket/...`` of an object name (or folder) under the prefix."""
        return f"gs://{self.bucket}/{self.object_name(*parts)}"

    @property
    def logs_uri(self) -> str:
        """``Build.logs_bucket``: Cloud Build writes ``{logs_uri}/log-{build_id}.txt``."""
        return self.uri("logs")

    def log_object(self, build_id: str) -> str:
        """The object name of a build's log."""
        return self.object_name("logs", f"log-{build_id}.txt")


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
