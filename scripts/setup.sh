#!/usr/bin/env bash
# Create the project's virtualenv (.venv) and install the project with its serve, dev and
# tensorflow extras (TensorFlow: ~20 s more to install from a warm cache, ~1.3 GB in the venv).
# Versions: components/constraints.txt, the ones the project is tested with (the components
# image installs the same). Idempotent: reinstalls only when pyproject.toml, the constraints
# or the extras changed since the last install.
# Settings: PYTHON (interpreter to build the venv from; default python3.11, else python3), VENV (.venv).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
[[ -n $PYTHON ]] || { echo "setup: no python3 found; install Python 3.10 or newer" >&2; exit 1; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "setup: $PYTHON is $("$PYTHON" -V 2>&1); Python 3.10 or newer is needed" >&2; exit 1; }

if [[ ! -x $VENV/bin/python ]]; then
  echo "setup: creating $VENV with $("$PYTHON" -V)"
  "$PYTHON" -m venv "$VENV" || {
    echo "setup: 'python -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
fi
EXTRAS=serve,dev,tensorflow,boosting
CONSTRAINTS=components/constraints.txt  # the versions the project is tested with
stamp=$VENV/.installed-$({ cat pyproject.toml "$CONSTRAINTS"; echo "$EXTRAS"; } | sha256sum | cut -c1-16)
if [[ ! -e $stamp ]]; then
  echo "setup: installing the project and its dependencies into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --progress-bar off -c "$CONSTRAINTS" -e ".[$EXTRAS]"
  rm -f "$VENV"/.installed-* && touch "$stamp"
fi
echo "setup: $VENV ready ($("$VENV/bin/python" -V))"
