"""What the imaging tests share: the names they build, and Google Cloud's network replaced
at the client methods that would send a request."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.cloud.devtools import cloudbuild_v1

from components.imaging.cloud_build import build_with_cloud_build
from components.imaging.local import build_local
from components.imaging.names import local_image_name
from components.imaging.plan import BuiltImage, default_tag
from components.runners import Engine
from serving_image.server import artifact
from tests.support.cloud import BUILD_ID, LOG_URL, FakeCloud

__all__ = ["BUILD_ID", "LOG_URL", "FakeCloud"]

PROJECT = "my-project"
LOCATION = "europe-west4"
REPOSITORY = "models"
STAGING = "gs://my-staging/pipelines/run-1"
DIGEST = "sha256:" + "ab" * 32
LOCAL_NAME = "localhost/train-to-serve-build-test"


def cloud_build_status(status: str, **fields: Any) -> cloudbuild_v1.Build:
    """A build as ``get_build`` answers with it."""
    return cloudbuild_v1.Build(id=BUILD_ID, log_url=LOG_URL, status=status, **fields)


def model_image_uri(model_dir: Path, name: str) -> str:
    """The Artifact Registry image a build of ``model_dir`` pushes as ``name`` (default tag)."""
    sha256 = artifact.read_manifest(model_dir)["model_sha256"]
    return f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/{name}:model-{sha256[:12]}"


def pushed(uri: str) -> cloudbuild_v1.Build:
    """A build that succeeded and pushed ``uri`` as ``DIGEST``."""
    image = cloudbuild_v1.BuiltImage(name=uri, digest=DIGEST)
    return cloud_build_status("SUCCESS", results=cloudbuild_v1.Results(images=[image]))


STEP = 'Step #0 - "build-serving-image": '
LOG = [
    "starting build\n",
    f"starting build\nFETCHSOURCE\n{STEP}#1 [internal] load build definition\n{STEP}#5 [ser",
    f"starting build\nFETCHSOURCE\n{STEP}#1 [internal] load build definition\n"
    f"{STEP}#5 [server 2/9] RUN groupadd --system server\n{STEP}#9 exporting to image\nPUSH\n"
    "DONE\n",
]


def run_cloud_build(model_dir: Path, lines: list[str], **overrides: Any) -> BuiltImage:
    """``build_with_cloud_build`` with the test settings and ``overrides``; the log into
    ``lines``."""
    arguments: dict[str, Any] = {
        "project": PROJECT,
        "location": LOCATION,
        "repository": REPOSITORY,
        "staging_bucket": STAGING,
        "poll_seconds": 0,
        "credentials": AnonymousCredentials(),
        "on_line": lines.append,
    } | overrides
    image_name = arguments.pop("image_name", "penguins-server")
    return build_with_cloud_build(model_dir, image_name, **arguments)


def anonymous(cls: type) -> Callable[..., Any]:
    """The client class with anonymous credentials (no ADC lookup on this machine)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs["credentials"] = AnonymousCredentials()
        return cls(*args, **kwargs)

    return make


def build_replacing(engine: Engine, model: Path, bake_model: bool, **kw: Any) -> BuiltImage:
    """``build_local``, then drop the image the same tag held before (so that reruns leave
    no dangling images; the layers both share stay, and with them the cache)."""
    manifest = artifact.read_manifest(model)
    tag = local_image_name(LOCAL_NAME, default_tag(manifest, bake_model))
    previous = engine.image_id(tag)
    built = build_local(model, LOCAL_NAME, engine=engine, bake_model=bake_model, **kw)
    if previous and previous != built.image_id:
        engine.remove_image(previous)
    print(f"\nbuilt {built.reference} in {built.seconds:.1f} s")
    return built
