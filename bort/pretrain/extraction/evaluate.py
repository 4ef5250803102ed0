"""The error surrogate ê of a candidate: s steps of distillation from the teacher cache for every hyperparameter
set θ ∈ Θ, then a loss on the held-out shards B; the best θ is kept.

This is the pretrainer itself (bort.pretrain.loop.pretrain with --teacher_cache), not another training loop: the
candidate is a model config JSON, s is --num_steps, θ overrides a few of its flags, and the held-out evaluation
is its --data_eval pass. Proxies (--error_proxy):

- ``distill``   the held-out distillation loss, mlm_weight · MLM loss + teacher_ce_weight · cached KD term (the
                training objective on B: the paper's "empirical loss on a subset B"); needs caches of B;
- ``mlm_loss``  the held-out masked-LM cross-entropy;
- ``mlm_error`` 1 − held-out masked-LM accuracy.
"""
import dataclasses
import json
import math
import os
import shutil
import time

from bort.errors import BortError
from bort.io import write_json
from bort.pretrain.loop import pretrain

PROXIES = ("distill", "mlm_loss", "mlm_error")
# The flags a hyperparameter set θ may set, and their types.
TUNABLE = {"lr": float, "warmup_ratio": float, "weight_decay": float, "batch_size": int, "optimizer": str,
           "max_grad_norm": float, "dropout": float, "seed": int}
EVAL_KEYS = ("mlm_loss", "kd_loss", "mlm_acc", "teacher_agreement", "num_masks")


def parse_thetas(spec):
    """Θ from inline JSON or a JSON file: a list of objects over TUNABLE's keys, e.g. '[{"lr": 1e-3}]'."""
    text, where = spec, "--thetas"
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as handle:
            text, where = handle.read(), spec
    try:
        thetas = json.loads(text)
    except json.JSONDecodeError as err:
        raise BortError(f"{where}:{err.lineno}: expected a JSON list of hyperparameter sets ({err.msg})") from None
    if not isinstance(thetas, list) or not thetas or not all(isinstance(t, dict) for t in thetas):
        raise BortError(f"{where}: expected a non-empty JSON list of objects, e.g. [{{\"lr\": 1e-3}}]")
    for k, theta in enumerate(thetas):
        unknown = sorted(set(theta) - set(TUNABLE))
        if unknown:
            raise BortError(f"{where}: set {k}: unknown keys {unknown}; a set may hold {sorted(TUNABLE)}")
        for key, value in theta.items():
            kind = TUNABLE[key]
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = isinstance(value, str) if kind is str else number and (kind is float or value == int(value))
            if not ok:
                raise BortError(f"{where}: set {k}: {key} must be {kind.__name__}, got {value!r}")
            theta[key] = kind(value)
    return thetas


def error_from_eval(metrics, proxy, mlm_weight, teacher_ce_weight):
    """ê from the held-out evaluation of bort.pretrain.step.evaluate (mean per masked position)."""
    if proxy == "distill":
        return mlm_weight * metrics["mlm_loss"] + teacher_ce_weight * metrics["kd_loss"]
    if proxy == "mlm_loss":
        return metrics["mlm_loss"]
    if proxy == "mlm_error":
        return 1.0 - metrics["mlm_acc"]
    raise BortError(f"--error_proxy must be one of {list(PROXIES)}, got {proxy!r}")


def estimate_error(arch, base_model, train_config, thetas, proxy, work_dir, dist=None, keep_checkpoints=False):
    """Train `arch` (a space.Architecture on `base_model`, a ModelConfig) for train_config.num_steps steps per θ
    and score it on train_config.data_eval. Returns {'error', 'theta', 'theta_index', 'per_theta', 'seconds'}:
    the best θ's error (inf when every θ diverged) and every θ's held-out metrics."""
    per_theta = []
    for k, theta in enumerate(thetas):
        run_dir = os.path.join(work_dir, f"theta{k}")
        shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted attempt restarts from step 0
        os.makedirs(run_dir)
        model_json = os.path.join(run_dir, "model.json")
        write_json(model_json, arch.model_config(base_model).to_dict())
        config = dataclasses.replace(train_config, model=model_json, ckpt_dir=run_dir, **theta)
        start = time.time()
        out = pretrain(config, dist)
        metrics = {key: out["eval"][key] for key in EVAL_KEYS}
        error = error_from_eval(metrics, proxy, config.mlm_weight, config.teacher_ce_weight)
        per_theta.append({"theta": theta, "error": error if math.isfinite(error) else math.inf, "eval": metrics,
                          "train_mlm_loss": out["last_train"]["mlm_loss"], "seconds": time.time() - start})
        if not keep_checkpoints:
            shutil.rmtree(run_dir, ignore_errors=True)
    best = min(range(len(per_theta)), key=lambda k: per_theta[k]["error"])
    return {"error": per_theta[best]["error"], "theta": thetas[best], "theta_index": best, "per_theta": per_theta,
            "seconds": sum(t["seconds"] for t in per_theta)}
