"""Parameter files: strict loading, atomic saving, the architecture as JSON beside the weights.

`model/bort.params` sits next to `model/bort.json` (the `ModelConfig`); a file without its JSON is
read with the config the caller names. Files are MXNet's NDArray format (`mx.nd.save`), which is not
pickle. Training state (optimizer, step, data position, RNG) goes in `<name>.states` and `<name>.state.json`.
"""
import json
import os

import bort  # noqa: F401
import mxnet as mx
import numpy as np

from bort.errors import BortError
from bort.io import atomic_write, file_sha256, read_json, write_json
from bort.model import ModelConfig, build_model, get_config
from bort.validation import check_config_fits_file, validate_training_state
from bort.weights.ndarray_file import save_ndarrays


def config_path(params_path):
    return os.path.splitext(os.fspath(params_path))[0] + ".json"


def read_params_file(path):
    """{name: NDArray} from an MXNet parameter file, with one-line errors for missing/corrupt files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BortError(f"{path}: parameter file not found")
    try:
        arrays = mx.nd.load(path)
    except mx.base.MXNetError:
        raise BortError(f"{path}: not a valid MXNet parameter file (truncated or corrupt)") from None
    if not isinstance(arrays, dict):
        raise BortError(f"{path}: expected named parameters, found an unnamed list of {len(arrays)} arrays")
    # Files written by HybridBlock.export prefix names with arg:/aux:.
    return {name.split(":", 1)[1] if name[:4] in ("arg:", "aux:") else name: value for name, value in arrays.items()}


def check_compatible(model_shapes, file_shapes, source, allow_missing=(), ignore_extra=()):
    """Raise one BortError listing missing, unexpected and wrong-shape parameters."""
    missing = sorted(n for n in model_shapes if n not in file_shapes and not n.startswith(tuple(allow_missing)))
    unexpected = sorted(n for n in file_shapes if n not in model_shapes and not n.startswith(tuple(ignore_extra)))
    wrong = sorted(f"{n} (file {tuple(file_shapes[n])} vs model {tuple(model_shapes[n])})"
                   for n in model_shapes if n in file_shapes and tuple(file_shapes[n]) != tuple(model_shapes[n]))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(_abbreviate(missing))}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(_abbreviate(unexpected))}")
    if wrong:
        problems.append(f"wrong shape {len(wrong)}: {', '.join(_abbreviate(wrong))}")
    if problems:
        raise BortError(f"{source}: parameters do not match the model; " + "; ".join(problems))


def _abbreviate(names, limit=6):
    return names if len(names) <= limit else names[:limit] + [f"... ({len(names) - limit} more)"]


def load_parameters(block, path, allow_missing=(), ignore_extra=(), ctx=None):
    """Strictly load `path` into an initialized block.

    allow_missing: name prefixes that may stay as initialized (a new task head, when asked).
    ignore_extra: name prefixes in the file that are skipped (e.g. 'decoder.' for an encoder-only model).
    """
    return load_arrays(block, read_params_file(path), os.fspath(path), allow_missing, ignore_extra)


def load_arrays(block, arrays, source, allow_missing=(), ignore_extra=()):
    """Strictly copy {name: NDArray or numpy array} into an initialized block (`source` names them in errors)."""
    params = finish_deferred_init(block)._collect_params_with_prefix()
    check_compatible({n: p.shape for n, p in params.items()}, {n: a.shape for n, a in arrays.items()},
                     source, allow_missing, ignore_extra)
    for name, param in params.items():
        if name in arrays:
            value = arrays[name]
            check_finite(value, name, source)
            if not isinstance(value, mx.nd.NDArray):
                value = mx.nd.array(value, dtype=param.dtype)
            param.set_data(value.astype(param.dtype))
    return block


def check_finite(value, name, source):
    """One-line BortError if the array `value` (NDArray or numpy) holds NaN or inf: such weights train to NaN."""
    host = value.asnumpy() if isinstance(value, mx.nd.NDArray) else np.asarray(value)
    bad = host.size - int(np.isfinite(host).sum())
    if bad:
        raise BortError(f"{source}: parameter {name} holds {bad} non-finite value(s) (NaN or inf); the file is "
                        f"damaged or was saved by a run that diverged")


def finish_deferred_init(block):
    """Make every parameter of a freshly initialized model exist; returns `block`.

    Dense layers without in_units have unknown shapes (and no data) until a first forward: run one tiny batch
    (token ids (1, 2); with the MLM head one masked position). `block` is a BortModel or any block with its
    `config` (a ModelConfig) whose forward takes token ids first. Does nothing when every shape is known."""
    params = block._collect_params_with_prefix()
    if all(0 not in p.shape for p in params.values()):
        return block
    config = getattr(block, "config", None)
    if config is None:
        raise BortError("cannot load into a block whose parameter shapes are not known yet; run a forward first")
    tokens = mx.nd.zeros((1, 2), ctx=_context_of(params))
    dtype = next(iter(params.values())).dtype  # valid_length builds the attention mask: the model's dtype
    with mx.autograd.pause():
        if getattr(block, "has_decoder", False):
            block(tokens, mx.nd.array([2], ctx=tokens.context, dtype=dtype), mx.nd.zeros((1, 1), ctx=tokens.context))
        else:
            block(tokens)
    return block


def _context_of(params):
    for param in params.values():
        try:
            return param.list_ctx()[0]
        except Exception:  # noqa: BLE001 - uninitialized parameter
            continue
    return mx.cpu()


def save_parameters(block, path, config=None):
    """Write `path` atomically, and the config JSON beside it when given: both files or neither (the JSON lands
    only once the parameters have). Returns the SHA-256 of `path`, computed while writing; a full disk is a one-line
    BortError (bort.io.atomic_path)."""
    arrays = {name: param.data() for name, param in block._collect_params_with_prefix().items()}
    # Tied weights appear under two names; keep both so the file matches gluon-nlp's layout.
    if config is None:
        return save_ndarrays(path, arrays)
    with atomic_write(config_path(path)) as handle:
        json.dump(config.to_dict() if isinstance(config, ModelConfig) else config, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        return save_ndarrays(path, arrays)


def read_config(params_path, fallback=None):
    """The ModelConfig stored beside a params file, else `fallback` (a name, JSON path or ModelConfig)."""
    path = config_path(params_path)
    if os.path.isfile(path):
        return check_config_fits_file(get_config(path), params_path, path)  # bort.validation, before building
    if fallback is None:
        raise BortError(f"{params_path}: no config {path} beside it; pass the model config name explicitly")
    return fallback if isinstance(fallback, ModelConfig) else get_config(fallback)


# What makes two configs the same network (vocabulary size, dropout and padding id are the run's business).
ARCHITECTURE_FIELDS = ("num_layers", "units", "hidden_size", "num_heads", "max_length", "token_type_vocab_size",
                       "activation", "family")


def architecture_differences(a, b):
    """['field: a_value vs b_value', ...] where ModelConfigs `a` and `b` describe different networks."""
    return [f"{f} {getattr(a, f)} vs {getattr(b, f)}" for f in ARCHITECTURE_FIELDS if getattr(a, f) != getattr(b, f)]


def check_named_architecture(params_path, named, flag):
    """One-line error when the config JSON beside `params_path` describes another network than `named` (a config
    name or JSON path the user gave with `flag`; None: nothing named): the JSON would silently win over it.
    Nothing to check without a parameter file or without its JSON."""
    if named is None or not params_path or not os.path.isfile(params_path) or \
            not os.path.isfile(config_path(params_path)):
        return
    differ = architecture_differences(read_config(params_path), get_config(named))
    if differ:
        raise BortError(f"{config_path(params_path)}: the parameters are of another architecture than {flag} "
                        f"{named} ({'; '.join(differ)}); pass the {flag} they were trained with, or leave it out")


def load_model(params_path, config=None, use_decoder=True, ctx=None, allow_missing=(), **overrides):
    """Build the model a params file describes (or `config`) and load it strictly."""
    config = read_config(params_path, config)
    if overrides:
        config = config.replace(**overrides)
    model = build_model(config, use_decoder=use_decoder, ctx=ctx)
    ignore = () if use_decoder else ("decoder.",)
    load_parameters(model, params_path, allow_missing=allow_missing, ignore_extra=ignore)
    return model


def _state_names(trainer, params):
    """Names under which optimizer states are stored: the keys of `params` ({name: Parameter}) when given,
    else the parameters' own names (stable for BortModel, whose prefix is fixed)."""
    by_id = {id(p): name for name, p in params.items()} if isinstance(params, dict) else {}
    return [by_id.get(id(param), param.name) for param in trainer._params]


def _flatten_state(value, key, arrays):
    """The layout of one (possibly nested) optimizer state; its arrays go into `arrays` under `key:i.j...`.

    Layout: None for a single array (stored as `key:0`), else a list with, per element, true (an array),
    false (None) or a nested list. A multi-precision state is nested: BERTAdam ((mean, var), weight32),
    Adam/LAMB (weight32, (mean, var)); weight32 is the float32 master copy of a float16 weight."""
    if not isinstance(value, (tuple, list)):
        arrays[f"{key}:0"] = value
        return None
    return _flatten_parts(value, key + ":", arrays)


def _flatten_parts(parts, path, arrays):
    layout = []
    for j, part in enumerate(parts):
        if isinstance(part, (tuple, list)):
            layout.append(_flatten_parts(part, f"{path}{j}.", arrays))
        else:
            layout.append(part is not None)
            if part is not None:
                arrays[f"{path}{j}"] = part
    return layout


def _state_arrays(fresh, layout, key):
    """[(array of the fresh state, key of its saved value)] following `layout`; ValueError when they differ."""
    if layout is None:
        if isinstance(fresh, (tuple, list)):
            raise ValueError("nested state")
        return [(fresh, f"{key}:0")]
    return _parts_arrays(fresh, layout, key + ":")


def _parts_arrays(fresh, layout, path):
    if not isinstance(fresh, (tuple, list)) or len(fresh) != len(layout):
        raise ValueError("layout")
    pairs = []
    for j, (part, has) in enumerate(zip(fresh, layout)):
        if isinstance(has, list):
            pairs += _parts_arrays(part, has, f"{path}{j}.")
        elif has:
            if part is None or isinstance(part, (tuple, list)):
                raise ValueError("layout")
            pairs.append((part, f"{path}{j}"))
    return pairs


def _device_ids(trainer):
    return sorted({ctx.device_id for ctx in trainer._contexts}) or [0]


def save_training_state(prefix, trainer, state, params=None, companions=()):
    """Save `<prefix>.states` (optimizer state arrays) and `<prefix>.state.json` (step, data position, RNG...).

    MXNet's own `Trainer.save_states` pickles; this writes the optimizer's arrays in the NDArray format
    and its counters as JSON, keyed by parameter name (not by the trainer's index, which depends on how
    the parameters happened to be ordered), so a resumed checkpoint never unpickles anything.
    Nested multi-precision states (float16 training) are stored whole, float32 master weights included.
    Pass `params` as {name: Parameter} to choose the names (e.g. `trainable_parameters(block)`).
    `.state.json` records the SHA-256 of `.states` and of the `companions` (files beside it written before, e.g.
    the `.params`), so that loading refuses a checkpoint whose files come from different writes. `companions`:
    paths, or {path: SHA-256 or None} with the digests their writers computed (None: hash the file here).
    """
    updater, optimizer = trainer._updaters[0], trainer._optimizer
    names = _state_names(trainer, params)
    arrays, layout = {}, {}
    for index, value in updater.states.items():
        layout[names[index]] = _flatten_state(value, names[index], arrays)
    # MXNet keeps update counts per device id (Adam's and LAMB's bias correction reads them).
    per_device = optimizer._all_index_update_counts.get(_device_ids(trainer)[0], {})
    counts = {names[index]: count for index, count in per_device.items()}
    state = dict(state, optimizer={"num_update": optimizer.num_update, "update_count": counts, "layout": layout})
    checksums = dict(companions) if isinstance(companions, dict) else dict.fromkeys(companions)
    checksums[prefix + ".states"] = save_ndarrays(prefix + ".states", arrays)  # hashed while written
    state["checksums"] = {os.path.basename(path): digest or file_sha256(path) for path, digest in checksums.items()}
    write_json(prefix + ".state.json", state)


def read_training_state(prefix):
    """(state dict, {key: NDArray}) of a checkpoint written by save_training_state."""
    states, meta = prefix + ".states", prefix + ".state.json"
    for path in (states, meta):
        if not os.path.isfile(path):
            raise BortError(f"{path}: training state not found")
    state = validate_training_state(read_json(meta, "a training state"), meta)  # bort.validation
    checksums = state.get("checksums", {})
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise BortError(f"{meta}: 'checksums' must map file names to SHA-256 strings")
    for name, expected in sorted(checksums.items()):
        path = os.path.join(os.path.dirname(prefix), os.path.basename(name))
        if not os.path.isfile(path):
            raise BortError(f"{path}: missing; {os.path.basename(meta)} lists it as part of the checkpoint")
        if file_sha256(path) != expected:
            raise BortError(f"{path}: does not match the checksum in {os.path.basename(meta)} (a checkpoint mixed "
                            f"from two writes, or a damaged file); resume from another step")
    return state, read_params_file(states)


def apply_training_state(trainer, state, arrays, params=None, source="training state"):
    """Restore optimizer states and counters into `trainer`. With `arrays` None the states are created with the
    right shapes but not filled (ranks that receive them by broadcast). Returns the state arrays in a fixed
    order (for that broadcast)."""
    optimizer, updater = trainer._optimizer, trainer._updaters[0]
    index_of = {name: index for index, name in enumerate(_state_names(trainer, params))}
    saved = state.get("optimizer", {})
    layouts = saved.get("layout", {})
    unknown = sorted(set(layouts) - set(index_of))
    if unknown:
        raise BortError(f"{source}: optimizer state for parameters the model does not have: {unknown[:5]}")
    filled = []
    for name in sorted(layouts, key=lambda n: index_of[n]):
        index = index_of[name]
        fresh = optimizer.create_state_multi_precision(index, trainer._params[index].data())
        try:
            pairs = _state_arrays(fresh, layouts[name], name)
        except ValueError:
            raise BortError(f"{source}: optimizer state of {name} has another structure than this run's "
                            f"(saved by a run with another --optimizer or --dtype?)") from None
        for part, key in pairs:
            if arrays is not None:
                if key not in arrays or arrays[key].shape != part.shape:
                    raise BortError(f"{source}: optimizer state of {name} is missing or has the wrong shape")
                part[:] = arrays[key].astype(part.dtype, copy=False)
            filled.append(part)
        updater.states[index] = fresh
        updater.states_synced[index] = True
    optimizer.num_update = saved.get("num_update", 0)
    counts = {index_of[name]: count for name, count in saved.get("update_count", {}).items()}
    for device_id in _device_ids(trainer):
        optimizer._all_index_update_counts[device_id] = dict(counts)
    optimizer._index_update_count = optimizer._all_index_update_counts[_device_ids(trainer)[0]]
    return filled


def load_training_state(prefix, trainer, params=None):
    """Restore what save_training_state wrote into `trainer`; returns the state dict.

    States are matched to the trainer's parameters by name; pass the same `params` as to save_training_state.
    """
    state, arrays = read_training_state(prefix)
    apply_training_state(trainer, state, arrays, params, source=prefix + ".states")
    return state
