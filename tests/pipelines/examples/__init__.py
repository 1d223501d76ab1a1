"""Tests of the recipes in ``pipelines/examples``."""

from pathlib import Path
from typing import Any

import yaml
from kfp import compiler

COMPONENTS_IMAGE = "registry.example/c:1"


def compiled(pipeline: Any, tmp_path: Path) -> dict[str, Any]:
    """``pipeline`` compiled by kfp, as its YAML reads."""
    compiler.Compiler().compile(pipeline, str(tmp_path / "pipeline.yaml"))
    return yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
