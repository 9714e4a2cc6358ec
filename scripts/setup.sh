#!/usr/bin/env bash
# Create .venv and install the project with its pinned dependencies (CPU torch on this kind
# of machine). Idempotent: re-running after an unchanged pyproject.toml installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required, found " + sys.version' 
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "[setup] installing the project and its pinned dependencies into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
    rm -f .venv/.installed-* && touch "$stamp"
fi
