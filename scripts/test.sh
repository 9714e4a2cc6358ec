#!/usr/bin/env bash
# The README's second command (and .ci/run): set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/lib.sh
"$PY" -m pytest "$@"
