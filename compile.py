#!/usr/bin/env python3
"""Command-line entry point: run the train-to-serve flow locally and check serving containers.

Each subcommand has its own ``--help``. Subcommands are thin: they parse flags, call the
library code in ``components/`` and ``pipelines/``, and turn its errors into one clear line
and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_OUTPUT_DIR = Path("outputs")


class UsageError(Exception):
    """A bad flag or value; printed as one line, exit status 2."""


def _json_object(text: str) -> dict:
    """Parse a JSON object given on the command line (argparse ``type=``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_run_local(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run-local",
        help="train and export a model locally with kfp's local runner",
        description=(
            "Run the train-and-export step of the train-to-serve pipeline on this machine with "
            "kfp.local (SubprocessRunner, current interpreter). Defaults train a classifier on "
            "the bundled Palmer penguins data set."
        ),
    )
    parser.add_argument("--data", default="penguins", help="CSV/Parquet path or URI, or 'penguins'")
    parser.add_argument("--target", default="", help="column to predict (default: species)")
    parser.add_argument(
        "--task", default="classification", choices=["classification", "regression"]
    )
    parser.add_argument("--estimator", default="auto", help="estimator name, or 'auto'")
    parser.add_argument(
        "--hyperparameters", type=_json_object, default={}, help="JSON, e.g. '{\"C\": 0.5}'"
    )
    parser.add_argument(
        "--feature-columns", default="", help="comma-separated feature columns (default: all)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="where runs are written"
    )
    parser.set_defaults(handler=_run_local)


def _run_local(args: argparse.Namespace) -> int:
    from kfp import local

    from components.train import train

    args.output_dir.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(args.output_dir.resolve()),
        raise_on_error=True,
    )
    started = time.monotonic()
    task = train(
        data=args.data,
        target=args.target,
        task=args.task,
        estimator=args.estimator,
        hyperparameters=args.hyperparameters,
        feature_columns=[c.strip() for c in args.feature_columns.split(",") if c.strip()],
        seed=args.seed,
    )
    model = task.outputs["model"]
    metrics = task.outputs["metrics"]
    summary = {
        "model_dir": model.path,
        "metrics": metrics.metadata,
        "wall_seconds": round(time.monotonic() - started, 2),
    }
    summary_path = Path(model.path).parent / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"summary written to {summary_path}")
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_run_local]


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="compile.py",
        description="Train-to-serve for Vertex AI: local runs and container contract checks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; errors become one line and an exit status."""
    from components.train import TrainingInputError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, TrainingInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
