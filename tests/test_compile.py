"""The command line: flags, defaults and usage errors."""

import subprocess
import sys
from pathlib import Path

import pytest

import compile as cli


def test_check_contract_flags_default_to_vertex_without_importing_kfp():
    """Unset flags take Vertex's defaults from the library constants; building the parser
    imports no kfp (``--help`` stays quick, and no component module is defined yet)."""
    code = (
        "import sys, compile; "
        "from components import vertex; "
        "a = compile.build_parser().parse_args(['check-contract', '--image', 'x']); "
        "assert (a.port, a.health_route, a.predict_route, a.startup_deadline, a.grace_period)"
        " == (vertex.DEFAULT_PORT, vertex.DEFAULT_HEALTH_ROUTE, vertex.DEFAULT_PREDICT_ROUTE,"
        " 120.0, vertex.GRACE_PERIOD_S), a; "
        "assert not [m for m in sys.modules if m.startswith('kfp')], 'kfp imported at parse time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(cli.__file__).parent)


def test_check_contract_without_instances_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["check-contract", "--image", "localhost/x:1"]) == 2
    assert "--instances" in capsys.readouterr().err


def test_every_subcommand_s_help_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse formats help texts with ``%``: a literal one (a share, "1%") must be doubled,
    or ``--help`` crashes instead of helping."""
    subparsers = next(
        action
        for action in cli.build_parser()._actions
        if isinstance(action, cli.argparse._SubParsersAction)
    )
    for parser in subparsers.choices.values():
        parser.format_help()  # raises on an unescaped %
        nested = [a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)]
        for action in nested:
            for sub in action.choices.values():
                sub.format_help()
    with pytest.raises(SystemExit) as exited:
        cli.main(["run-local", "--help"])
    assert exited.value.code == 0
    assert "--canary-traffic-percent" in capsys.readouterr().out
