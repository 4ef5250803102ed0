"""Checkpoints of a pretraining run in --ckpt_dir, and the RNG state they carry.

`step_NNNNNNN.params` (+ `.json` model config), `.states` (optimizer arrays) and `.state.json` (step, data
positions of every rank, python/numpy RNG states, loss scale, flags). Every file is written atomically and
`.state.json` last, so a checkpoint without it is incomplete and ignored by `--start_step latest`.
MXNet's RNG cannot be saved: it is reseeded every step from (seed, step, slot) instead (bort.training.step_seed).
"""
import glob
import os
import random
import re

import numpy as np

from .checkpoint import save_parameters, save_training_state
from .errors import BortError

_CKPT = re.compile(r"step_(\d{7,})\.state\.json$")


def checkpoint_prefix(ckpt_dir, step):
    return os.path.join(ckpt_dir, f"step_{int(step):07d}")


def complete_checkpoints(ckpt_dir):
    """Steps of checkpoints whose every file exists (.state.json is written last), ascending."""
    steps = []
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), "step_*.state.json")):
        match = _CKPT.search(os.path.basename(path))
        prefix = path[: -len(".state.json")]
        if match and all(os.path.isfile(prefix + ext) for ext in (".params", ".states")):
            steps.append(int(match.group(1)))
    return sorted(steps)


def resolve_start_step(ckpt_dir, start_step):
    """0 for a fresh run, else the checkpoint step to resume from ('latest' = newest complete checkpoint)."""
    text = str(start_step).strip().lower()
    if text in ("", "0", "none"):
        return 0
    if text == "latest":
        steps = complete_checkpoints(ckpt_dir)
        return steps[-1] if steps else 0
    if not text.isdigit():
        raise BortError(f"--start_step: expected a step number or 'latest', got {start_step!r}")
    step = int(text)
    if step not in complete_checkpoints(ckpt_dir):
        raise BortError(f"{checkpoint_prefix(ckpt_dir, step)}.state.json: no complete checkpoint for step {step} "
                        f"in {ckpt_dir} (found {complete_checkpoints(ckpt_dir) or 'none'})")
    return step


def save_checkpoint(ckpt_dir, step, model, model_config, trainer, state):
    prefix = checkpoint_prefix(ckpt_dir, step)
    save_parameters(model, prefix + ".params", model_config)
    save_training_state(prefix, trainer, state)  # .states, then .state.json: the commit marker
    return prefix


def rng_state():
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))

