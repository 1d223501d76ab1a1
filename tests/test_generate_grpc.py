"""``scripts/generate_grpc.py``: the committed gRPC modules are what the ``.proto`` compiles to,
and ``--check`` catches a copy that is not.

The tampered cases run the script from a copy of its own layout (``scripts/`` beside
``serving_image/server/protos/``) in a temporary directory, so the committed files are never
touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

SCRIPT = Path("scripts") / "generate_grpc.py"
PROTOS = Path("serving_image") / "server" / "protos"


def run_script(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The script and the committed protos directory, laid out as in the repository."""
    (tmp_path / SCRIPT).parent.mkdir()
    shutil.copy(REPO_ROOT / SCRIPT, tmp_path / SCRIPT)
    shutil.copytree(REPO_ROOT / PROTOS, tmp_path / PROTOS, ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


def test_the_committed_modules_are_up_to_date() -> None:
    done = run_script(REPO_ROOT, "--check")
    assert done.returncode == 0, done.stderr


def test_a_hand_edited_module_is_caught_and_regenerating_restores_it(copy: Path) -> None:
    edited = copy / PROTOS / "grpc_predict_v2_pb2_grpc.py"
    edited.write_text(edited.read_text().replace("from . import", "import", 1))
    done = run_script(copy, "--check")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "out of date: ['grpc_predict_v2_pb2_grpc.py']; run scripts/generate_grpc.py"
    )

    assert run_script(copy).returncode == 0
    assert edited.read_text() == (REPO_ROOT / PROTOS / edited.name).read_text()
    assert run_script(copy, "--check").returncode == 0


def test_a_proto_changed_without_regenerating_is_caught(copy: Path) -> None:
    proto = copy / PROTOS / "grpc_predict_v2.proto"
    text = proto.read_text()
    assert "  string model_version = 2;" in text
    proto.write_text(text.replace("  string model_version = 2;", "  string model_revision = 2;"))
    done = run_script(copy, "--check")
    assert done.returncode == 1
    assert "grpc_predict_v2_pb2.py" in done.stderr and "grpc_predict_v2_pb2.pyi" in done.stderr
