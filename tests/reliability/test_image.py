"""Security basics of the serving image, built with the real engine: nothing secret in any
layer, and the payload limit holds in the container, answered to every kind of client.

Every layer is read, not just the final file system: a file added by one step and deleted by
a later one is still in the image. The build is given the host's CA bundle as a build secret
(as ``build_serving_image`` does on every host that has one); it must not be left in a layer.

Covered elsewhere: the image runs as a non-root user
(``tests/imaging/test_serving_image.py::test_image_runs_as_a_non_root_user``), and the model is
unpickled only after its sha256 matches the manifest
(``tests/server/test_process.py::test_a_tampered_model_is_refused_before_unpickling``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from components.imaging import build_serving_image, find_ca_bundle
from components.runners import Engine, RunningServer, ServerSpec, send, start_server
from serving_image.server.config import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from tests.reliability.figures import Figures

pytestmark = [pytest.mark.container, pytest.mark.reliability]

TAG = "localhost/train-to-serve-reliability:model"
CREDENTIAL_FILES = {
    ".netrc",
    ".pypirc",
    "pip.conf",
    ".git-credentials",
    "application_default_credentials.json",
    "credentials.db",
    "access_tokens.db",
}
"""File names that hold tokens or passwords (pip, git, gcloud)."""
KEY_SUFFIXES = (".pem", ".key", ".p12", ".pfx", ".json")
SECRET_ENV_WORDS = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIALS", "PIP_CERT", "API_KEY")


@dataclass(frozen=True)
class Finding:
    """A file in a layer that should not be there."""

    layer: int
    path: str
    why: str


@pytest.fixture(scope="module")
def image(engine: Engine, base_image: str, penguins_model_dir: Path) -> str:
    """The serving image with the penguins model baked in, built with the host's CA bundle."""
    return build_serving_image(engine, TAG, penguins_model_dir, base_image=base_image).image_id


def scan_layers(archive: Path, own_from: int, ca_bundle: bytes | None) -> Iterator[Finding]:
    """Secrets in the layers of a ``docker-archive``; ``own_from``: the first layer the
    Dockerfile added (the host CA bundle may equal the base image's own copy)."""
    ca_digest = hashlib.sha256(ca_bundle).digest() if ca_bundle else b""
    with tarfile.open(archive) as outer:
        (manifest,) = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for index, name in enumerate(manifest["Layers"]):
            with tarfile.open(fileobj=outer.extractfile(name), mode="r|") as layer:
                for member in layer:
                    if not member.isfile():
                        continue
                    path = member.name.removeprefix("./")
                    base = path.rsplit("/", 1)[-1]
                    if path.startswith("run/secrets/"):
                        yield Finding(index, path, "a build secret left in the layer")
                    if base in CREDENTIAL_FILES:
                        yield Finding(index, path, "a credentials file")
                    needs_content = base.endswith(KEY_SUFFIXES) and member.size < 1_000_000
                    same_size = ca_bundle is not None and member.size == len(ca_bundle)
                    if not (needs_content or (same_size and index >= own_from)):
                        continue
                    data = layer.extractfile(member).read()  # type: ignore[union-attr]
                    if b"PRIVATE KEY-----" in data or b'"private_key":' in data:
                        yield Finding(index, path, "a private key")
                    if same_size and hashlib.sha256(data).digest() == ca_digest:
                        yield Finding(index, path, "the host CA bundle given as build secret")


def test_no_secret_or_credential_in_any_layer(
    engine: Engine, base_image: str, image: str, tmp_path: Path, figures: Figures
) -> None:
    archive = tmp_path / "image.tar"
    engine.command("image", "save", "--format", "docker-archive", "-o", str(archive), image)
    layers = engine.image_inspect(image)["RootFS"]["Layers"]
    base_layers = engine.image_inspect(base_image)["RootFS"]["Layers"]
    assert layers[: len(base_layers)] == base_layers
    ca = find_ca_bundle()
    findings = list(scan_layers(archive, len(base_layers), ca.read_bytes() if ca else None))
    config = engine.image_inspect(image).get("Config") or {}
    secret_env = [
        item for item in config.get("Env") or [] if any(w in item.upper() for w in SECRET_ENV_WORDS)
    ]
    figures["image security"].update(
        {
            "layers scanned": len(layers),
            "of them from the Dockerfile": len(layers) - len(base_layers),
            "build secret given": str(ca) if ca else "none (no host CA bundle)",
            "secret findings": len(findings),
            "secret-looking ENV": len(secret_env),
        }
    )
    assert findings == []
    assert secret_env == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """A hand-made archive with one of each finding (so the scan above can fail)."""
    ca = b"-----BEGIN CERTIFICATE-----\nhost bundle\n"
    planted = {
        "run/secrets/ca": ca,
        "root/.netrc": b"machine pypi.org password x",
        "app/server.pem": b"-----BEGIN RSA PRIVATE KEY-----\n",
        "etc/host-ca.crt": ca,
        "app/ok.json": b'{"private": 1}',
    }
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for name, data in planted.items():
            (tmp_path / "file").write_bytes(data)
            tar.add(tmp_path / "file", arcname=name)
    (tmp_path / "manifest.json").write_text(json.dumps([{"Layers": ["layer.tar"]}]))
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "manifest.json", arcname="manifest.json")
        tar.add(layer, arcname="layer.tar")
    found = {(f.path, f.why) for f in scan_layers(archive, own_from=0, ca_bundle=ca)}
    assert found == {
        ("run/secrets/ca", "a build secret left in the layer"),
        ("run/secrets/ca", "the host CA bundle given as build secret"),
        ("root/.netrc", "a credentials file"),
        ("app/server.pem", "a private key"),
        ("etc/host-ca.crt", "the host CA bundle given as build secret"),
    }


@pytest.fixture(scope="module")
def container(engine: Engine, image: str) -> Iterator[RunningServer]:
    """The image running as Vertex runs it, its port published on the host."""
    env = {"AIP_HTTP_PORT": "8080", "AIP_STORAGE_URI": "", "AIP_PREDICT_ROUTE": "/predict"}
    with start_server(engine, ServerSpec(image, env=env)) as running:
        running.wait_until_serving("/health", timeout=120)
        yield running


def oversize_body() -> bytes:
    """A valid request body just over the server's default limit (Vertex's 10 MB)."""
    return b'{"instances": [' + b"[1, 2]," * (DEFAULT_MAX_BODY_BYTES // 7) + b"[1, 2]]}"


def test_payload_limit_holds_in_the_container(container: RunningServer) -> None:
    # The contract check's client reads the answer even if it comes before the body is sent.
    refused = send(container.url, "POST", "/predict", 30, oversize_body())
    assert refused.status == 413, refused.error
    assert f"exceeds {DEFAULT_MAX_BODY_BYTES} bytes" in refused.json()["error"]


def post_with_urllib(url: str, body: Path) -> tuple[int, bytes]:
    """urllib sends ``Connection: close`` and the whole body before it reads anything."""
    request = urllib.request.Request(
        url, data=body.read_bytes(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_with_httpx(url: str, body: Path) -> tuple[int, bytes]:
    answer = httpx.post(
        url, content=body.read_bytes(), headers={"Content-Type": "application/json"}, timeout=60
    )
    return answer.status_code, answer.content


def post_with_curl(url: str, body: Path) -> tuple[int, bytes]:
    """curl sends ``Expect: 100-continue`` for a large body and reads an early answer."""
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-H", "Content-Type: application/json",
         "--data-binary", f"@{body}", "-w", "\n%{http_code}", url],
        capture_output=True,
        check=True,
    )  # fmt: skip
    payload, _, status = done.stdout.rpartition(b"\n")
    return int(status), payload


@pytest.mark.parametrize("client", [post_with_urllib, post_with_httpx, post_with_curl])
def test_an_oversize_body_gets_413_and_its_error_with_every_client_never_a_reset(
    client: Any, container: RunningServer, tmp_path: Path, figures: Figures
) -> None:
    """The server reads and drops a refused body before it answers, so a client that sends
    the whole body first (urllib, httpx) reads the 413 instead of ECONNRESET/EPIPE."""
    body = tmp_path / "oversize.json"
    body.write_bytes(oversize_body())
    url = f"{container.url}/predict"

    answers = [client(url, body) for _ in range(20)]

    statuses = [status for status, _ in answers]
    figures["oversize body through the published port"][client.__name__] = (
        f"{statuses.count(413)} of 20 answered 413"
    )
    assert statuses == [413] * 20
    for _, payload in answers:
        assert f"exceeds {DEFAULT_MAX_BODY_BYTES} bytes" in json.loads(payload)["error"]
