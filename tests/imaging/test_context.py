"""The build context: laid out, and packed reproducibly for Cloud Build."""

import tarfile
from pathlib import Path

import pytest

from components.imaging.context import assemble_build_context, pack_context, serving_image_dir
from components.imaging.names import BuildImageInputError
from serving_image.server import artifact


# ---------------------------------------------------------------- packing --
def _context(tmp_path: Path, model_dir: Path | None) -> Path:
    return assemble_build_context(tmp_path / "context", model_dir)


def _members(packed: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(packed, "r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def test_the_packed_context_holds_the_serving_sources_and_the_model(
    tmp_path: Path, penguins_model_dir: Path
) -> None:
    context = _context(tmp_path, penguins_model_dir)
    digest = pack_context(context, tmp_path / "a.tar.gz")
    members = _members(tmp_path / "a.tar.gz")
    files = {name for name, info in members.items() if info.isfile()}
    assert {"Dockerfile", "requirements.txt", "server/__init__.py", "server/artifact.py"} <= files
    assert {f"model/{artifact.MODEL_FILE}", f"model/{artifact.MANIFEST_FILE}"} <= files
    assert not any("__pycache__" in name or name.startswith("/") for name in members)
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members.values()} == {(0, 0, "", 0)}
    with tarfile.open(tmp_path / "a.tar.gz", "r:gz") as tar:
        extracted = tar.extractfile(f"model/{artifact.MODEL_FILE}")
        assert extracted is not None
        assert extracted.read() == (penguins_model_dir / artifact.MODEL_FILE).read_bytes()
    # Reproducible: another context with the same files packs to the same bytes.
    again = _context(tmp_path / "again", penguins_model_dir)
    assert pack_context(again, tmp_path / "b.tar.gz") == digest
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_without_baking_the_context_has_no_model(tmp_path: Path) -> None:
    pack_context(_context(tmp_path, None), tmp_path / "c.tar.gz")
    assert not any(name.startswith("model") for name in _members(tmp_path / "c.tar.gz"))


def test_build_context_layout(tmp_path: Path, penguins_model_dir: Path) -> None:
    """The context the build component and the tests share (no engine needed)."""
    source = serving_image_dir()
    context = assemble_build_context(tmp_path / "ctx", penguins_model_dir)
    assert (context / "Dockerfile").read_text() == (source / "Dockerfile").read_text()
    assert (context / "server" / "__main__.py").is_file()
    assert not list(context.rglob("__pycache__"))
    assert sorted(p.name for p in (context / "model").iterdir()) == sorted(
        p.name for p in penguins_model_dir.iterdir()
    )
    with pytest.raises(BuildImageInputError, match="not empty"):
        assemble_build_context(context)
