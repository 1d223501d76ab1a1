"""Benchmark ``compile.py run-local``: the whole local flow's wall time, per step.

Run from the repository root (podman or docker set up, e.g. by ``make run`` once):

    .venv/bin/python bench/run_local.py [--runs 2] [--output-dir /tmp/bench-run-local]

Each run is the README's main command in a fresh process (penguins, defaults). The first run
may rebuild image layers; the later ones show the time with layers cached, which is the
target (at most 3 minutes on 2 cores). Endpoints the runs leave are undeployed at the end.
Prints one Markdown table: wall time and each step's time per run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components import stand_ins  # noqa: E402
from pipelines.local_run import STEPS  # noqa: E402


def run_once(output_dir: Path) -> dict:
    """One ``run-local`` in a subprocess; its summary."""
    result = subprocess.run(
        [sys.executable, "compile.py", "run-local", "--output-dir", str(output_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"run-local failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    summary_path = result.stdout.strip().splitlines()[-1].removeprefix("summary: ")
    return json.loads(Path(summary_path).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--output-dir", type=Path)
    args = parser.parse_args()
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="bench-run-local-"))
    summaries = []
    try:
        for index in range(args.runs):
            summaries.append(run_once(output_dir))
            print(f"run {index + 1}: {summaries[-1]['wall_seconds']:.1f} s", file=sys.stderr)
    finally:
        endpoints = output_dir / "endpoints"
        for endpoint in stand_ins.list_endpoints(endpoints) if endpoints.exists() else []:
            stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints)
    print("| run | wall s | " + " | ".join(STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for index, summary in enumerate(summaries, 1):
        steps = " | ".join(f"{summary['step_seconds'].get(s, 0):.1f}" for s in STEPS)
        print(f"| {index} | {summary['wall_seconds']:.1f} | {steps} |")


if __name__ == "__main__":
    main()
