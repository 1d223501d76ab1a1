"""Local builds with the real engine (``container``: skipped on a workstation without one, FAIL
in CI). The images share the layer cache with each other and with ``test_serving_image.py``;
only the model layer and the labels differ."""

import json
import shutil
from pathlib import Path

import pytest

from components.imaging.local import BuildError, build, build_local
from components.imaging.names import BuildImageInputError
from components.imaging.plan import PINNED_LIBRARIES, BuiltImage
from components.runners import ENGINE_ENV, Engine
from serving_image.server import artifact
from tests.imaging.builds import LOCAL_NAME, build_replacing


def test_a_model_trained_with_other_library_versions_is_refused_before_building(
    tmp_path: Path, penguins_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = shutil.copytree(penguins_model_dir, tmp_path / "model")
    manifest = artifact.read_manifest(model)
    manifest["libraries"]["scikit-learn"] = "1.4.2"  # older than the oldest supported
    (model / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    monkeypatch.setenv(ENGINE_ENV, "/nonexistent/container-engine")  # never reached
    with pytest.raises(BuildImageInputError, match=r"scikit-learn 1\.4\.2 \(supported: "):
        build_local(model, LOCAL_NAME)


def test_a_local_build_returns_a_reference_that_resolves(
    engine: Engine, baked: BuiltImage, readable_model: Path
) -> None:
    manifest = artifact.read_manifest(readable_model)
    assert baked.tagged == f"{LOCAL_NAME}:model-{manifest['model_sha256'][:12]}"
    assert baked.builder == engine.name
    if engine.name == "podman":  # docker records a digest only when it pushes
        assert baked.digest.startswith("sha256:")
        assert baked.reference == f"{LOCAL_NAME}@{baked.digest}"
    record = engine.image_inspect(baked.reference)
    assert f"sha256:{record['Id'].removeprefix('sha256:')}" == baked.image_id
    labels = record["Config"]["Labels"]
    assert labels["io.train-to-serve.model-source"] == "baked"
    assert labels["io.train-to-serve.model-sha256"] == manifest["model_sha256"]
    libraries = manifest["libraries"]
    assert labels["io.train-to-serve.libraries"] == " ".join(
        f"{name}=={libraries[name]}" for name in PINNED_LIBRARIES
    )
    baked_manifest = engine.command(
        "run", "--rm", baked.reference, "cat", f"/model/{artifact.MANIFEST_FILE}"
    ).stdout
    assert json.loads(baked_manifest) == manifest


@pytest.mark.container
def test_a_local_build_without_the_model_loads_it_from_aip_storage_uri(
    engine: Engine, baked: BuiltImage, readable_model: Path
) -> None:
    built = build_replacing(engine, readable_model, bake_model=False)
    assert built.tagged == f"{LOCAL_NAME}:latest"
    labels = engine.image_inspect(built.reference)["Config"]["Labels"]
    assert labels["io.train-to-serve.model-source"] == "AIP_STORAGE_URI"
    assert "io.train-to-serve.model-sha256" not in labels
    listing = engine.command("run", "--rm", built.reference, "ls", "-A", "/model").stdout
    assert listing.strip() == ""


@pytest.fixture(scope="module")
def base_without_groupadd(
    engine: Engine, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The usual base image minus ``groupadd``: the serving image's user-creating RUN fails."""
    context = tmp_path_factory.mktemp("broken-base")
    (context / "Dockerfile").write_text(f"FROM {base_image}\nRUN rm /usr/sbin/groupadd\n")
    tag = f"{LOCAL_NAME}:base-without-groupadd"
    build(engine, context, tag, ca_bundle=False)
    return tag


@pytest.mark.container
def test_a_failing_build_shows_the_failing_step_and_its_output(
    engine: Engine, readable_model: Path, base_without_groupadd: str
) -> None:
    lines: list[str] = []
    with pytest.raises(BuildError) as caught:
        build_local(
            readable_model,
            LOCAL_NAME + ":broken",
            engine=engine,
            base_image=base_without_groupadd,
            on_line=lines.append,
        )
    message = str(caught.value)
    assert "RUN groupadd --system" in caught.value.step
    assert f"at step: {caught.value.step}" in message
    assert "groupadd: not found" in message  # the step's own output
    assert any("groupadd: not found" in line for line in lines)  # and it was streamed
    assert not engine.image_exists(LOCAL_NAME + ":broken")
