"""What a person at a terminal sees of a kfp.local run: one line per step, each step's log in
a file, and the failing step's log tail.

kfp.local prints everything to ``sys.stdout``: its own lines (``Executing task 'name'``,
``Task 'name' finished with status SUCCESS``) and, line by line, each task's whole output
(the executor input and output JSON among it: hundreds of lines a run). ``RunView``, installed
as ``sys.stdout`` for the run, reads that stream: each line goes to the running task's log
(``<run dir>/logs/<task>.log``, written when the task ends), and the terminal gets one line per
finished step, with its time and key result (accuracy, image, contract verdict, version,
endpoint URL, batch counts: from the task's outputs), while a spinner shows the step running
(rich; on a terminal only). ``verbose`` passes the whole stream through as well.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.status import Status

ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
LOG_DIR = "logs"
PIPELINE_LOG = "pipeline"
"""The log of what kfp.local prints outside any task (the run's start and end)."""
TAIL_LINES = 25
"""A failed step's last log lines shown on the terminal."""


def task_outputs(task_dir: Path) -> dict[str, Any]:
    """A finished task's outputs from its ``executor_output.json``: artifacts (``uri`` and
    ``metadata``) and values by name; empty when it wrote none."""
    path = task_dir / "executor_output.json"
    if not path.exists():
        return {}
    written = json.loads(path.read_text())
    outputs: dict[str, Any] = dict(written.get("parameterValues", {}))
    for name, listed in written.get("artifacts", {}).items():
        artifact = listed["artifacts"][0]
        outputs[name] = {"uri": artifact.get("uri", ""), "metadata": artifact.get("metadata", {})}
    return outputs


def key_result(step: str, outputs: dict[str, Any]) -> str:
    """The one thing a person wants to know about a finished step, from its outputs."""

    def metadata(name: str) -> dict[str, Any]:
        return outputs.get(name, {}).get("metadata", {})

    if step == "train":
        return ", ".join(f"{k} {v:.4g}" for k, v in list(metadata("metrics").items())[:2])
    if step == "build-image":
        return str(outputs.get("image_uri", ""))
    if step == "contract-check":
        passed = metadata("metrics").get("passed")
        return "" if passed is None else ("passed" if passed else "failed: see its report")
    if step == "capacity-check":
        size = outputs.get("batch_size")
        return f"batch size {size}" if size else ""
    if step in ("evaluation-gate", "smoke-test"):
        passed = outputs.get("Output")
        return "" if passed is None else ("passed" if passed else "failed")
    if step == "local-model-upload":
        return str(metadata("model").get("resourceName", ""))
    if step == "local-model-deploy":
        return str(metadata("endpoint").get("url", ""))
    if step == "local-batch-predict":
        counted = metadata("batch_prediction_job").get("summary", {})
        if counted:
            return (
                f"{int(counted['prediction_count'])} predictions, "
                f"{int(counted['error_count'])} errors"
            )
    return ""


class RunView(io.TextIOBase):
    """A text stream for kfp.local's output; see the module docstring.

    Args:
        out: the terminal (or any stream).
        steps: the task names in order, for "N of M" (a run may skip some).
        run_dir: finds the run's directory (kfp.local creates it when the run starts).
        verbose: pass the whole stream to ``out`` too.
    """

    def __init__(
        self,
        out: TextIO,
        steps: Sequence[str],
        run_dir: Callable[[], Path],
        *,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        self.out = out
        self.steps = tuple(steps)
        self.run_dir = run_dir
        self.verbose = verbose
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.logs: dict[str, list[str]] = {PIPELINE_LOG: []}
        self._task = PIPELINE_LOG
        self._pending = ""
        self._console = Console(file=out, highlight=False, soft_wrap=True)
        self._spinner: Status | None = None

    def write(self, text: str) -> int:
        if self.verbose:
            self.out.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._observe(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _observe(self, line: str) -> None:
        if match := _STARTED.search(line):
            self._task = match[1]
            self.started[self._task] = time.monotonic()
            self.logs[self._task] = [line]
            self._spin(f"{self._task}: running")
            return
        self.logs.setdefault(self._task, []).append(line)
        if match := _FINISHED.search(line):
            name, status = match[1], match[2]
            self.status[name] = status
            self.seconds[name] = round(time.monotonic() - self.started.get(name, 0.0), 2)
            self._task = PIPELINE_LOG
            self._spin(None)
            self._step_line(name, status)

    def _spin(self, text: str | None) -> None:
        """The running step as a spinner line (terminals only: elsewhere rich prints none)."""
        if self._spinner is not None:
            self._spinner.stop()
            self._spinner = None
        if text is not None and self._console.is_terminal:
            self._spinner = self._console.status(text)
            self._spinner.start()

    def _step_line(self, name: str, status: str) -> None:
        done = sum(1 for s in self.status.values() if s == "SUCCESS")
        result = ""
        if status == "SUCCESS":
            result = key_result(name, task_outputs(self.run_dir() / name))
        line = (
            f"==> step {name}: {status} after {self.seconds[name]:.1f} s "
            f"({done} of {len(self.steps)} steps done)" + (f": {result}" if result else "")
        )
        if self.verbose:
            self.out.write(line + "\n")
        else:
            self._console.print(line, markup=False)

    def close_run(self) -> Path:
        """Stop the spinner and write every task's log under ``<run dir>/logs``; the folder."""
        self._spin(None)
        if self._pending:
            self._observe(ANSI.sub("", self._pending))
            self._pending = ""
        folder = self.run_dir() / LOG_DIR
        folder.mkdir(exist_ok=True)
        for task, lines in self.logs.items():
            (folder / f"{task}.log").write_text("\n".join(lines) + "\n")
        return folder

    def failed_steps(self) -> list[str]:
        """The steps that ended other than SUCCESS, and one still running when the run
        stopped, in the order they ran."""
        ended = [name for name, status in self.status.items() if status != "SUCCESS"]
        running = [name for name in self.started if name not in self.status]
        return ended + running

    def tail(self, task: str, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of a task's log (blank lines dropped)."""
        kept = [line for line in self.logs.get(task, []) if line.strip()]
        return "\n".join(kept[-lines:])
