"""Pretrained parameters the way gluon-nlp 0.x keeps them, and the original Bort's checkpoint layout.

gluon-nlp's model store: `$MXNET_HOME/models/<model>_<dataset>-<first 8 hex digits of the sha1>.params`
(default `~/.mxnet/models`), checked against the sha1 that gluon-nlp registers in MXNet's model store and
fetched from the MXNet model zoo when missing (what `gluonnlp.model.get_model(..., pretrained=True)` does).
The original pretraining loaded its teacher this way when no checkpoint was given.

The original Bort wrote checkpoints as `<ckpt_dir>/checkpoint_<step>/<step:07d>.params` plus one
`<step:07d>.states.<local rank:02d>` per process: the trainer's `save_states`, a pickle. The parameters are an
ordinary NDArray file and load anywhere a `.params` file does; the states are unpickled only on request.
"""
import logging
import os
import pickle
import re

from bort.errors import BortError
from bort.model import get_config
from bort.paths import RELEASED_BORT
from bort.weights.checkpoint import architecture_differences, check_named_architecture, config_path, read_config
from bort.text.gluonnlp_files import GLUONNLP_DATASET, file_sha1, gluonnlp_models_dir

log = logging.getLogger(__name__)

STORE_DATASET = GLUONNLP_DATASET  # the dataset of gluon-nlp's pretrained RoBERTa parameters, as of its vocabulary
_ORIGINAL_PARAMS = re.compile(r"^(\d{7,})\.params$")


def _registered_sha1():
    import gluonnlp.model  # noqa: F401,PLC0415  (registers its checksums in MXNet's model store)
    from mxnet.gluon.model_zoo import model_store  # noqa: PLC0415

    import bort  # noqa: F401,PLC0415  (thread settings before mxnet)

    return model_store._model_sha1


def _fetch(name, root):
    """gluon-nlp/MXNet's own download and checksum logic (network); only reached when the file is absent."""
    from mxnet.gluon.model_zoo import model_store  # noqa: PLC0415

    return model_store.get_model_file(name, root=root)


def pretrained_params(model_name, dataset_name=None, root=None):
    """Path of gluon-nlp's pretrained `<model_name>_<dataset_name>` parameters, fetched when missing."""
    dataset_name = dataset_name or STORE_DATASET
    name = f"{model_name}_{dataset_name}"
    sha1 = _registered_sha1().get(name)
    if sha1 is None:
        raise BortError(f"gluon-nlp has no pretrained parameters for {model_name!r} on {dataset_name!r}; pass a "
                        f"teacher checkpoint with --teacher_ckpt_dir (or --random_teacher, for tests)")
    root = os.path.expanduser(root or gluonnlp_models_dir())
    path = os.path.join(root, f"{name}-{sha1[:8]}.params")
    if os.path.isfile(path) and file_sha1(path) == sha1:
        return path
    log.info("%s: not in gluon-nlp's model store; fetching it", path)
    try:
        fetched = _fetch(name, root)
    except Exception as err:  # noqa: BLE001 - offline, blocked, bad checksum: one line for the user
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise BortError(f"{path}: pretrained teacher {name} is not in gluon-nlp's model store and cannot be "
                        f"fetched ({reason}); fetch it once while online (python -c \"import gluonnlp; "
                        f"gluonnlp.model.get_model('{model_name}', dataset_name='{dataset_name}', pretrained=True)\") "
                        f"or pass a teacher checkpoint with --teacher_ckpt_dir") from None
    return fetched


def resolve_params_path(path, what="--student_params"):
    """A `.params` file for `path`: the file itself, an original `checkpoint_N/` directory (its `NNNNNNN.params`),
    or a directory holding exactly one `.params` file."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise BortError(f"{path}: {what} not found")
    found = sorted(f for f in os.listdir(path) if f.endswith(".params"))
    original = [f for f in found if _ORIGINAL_PARAMS.match(f)]
    if len(found) != 1 and len(original) != 1:
        raise BortError(f"{path}: {what}: expected one .params file (the original's checkpoint_N/NNNNNNN.params) "
                        f"in the directory, found {len(found)}")
    return os.path.join(path, found[0] if len(found) == 1 else original[0])


def student_params_path(student_params, pretrained=False):
    """--student_params (a file or an original checkpoint directory); --pretrained without it means the released
    Bort parameters in model/bort.params (the original looked for them in gluon-nlp's store, which never had them)."""
    if student_params:
        return resolve_params_path(student_params)
    if not pretrained:
        return None
    if not os.path.isfile(RELEASED_BORT):
        raise BortError(f"{RELEASED_BORT}: --pretrained starts the student from the released Bort parameters, "
                        f"which are not there (see model/README.md); or pass --student_params FILE")
    return RELEASED_BORT


def check_student_params(params_path, named_model, teacher_spec, teacher_model):
    """The student's parameters (`params_path`, or None) must be a student's: not the teacher's own file
    (--teacher_ckpt_dir), not of the teacher's architecture (--teacher_model), and of the architecture --model
    names when it was given (`named_model`, None when left out). One-line errors."""
    if not params_path:
        return
    check_named_architecture(params_path, named_model, "--model")
    if teacher_spec and os.path.exists(teacher_spec):
        teacher_files = [teacher_spec] if os.path.isfile(teacher_spec) else \
            [os.path.join(teacher_spec, f) for f in os.listdir(teacher_spec)]
        if any(os.path.isfile(f) and os.path.samefile(params_path, f) for f in teacher_files):
            raise BortError(f"{params_path}: --student_params is the teacher's checkpoint (--teacher_ckpt_dir "
                            f"{teacher_spec}); the student starts from a student's parameters or from scratch")
    if str(teacher_model).lower() in ("none", "") or not os.path.isfile(config_path(params_path)):
        return
    student, teacher = read_config(params_path), get_config(teacher_model)
    if not architecture_differences(student, teacher):
        raise BortError(f"{params_path}: --student_params holds a model of the teacher's architecture "
                        f"(--teacher_model {teacher_model}: {student.num_layers} layers, {student.units} units); "
                        f"a checkpoint of the teacher cannot be the student")


def original_states_files(params_path):
    """The original's `<step>.states.<rank>` files beside an original `<step>.params`, by local rank."""
    folder, name = os.path.split(params_path)
    match = _ORIGINAL_PARAMS.match(name)
    if not match:
        return {}
    pattern = re.compile(re.escape(match.group(1)) + r"\.states\.(\d{2,})$")
    return {int(m.group(1)): os.path.join(folder, f) for f in sorted(os.listdir(folder or "."))
            for m in [pattern.match(f)] if m}


def read_original_states(path, allow_pickle=False):
    """The optimizer states of an original `.states.NN` file: {trainer index: state}. It is a pickle, so this
    refuses unless the user opted in with --allow_legacy_pickle."""
    if not allow_pickle:
        raise BortError(f"{path}: the original's optimizer state is a pickle (it can run code when loaded); pass "
                        f"--allow_legacy_pickle to load it, only for files you trust")
    with open(path, "rb") as handle:
        try:
            states = pickle.loads(handle.read())  # noqa: S301 - explicit opt-in above
        except Exception as err:  # noqa: BLE001
            raise BortError(f"{path}: not a pickled optimizer state ({type(err).__name__}: {err})") from None
    if isinstance(states, tuple) and len(states) == 2:  # saved with dump_optimizer=True: (states, optimizer)
        states = states[0]
    if not isinstance(states, dict):
        raise BortError(f"{path}: expected a dict of optimizer states, got {type(states).__name__}")
    return states


def original_parameter_order(config):
    """Structural names (word_embed.0.weight, ...) in the order the original's trainer numbered its parameters.

    MXNet's Trainer sorts a ParameterDict by full parameter name; the original built the encoder first
    (`bertencoder0_*`) and then its BortModel, a gluon-nlp BERTModel subclass (`bortmodel0_*`)."""
    from gluonnlp.model import BERTEncoder, BERTModel  # noqa: PLC0415

    import bort  # noqa: F401,PLC0415

    encoder = BERTEncoder(num_layers=config.num_layers, units=config.units, hidden_size=config.hidden_size,
                          max_length=config.max_length, num_heads=config.num_heads, dropout=config.dropout,
                          layer_norm_eps=config.layer_norm_eps, activation=config.activation,
                          prefix="bertencoder0_")
    model = BERTModel(encoder, vocab_size=config.vocab_size, units=config.units, embed_size=config.embed_size,
                      use_pooler=False, use_decoder=True, use_classifier=False, use_token_type_embed=False,
                      prefix="bortmodel0_")
    name_of = {}
    for name, param in model._collect_params_with_prefix().items():
        name_of.setdefault(id(param), name)
    full = model.collect_params()
    return [name_of[id(full[key])] for key in sorted(full.keys())]


def load_original_states(path, trainer, params, config, allow_pickle=False):
    """Put the optimizer states of an original `.states.NN` file into `trainer` (over `params`, {name: Parameter},
    the same dict the trainer was built from). States are matched by parameter name through the original's
    parameter order and checked for shape; float16 master-weight states are unwrapped when training in float32."""
    states = read_original_states(path, allow_pickle)
    order = original_parameter_order(config)
    optimizer, updater = trainer._optimizer, trainer._updaters[0]
    by_id = {id(p): name for name, p in params.items()}
    index_of = {by_id.get(id(p)): i for i, p in enumerate(trainer._params)}
    for index, state in sorted(states.items()):
        name = order[index] if 0 <= index < len(order) else None
        if name not in index_of:
            raise BortError(f"{path}: optimizer state #{index} ({name or 'beyond the model'}) has no parameter here; "
                            f"was it written for another model config?")
        ours = index_of[name]
        weight = trainer._params[ours].data()
        fresh = optimizer.create_state_multi_precision(ours, weight)
        multi = isinstance(fresh, tuple) and len(fresh) == 2 and isinstance(fresh[1], tuple)
        saved_multi = isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], (tuple, list))
        parts = list(state[1] if saved_multi else state)
        targets = list(fresh[1] if multi else fresh)
        if len(parts) != len(targets) or any(p.shape != t.shape for p, t in zip(parts, targets)):
            raise BortError(f"{path}: optimizer state of {name} has shapes {[p.shape for p in parts]}, the model "
                            f"needs {[t.shape for t in targets]}")
        for part, target in zip(parts, targets):
            target[:] = part.astype(target.dtype)
        updater.states[ours] = fresh
        updater.states_synced[ours] = True
    log.info("%s: loaded the original's optimizer state for %d parameters", path, len(states))
    return len(states)


def original_checkpoint(ckpt_dir, step):
    """(params path, {local rank: states path}) of the original's `checkpoint_<step>/` in `ckpt_dir`, or None."""
    folder = os.path.join(ckpt_dir, f"checkpoint_{int(step)}")
    params = os.path.join(folder, f"{int(step):07d}.params")
    if not os.path.isfile(params):
        return None
    return params, original_states_files(params)


def resume_original(config, dist, student, trainer, params, model_config, own_steps=()):
    """The original's checkpoints in a pretraining run (`config`: a PretrainConfig); returns the start step or 0.

    - `--start_step N` naming the original's `checkpoint_N/` in `--ckpt_dir` (and no checkpoint of ours for N):
      its parameters, and its pickled optimizer state, which needs --allow_legacy_pickle (else a one-line error).
      The data restarts from the beginning (the original kept no data position).
    - `--student_params checkpoint_N/`: the parameters are loaded by the caller; the optimizer state beside them
      is loaded only with --allow_legacy_pickle (else skipped, with a log line).
    """
    from bort.weights.checkpoint import load_parameters  # noqa: PLC0415

    step = str(config.start_step).strip()
    found = original_checkpoint(config.ckpt_dir, int(step)) if step.isdigit() and int(step) else None
    if found and int(step) not in own_steps:
        params_path, states = found
        if not states:
            raise BortError(f"{params_path}: the original checkpoint has no .states.NN file to resume from")
        read_original_states(states[min(states)], config.allow_legacy_pickle)  # refuse before touching anything
        load_parameters(student, params_path)
    elif config.student_params and os.path.isdir(config.student_params):
        params_path, step = None, "0"
        states = original_states_files(resolve_params_path(config.student_params))
        if states and not config.allow_legacy_pickle:
            log.info("%s: optimizer state not loaded (a pickle; --allow_legacy_pickle loads it)", config.student_params)
            return 0
    else:
        return 0
    if states:
        from bort.train.optim import prepare_optimizer_state  # noqa: PLC0415

        prepare_optimizer_state(trainer)
        path = states.get(dist.local_rank, states[min(states)])
        load_original_states(path, trainer, params, model_config, config.allow_legacy_pickle)
    if dist.is_root and params_path:
        log.info("resumed from the original's checkpoint %s (step %s); the data restarts", params_path, step)
    return int(step)
