"""Regenerate the serving image's gRPC modules from their ``.proto`` files (grpcio-tools).

    .venv/bin/python scripts/generate_grpc.py           # write them
    .venv/bin/python scripts/generate_grpc.py --check   # exit 1 if the committed ones differ

protoc writes ``import grpc_predict_v2_pb2``, a top-level import; the server package ships
alone in the image and imports only relatively, so that line becomes ``from . import``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent.parent / "serving_image" / "server" / "protos"
_TOP_LEVEL_IMPORT = re.compile(r"^import (\w+_pb2) as ", re.MULTILINE)


def generate(out: Path) -> list[Path]:
    """Compile every ``.proto`` in ``PROTOS`` into ``out``; the files written."""
    for proto in sorted(PROTOS.glob("*.proto")):
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTOS}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(proto),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed on {proto} (exit {code})")
    written = sorted(path for path in out.iterdir() if path.suffix in (".py", ".pyi"))
    for path in written:
        text = _TOP_LEVEL_IMPORT.sub(r"from . import \1 as ", path.read_text())
        path.write_text(text)
    return written


def _committed(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [p.name for p in fresh if _committed(PROTOS / p.name) != p.read_text()]
        if args.check:
            if stale:
                print(f"out of date: {stale}; run scripts/generate_grpc.py", file=sys.stderr)
                return 1
            return 0
        for path in fresh:
            (PROTOS / path.name).write_text(path.read_text())
    print(f"wrote {', '.join(p.name for p in fresh)} in {PROTOS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
