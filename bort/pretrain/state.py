"""Checkpoints of a pretraining run in --ckpt_dir, and the RNG state they carry.

`step_NNNNNNN.params` (+ `.json` model config), `.states` (optimizer arrays) and `.state.json` (step, data
positions of every rank, python/numpy RNG states, loss scale, flags). Every file is written atomically and
`.state.json` last, so a checkpoint without it is incomplete and ignored by `--start_step latest`; the SHA-256
of each file is computed while it is written (bort.weights.ndarray_file) and recorded in `.state.json`.
Retention (`prune_checkpoints`) deletes old checkpoints after each new one; docs/checkpoints.md.
MXNet's RNG cannot be saved: it is reseeded every step from (seed, step, slot) instead (bort.train.optim.step_seed).
"""
import contextlib
import glob
import json
import os
import random
import re

import numpy as np

from bort.weights.checkpoint import (apply_training_state, load_parameters, read_training_state, save_parameters,
                         save_training_state)
from bort.errors import BortError
from bort.io import atomic_write

_CKPT = re.compile(r"step_(\d{7,})\.state\.json$")
_CKPT_FILE = re.compile(r"step_(\d{7,})\.(params|json|states|state\.json)")


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
    # Rewriting a step (a resume from an earlier one): it stops being complete before any of its files changes.
    with contextlib.suppress(FileNotFoundError):
        os.remove(prefix + ".state.json")
    try:
        params_sha256 = save_parameters(model, prefix + ".params", model_config)  # hashed while written
        # .states, then .state.json (the commit marker, with the checksums of the files it completes)
        save_training_state(prefix, trainer, state,
                            companions={prefix + ".params": params_sha256, prefix + ".json": None})
    except BortError:  # e.g. a full disk: no incomplete checkpoint stays behind
        for ext in (".params", ".json", ".states", ".state.json"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(prefix + ext)
        raise
    return prefix


def remove_checkpoint(ckpt_dir, step):
    """Delete one checkpoint's files, the commit marker (.state.json) first: never a complete-looking half."""
    prefix = checkpoint_prefix(ckpt_dir, step)
    for ext in (".state.json", ".states", ".params", ".json"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(prefix + ext)


def checkpoints_to_keep(steps, keep_last, keep_every):
    """The steps retention keeps of `steps`: all when keep_last is 0, else the newest `keep_last` and those
    divisible by `keep_every` (when > 0)."""
    steps = sorted(steps)
    if keep_last <= 0:
        return set(steps)
    return set(steps[-keep_last:]) | {s for s in steps if keep_every > 0 and s % keep_every == 0}


def prune_checkpoints(ckpt_dir, current_step, keep_last=0, keep_every=0):
    """Retention (--keep_last_checkpoints N, --keep_every_checkpoints M): after writing `current_step`, delete the
    complete checkpoints up to it that are not kept, and incomplete ones (files without their .state.json, left by
    a kill) of earlier steps. Checkpoints of later steps (a run resumed from an earlier step) are left alone.
    Returns the deleted steps, ascending."""
    if keep_last <= 0:
        return []
    complete = [s for s in complete_checkpoints(ckpt_dir) if s <= current_step]
    keep = checkpoints_to_keep(complete, keep_last, keep_every)
    removed = {s for s in complete if s not in keep}
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), "step_*")):
        match = _CKPT_FILE.fullmatch(os.path.basename(path))
        if match and int(match.group(1)) < current_step and int(match.group(1)) not in complete:
            removed.add(int(match.group(1)))
    for step in sorted(removed):
        remove_checkpoint(ckpt_dir, step)
    return sorted(removed)


# Settings that must be the same to continue a run (paths may be spelled differently and are not compared).
RUN_SETTINGS = ("model", "teacher_model", "teacher_ce_weight", "distillation_temperature", "mlm_weight",
                "legacy_kd_loss", "num_steps", "lr", "warmup_ratio", "optimizer", "weight_decay", "max_grad_norm",
                "batch_size", "total_batch_size", "accumulate", "use_avg_len", "num_buckets", "dtype", "dropout",
                "seed")


def check_same_run(saved, settings, source):
    """One-line error when a checkpoint was written with other settings than this run's."""
    if not isinstance(saved, dict):
        return
    keys = [k for k in RUN_SETTINGS if k in saved and k in settings
            and not (k == "batch_size" and settings.get("total_batch_size"))]
    differ = [f"--{k} {saved[k]!r} there, {settings[k]!r} now" for k in keys if saved[k] != settings[k]]
    if differ:
        raise BortError(f"{source}: the checkpoint was written by a run with other settings ({'; '.join(differ)}); "
                        f"resume with the same flags, or start a new run in another --ckpt_dir")


def prepare_fresh_run(ckpt_dir, overwrite):
    """A fresh run must not mix with another run's checkpoints: refuse a directory holding complete ones unless
    `overwrite`, which removes them."""
    steps = complete_checkpoints(ckpt_dir)
    if not steps:
        return
    if not overwrite:
        raise BortError(f"{ckpt_dir}: holds complete checkpoints of another run (steps {steps[0]}..{steps[-1]}); "
                        f"resume it with --start_step latest, choose another --ckpt_dir, or pass "
                        f"--overwrite_ckpt_dir to delete them")
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), "step_*")):
        if _CKPT_FILE.fullmatch(os.path.basename(path)):
            os.remove(path)


def remove_temporary_files(ckpt_dir):
    """Leftovers of writes interrupted by a kill (bort.io.atomic_path names them .<file>.<random>.tmp)."""
    for path in glob.glob(os.path.join(glob.escape(ckpt_dir), ".step_*.tmp")) + \
            glob.glob(os.path.join(glob.escape(ckpt_dir), ".metrics*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def trim_metrics(path, step):
    """Drop the records of steps after `step` (written after the checkpoint a run resumes from), so that a
    resumed run does not log them twice; an unreadable line (cut by a kill) goes too."""
    if not path or not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        with atomic_write(path) as handle:
            handle.writelines(kept)


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



def restore_checkpoint(ckpt_dir, start_step, model, trainer, params, dist, settings=None, overwrite=False):
    """Resume point of every rank: (step, state dict or None for a fresh run).

    Rank 0 alone resolves --start_step and reads the checkpoint; the step, the state (data positions, RNG, loss
    scale), the parameters and the optimizer states (float32 master weights included) reach the other ranks by
    broadcast. So every rank resumes at the same step even when only rank 0 sees --ckpt_dir (several nodes
    without a shared file system), and an error in it stops every rank with the same message.
    A fresh run refuses a directory with another run's checkpoints (see prepare_fresh_run); a resumed one
    refuses a checkpoint written with other `settings` or whose files do not match their recorded checksums."""
    found, filled = None, []
    if dist.is_root:
        try:
            remove_temporary_files(ckpt_dir)
            step, state = resolve_start_step(ckpt_dir, start_step), None
            if step:
                prefix = checkpoint_prefix(ckpt_dir, step)
                state, arrays = read_training_state(prefix)
                check_same_run(state.get("config"), settings or {}, prefix + ".state.json")
                load_parameters(model, prefix + ".params")
                filled = apply_training_state(trainer, state, arrays, params, source=prefix + ".states")
            else:
                prepare_fresh_run(ckpt_dir, overwrite)
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
