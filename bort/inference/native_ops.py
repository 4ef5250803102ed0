"""Bort's C++ inference operators (`bort/inference/csrc/bort_ops.cc`): built once into a cache, loaded into MXNet.

The library adds `bort_add_layer_norm` (residual add + layer norm in one pass) and `bort_masked_softmax` (softmax
over the valid keys, in place of a padding-bias broadcast_add + softmax) to `mx.nd` / `mx.sym`;
`bort.inference.fast_encoder.FastEncoder` uses them in place of MXNet's operators (LayerNorm has no oneDNN kernel in
MXNet 1.9.1). The shared object is compiled with the system C++ compiler (`$CXX`, default g++) on first
use, or ahead of time by `scripts/setup_env.sh`, into

    $BORT_NATIVE_CACHE (default ~/.cache/bort/native_ops)/libbort_ops-<key>.so

where the key hashes the source, MXNet's lib_api files and version, and the compiler's version, so an upgrade
rebuilds and concurrent builders never see a half-written file (build to a temporary name, then rename).
Without a compiler, or when the build or load fails, `load()` logs one line and returns False, and callers use
MXNet's own operators. `BORT_NATIVE_OPS=0` turns the library off (the stock-operator baseline).
"""
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile

import bort  # noqa: F401  (sets thread counts before mxnet is imported)
import mxnet as mx

log = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "bort_ops.cc")
OPERATORS = ("bort_add_layer_norm", "bort_masked_softmax", "bort_pad_last")
CXXFLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp")
_state = {}  # "loaded": bool once load() ran in this process


def enabled_by_env():
    return os.environ.get("BORT_NATIVE_OPS", "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir():
    return os.environ.get("BORT_NATIVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bort",
                                                               "native_ops")


def _mxnet_files():
    root = os.path.dirname(os.path.abspath(mx.__file__))
    return os.path.join(root, "include"), os.path.join(root, "src", "lib_api.cc")


def _compiler():
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def library_path(compiler):
    """Where the library for this source, MXNet and compiler lives (it may not be built yet)."""
    include, lib_api = _mxnet_files()
    digest = hashlib.sha256()
    for path in (SOURCE, os.path.join(include, "mxnet", "lib_api.h"), lib_api):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest.update(f"{mx.__version__}|{version}|{' '.join(CXXFLAGS)}".encode())
    return os.path.join(cache_dir(), f"libbort_ops-{digest.hexdigest()[:16]}.so")


def build(force=False):
    """Compile the library if needed; returns its path, or None (with one logged line) when it cannot be built."""
    compiler = _compiler()
    if compiler is None:
        log.warning("bort native ops: no C++ compiler (%s) found; using MXNet's operators",
                    os.environ.get("CXX", "g++"))
        return None
    include, lib_api = _mxnet_files()
    if not (os.path.isdir(include) and os.path.isfile(lib_api)):
        log.warning("bort native ops: this MXNet ships no lib_api sources (%s); using MXNet's operators", lib_api)
        return None
    target = library_path(compiler)
    if os.path.isfile(target) and not force:
        return target
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".libbort_ops-", suffix=".so")
        os.close(fd)
    except OSError as err:
        log.warning("bort native ops: cannot write to %s (%s); using MXNet's operators", cache_dir(), err)
        return None
    cmd = [compiler, *CXXFLAGS, "-I", include, SOURCE, lib_api, "-o", tmp]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
            log.warning("bort native ops: build failed (%s); using MXNet's operators", first[:300])
            return None
        os.chmod(tmp, 0o755)  # mkstemp made it 0600; other users of a shared cache need to read it
        os.replace(tmp, target)
        log.info("bort native ops: built %s", target)
        return target
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load():
    """Build (if needed) and load the library into this process once; True when its operators are usable.

    False when `BORT_NATIVE_OPS=0`, or when no compiler/build/load worked (logged once, on one line)."""
    if "loaded" in _state:
        return _state["loaded"]
    _state["loaded"] = False
    if not enabled_by_env():
        log.info("bort native ops: off (BORT_NATIVE_OPS=0); using MXNet's operators")
        return False
    if all(hasattr(mx.nd, op) for op in OPERATORS):  # loaded earlier by another copy of this module
        _state["loaded"] = True
        return True
    path = build()
    if path is None:
        return False
    try:
        with _keep_bound_operators():
            mx.library.load(path, verbose=False)
    except Exception as err:  # MXNetError or OSError: an incompatible MXNet must not stop inference
        log.warning("bort native ops: loading %s failed (%s); using MXNet's operators", path,
                    str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__)
        return False
    _state["loaded"] = True
    return True


@contextlib.contextmanager
def _keep_bound_operators():
    """`mx.library.load` regenerates every operator function of mx.nd / mx.sym (and their submodules); a function
    someone replaced before (bort.train.precision's CPU float16 wrappers) would silently be undone. Put back every
    attribute that existed before, so loading only adds Bort's operators."""
    prefixes = ("mxnet.ndarray", "mxnet.symbol")
    modules = {name: module for name, module in list(sys.modules.items())
               if module is not None and name.startswith(prefixes)}
    before = {name: dict(vars(module)) for name, module in modules.items()}
    try:
        yield
    finally:
        for name, module in modules.items():
            for attr, value in before[name].items():
                if getattr(module, attr, None) is not value:
                    setattr(module, attr, value)


def main():
    """`python -m bort.inference.native_ops`: build ahead of time (scripts/setup_env.sh); exit 0 even without a compiler."""
    logging.basicConfig(level=logging.INFO, format="[setup] %(message)s")
    path = build()
    print(path or "bort native ops not built: MXNet's operators will be used", file=sys.stderr)


if __name__ == "__main__":
    main()
