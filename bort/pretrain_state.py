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

from .checkpoint import (apply_training_state, load_parameters, read_training_state, save_parameters,
                         save_training_state)
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



def restore_checkpoint(ckpt_dir, start_step, model, trainer, params, dist):
    """Resume point of every rank: (step, state dict or None for a fresh run).

    Rank 0 alone resolves --start_step and reads the checkpoint; the step, the state (data positions, RNG, loss
    scale), the parameters and the optimizer states (float32 master weights included) reach the other ranks by
    broadcast. So every rank resumes at the same step even when only rank 0 sees --ckpt_dir (several nodes
    without a shared file system), and an error in it stops every rank with the same message."""
    found, filled = None, []
    if dist.is_root:
        try:
            step, state = resolve_start_step(ckpt_dir, start_step), None
            if step:
                prefix = checkpoint_prefix(ckpt_dir, step)
                load_parameters(model, prefix + ".params")
                state, arrays = read_training_state(prefix)
                filled = apply_training_state(trainer, state, arrays, params, source=prefix + ".states")
            found = {"step": step, "state": state}
        except BortError as err:
            found = {"error": str(err)}
    found = dist.broadcast_object(found, "resume")
    if "error" in found:
        raise BortError(found["error"])
    step, state = found["step"], found["state"]
    if step and not dist.is_root:
        filled = apply_training_state(trainer, state, None, params)
    dist.broadcast_arrays(filled, "optimizer_state")
    dist.broadcast_parameters(model.collect_params())
    return step, state
