#!/usr/bin/env bash
# The whole test suite: sets up .venv on first use (scripts/setup_env.sh), then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup_env.sh"
cd "$repo"
venv=${BORT_VENV:-$repo/.venv}
export PATH="$venv/bin:$PATH"  # the launchers the tests run call `python` and `horovodrun`
exec "$venv/bin/python" -m pytest -q "$@" tests
