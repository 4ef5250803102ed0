#!/usr/bin/env bash
# The whole test suite: sets up .venv on first use (scripts/setup_env.sh), then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup_env.sh"
cd "$repo"
exec "${BORT_VENV:-$repo/.venv}/bin/python" -m pytest -q "$@" tests
