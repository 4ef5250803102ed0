"""Range and structure checks where data meets a model: flags against the model's size, a vocabulary against
a checkpoint, a training state's JSON against what resuming needs. MXNet's Embedding clips out-of-range ids,
so none of these would fail by itself: each one turns a silent mistake into a one-line BortError.
"""
import os

from bort.errors import BortError

MIN_MAX_LEN = 8
DEFAULT_MAX_LEN = 512  # the original's --max_len


def check_max_len(max_len, config, source, flag="--max_len"):
    """A sequence length the model has positions for (fine-tuning encodes with it; nothing may be clipped)."""
    if not isinstance(max_len, int) or max_len < MIN_MAX_LEN:
        raise BortError(f"{flag}: must be at least {MIN_MAX_LEN}, got {max_len}")
    if max_len > config.max_length:
        raise BortError(f"{flag} {max_len}: longer than the {config.max_length} positions of the model ({source}); "
                        f"pass {flag} {config.max_length} or less")


def check_vocab_matches(config, tokenizer, source):
    """A fine-tuned checkpoint must have one embedding row per token of the tokenizer it is used with."""
    if config.vocab_size != tokenizer.vocab_size:
        raise BortError(f"{source}: the checkpoint has {config.vocab_size} word embeddings but the tokenizer has "
                        f"{tokenizer.vocab_size} tokens; pass the vocabulary it was fine-tuned with")


def _config_beside(params_path, fallback):
    """The config JSON beside a parameter file, else `fallback` (the rule of bort.weights.checkpoint.read_config, which
    imports this module)."""
    from bort.model import get_config  # noqa: PLC0415 - keeps this module free of mxnet at import

    path = os.path.splitext(params_path)[0] + ".json"
    return get_config(path) if os.path.isfile(path) else get_config(fallback)


def finetune_model_config(config, tokenizer, hf_config=None):
    """(ModelConfig, its source) that a fine-tuning run (a bort.finetune.config.FinetuneConfig) will use, read from
    JSON files only (no weights); (None, None) when the pretrained parameters are missing. `hf_config`: the
    ModelConfig of an HF directory given as the pretrained parameters (read by the caller, bort.weights.convert's
    hf_directory_config: this core module imports no stage)."""
    if config.model_parameters and os.path.isfile(config.model_parameters):
        return _config_beside(config.model_parameters, config.model_config), config.model_parameters
    source = config.pretrained_parameters
    if hf_config is not None:
        return hf_config, source
    if not source or source.lower() == "none":
        from bort.model import get_config  # noqa: PLC0415

        return (get_config(config.model_config, vocab_size=tokenizer.vocab_size),
                f"--model_config {config.model_config}")
    if os.path.isfile(source):
        return _config_beside(source, config.model_config), source
    return None, None


def check_finetune_inputs(config, tokenizer, hf_config=None):
    """--max_len within the model's positions; a fine-tuned checkpoint's vocabulary equal to the tokenizer's.
    Returns the max_len to use: config.max_len, or when unset the original's 512 (fewer for a model with fewer
    positions). `hf_config`: as for finetune_model_config."""
    check_positive({"bucket_batches": config.bucket_batches})
    model_config, source = finetune_model_config(config, tokenizer, hf_config)
    max_len = config.max_len
    if max_len is None:
        max_len = min(DEFAULT_MAX_LEN, model_config.max_length) if model_config is not None else DEFAULT_MAX_LEN
    if model_config is None:
        return max_len
    check_max_len(max_len, model_config, source)
    if config.model_parameters and source == config.model_parameters:
        check_vocab_matches(model_config, tokenizer, source)
    return max_len


def check_segment(task, segment, flag="--segment"):
    """A segment name the task knows (train, dev..., test...)."""
    known = [task.train_segment, *task.dev_segments, *(name for name, _ in task.test_segments)]
    if segment not in known:
        raise BortError(f"{flag} {segment!r}: {task.name} has no such segment; expected one of {known}")


def check_positive(values):
    """`values`: {flag name: value}; each one None or at least 1."""
    for flag, value in values.items():
        if value is not None and value < 1:
            raise BortError(f"--{flag}: must be a positive integer, got {value}")


# ---- a config JSON against the parameter file beside it ------------------------------------------------------------
_SIZE_FIELDS = ("num_layers", "units", "hidden_size", "num_heads", "vocab_size", "max_length")


def estimated_parameter_count(config):
    """Parameters a config implies (encoder, embeddings, MLM head), computed without building anything."""
    units, ffn = config.units, config.hidden_size
    per_layer = 4 * (units * units + units) + 2 * units * ffn + ffn + units + 4 * units
    embeddings = (config.vocab_size + config.max_length + config.token_type_vocab_size) * units + 2 * units
    return config.num_layers * per_layer + embeddings


def check_config_fits_file(config, params_path, source):
    """A config JSON claiming sizes its parameter file cannot hold (10^8 layers in a few bytes of JSON) is refused
    before a model is built from it: each parameter takes at least 2 bytes (float16) in the file."""
    for field in _SIZE_FIELDS:
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BortError(f"{source}: {field}={value!r}; expected a positive integer")
    if os.path.isfile(params_path):
        needed = 2 * estimated_parameter_count(config)
        size = os.path.getsize(params_path)
        if needed > size:
            raise BortError(f"{source}: describes a model of {needed // 2:,} parameters, more than {params_path} "
                            f"({size:,} bytes) can hold")
    return config


# ---- training state (<prefix>.state.json) ------------------------------------------------------------------------
def _fail(path, field, expected, value):
    raise BortError(f"{path}: {field}: expected {expected}, found {type(value).__name__} {str(value)[:40]!r}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_layout(parts):
    """A multi-precision optimizer state's layout: a list of true/false, nested for nested states."""
    return isinstance(parts, list) and all(isinstance(p, bool) or _is_layout(p) for p in parts)


def validate_training_state(state, path):
    """Check the structure of a loaded `.state.json` before anything indexes into it: a file with valid JSON
    but the wrong shape must be a one-line error naming the file and field, not a KeyError at resume."""
    if not isinstance(state, dict):
        _fail(path, "top level", "a JSON object", state)
    optimizer = state.get("optimizer", {})
    if not isinstance(optimizer, dict):
        _fail(path, "optimizer", "an object", optimizer)
    if "num_update" in optimizer and not _is_int(optimizer["num_update"]):
        _fail(path, "optimizer.num_update", "an integer", optimizer["num_update"])
    for field in ("update_count", "layout"):
        if not isinstance(optimizer.get(field, {}), dict):
            _fail(path, f"optimizer.{field}", "an object keyed by parameter name", optimizer[field])
    for name, count in optimizer.get("update_count", {}).items():
        if not _is_int(count):
            _fail(path, f"optimizer.update_count.{name}", "an integer", count)
    for name, present in optimizer.get("layout", {}).items():
        if present is not None and not _is_layout(present):
            _fail(path, f"optimizer.layout.{name}", "null or a (nested) list of true/false", present)
    for field in ("step", "world_size", "accumulate"):
        if field in state and not _is_int(state[field]):
            _fail(path, field, "an integer", state[field])
    positions = state.get("data_positions")
    if positions is not None:
        if not isinstance(positions, list):
            _fail(path, "data_positions", "a list with one entry per worker", positions)
        size = state.get("world_size")
        if _is_int(size) and len(positions) != size:
            raise BortError(f"{path}: data_positions: expected {size} entries (world_size), found {len(positions)}")
        for rank, slots in enumerate(positions):
            if not isinstance(slots, dict):
                _fail(path, f"data_positions[{rank}]", "an object of slots", slots)
            for slot, pos in slots.items():
                if not isinstance(pos, dict) or not all(_is_int(pos.get(k)) and pos[k] >= 0
                                                        for k in ("epoch", "shard", "batch")):
                    _fail(path, f"data_positions[{rank}].{slot}", "non-negative integers epoch, shard, batch", pos)
    if "rng" in state:
        rng = state["rng"]
        ok = isinstance(rng, dict) and isinstance(rng.get("python"), list) and len(rng["python"]) == 3 \
            and isinstance(rng["python"][1], list) and all(_is_int(v) for v in rng["python"][1]) \
            and isinstance(rng.get("numpy"), list) and len(rng["numpy"]) == 5 \
            and isinstance(rng["numpy"][0], str) and isinstance(rng["numpy"][1], list) \
            and all(_is_int(v) for v in rng["numpy"][1]) and all(_is_int(v) for v in rng["numpy"][2:4])
        if not ok:
            _fail(path, "rng", "the saved Python and NumPy generator states", rng)
    if "loss_scale" in state and state["loss_scale"] is not None and \
            not isinstance(state["loss_scale"], (int, float)):
        _fail(path, "loss_scale", "a number", state["loss_scale"])
    return state
