"""Durable file writes: a reader sees the old file or the new one, never a part of it.

Each write goes to a temporary file beside the target (``.<name>.<random>.partial``), is
flushed and fsynced, then renamed over the target; ``sync_dir=True`` also fsyncs the
directory, so that the rename itself survives a crash (what a resumable job needs).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".partial"
"""Suffix of the temporary files (``.*.partial`` finds those a killed writer left)."""


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a rename, a removal) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes_atomically(path: Path, data: bytes, *, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_json_atomically(path: Path, value: Any) -> None:
    """Replace ``path`` with ``value`` as indented JSON with sorted keys."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(path, text.encode("utf-8"))
