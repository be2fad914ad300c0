# Sourced by the project's commands: make .venv (Python >= 3.11) with the project and its
# dev extras installed, reinstalling when pyproject.toml changed since the last install.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "Python 3.11 or newer is required (set PYTHON=...)" >&2; exit 1; }
    "$PYTHON" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
    touch .venv/.installed
fi
