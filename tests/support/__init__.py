"""What several test packages share: server processes and the stand-ins' fixtures."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the working directory of ``compile.py`` runs and server processes."""


def fresh_python(script: str, *args: str) -> str:
    """What ``script`` prints when a new interpreter runs it in the repository root."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    return done.stdout


def compile_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python compile.py ARGS`` in the repository root; its exit status and output."""
    return subprocess.run(
        [sys.executable, "compile.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
