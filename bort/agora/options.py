"""Agora's options: the settings of a grid search (`GridConfig`) and of an Agora run (`AgoraConfig`), which is all
bort.agora reads, and the command-line flags that build them, shared by scripts/agora.py and
experiments/agora_experiment.py.

A command line is `<own flags> -- <finetune_bort.py flags>`: the flags after `--` go to every trial.
"""
import dataclasses
import sys

from bort.agora.generators import GENERATORS
from bort.agora.pruning import PRUNE_RULES
from bort.errors import BortError


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The plain grid search: every combination of the grid file is one trial; the best dev score wins."""

    task_name: str
    output_dir: str  # one folder per trial, results.csv / results.md
    finetune_args: tuple = ()  # the flags after `--`, given to every finetune_bort.py trial
    grid: str = None  # grid JSON (None: scripts/agora_grids/<TASK>.json, else default.json)
    gpus: tuple = ()  # GPU ids, one trial per GPU at a time; empty: CPU, trials in sequence
    in_process: bool = False  # trials call finetune_bort.main in this process, one at a time (bort.agora.grid)
    retry_failed: bool = False  # rerun trials recorded as failed
    rerun_changed: bool = False  # rerun recorded trials whose command or result files changed (else: refuse)


@dataclasses.dataclass(frozen=True)
class AgoraConfig:
    """Agora (bort.agora.rounds): rounds of the grid Θ on a growing training set, labelled by a trained model."""

    task_name: str
    output_dir: str  # split.json, heldout/, round_NN/, rounds.md, result.json
    teacher_parameters: str = None  # the trained model that labels generated examples (a task checkpoint), or:
    labeler_predictions: str = None  # ... a JSONL file of its predictions keyed by example text, or:
    labeler_command: str = None  # ... a command reading examples (JSONL, stdin) and writing labels (JSONL, stdout)
    finetune_args: tuple = ()  # the flags after `--`, given to every finetune_bort.py trial
    grid: str = None  # Θ, a grid JSON (None: scripts/agora_grids/<TASK>.json, else default.json)
    gpus: tuple = ()  # GPU ids, one trial per GPU at a time; empty: CPU, trials in sequence
    in_process: bool = False  # trials call finetune_bort.main in this process, one at a time (bort.agora.grid)
    rerun_changed: bool = False  # rerun recorded trials whose command or result files changed (else: refuse)
    generators: tuple = ("dropout", "swap")  # generating functions (bort.agora.generators)
    mlm_parameters: str = None  # pretrained Bort with its MLM head, for the mlm generator
    variants: int = 4  # new examples per mistake (before duplicates go)
    heldout_fraction: float = 0.5  # part of the official dev set held out from E (scores only the final model)
    split_seed: int = 0  # seed of the E / held-out split, and of E's generation / selection split
    selection_fraction: float = 0.5  # part of E that selects (epoch, trial, best round, replay); the rest drives
    #                                  generation (0: all of E does both, as the paper's single dev set)
    prune_rule: str = "prefix"  # bort.agora.pruning.PRUNE_RULES
    seed: int = 0  # seed of the generating functions
    max_rounds: int = 10
    max_replays: int = 1  # replays per round when its best E score falls
    replay_margin: float = 0.0  # replay a round whose best E score is below the previous round's plus this

    def __post_init__(self):
        given = [x for x in (self.teacher_parameters, self.labeler_predictions, self.labeler_command) if x]
        if len(given) != 1:
            raise BortError(f"--teacher_parameters: required with Agora (a fine-tuned checkpoint of {self.task_name} "
                            f"whose official score on E is >= 2/3 and above the majority class's), or instead "
                            f"--labeler_predictions or --labeler_command: exactly one of the three")
        if not 0.0 <= self.selection_fraction < 1.0:
            raise BortError(f"--selection_fraction: expected a number in [0, 1), got {self.selection_fraction}")
        if self.prune_rule not in PRUNE_RULES:
            raise BortError(f"--prune_rule: expected one of {', '.join(PRUNE_RULES)}, got {self.prune_rule!r}")
        if self.variants <= 0 or self.max_rounds <= 0 or self.max_replays < 0:
            raise BortError("--variants and --max_rounds must be positive, --max_replays non-negative")


def split_finetune_flags(argv):
    """(own flags, flags after `--` that go to every finetune_bort.py run) of a command line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def add_trial_flags(parser):
    """--grid, --gpus, --in_process: which trials, and how they run."""
    parser.add_argument("--grid", default=None,
                        help="grid JSON, Θ for agora (default: scripts/agora_grids/<TASK>.json or default.json)")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids, one trial per GPU at a time (default: "
                                                   "CPU, trials in sequence)")
    parser.add_argument("--in_process", action="store_true",
                        help="run each trial as a call of finetune_bort.main in this process instead of a new "
                             "Python process: saves the start-up (seconds per trial: small CPU trials); one trial "
                             "at a time, at most one GPU; a trial that crashes the interpreter ends the search")
    parser.add_argument("--rerun_changed", action="store_true",
                        help="rerun recorded trials whose command (flags) differs from this run's or whose "
                             "result.json or result files changed since (default: refuse in one line)")


def add_agora_flags(parser, max_rounds=AgoraConfig.max_rounds):
    """The flags of the algorithm (AgoraConfig's fields but the seed), to a parser or an argument group."""
    parser.add_argument("--teacher_parameters", default=None,
                        help="the trained model that labels generated examples: a checkpoint finetune_bort.py wrote "
                             "for this task (same vocabulary); its official score on E must be >= 2/3 and above "
                             "the majority class's")
    parser.add_argument("--labeler_predictions", default=None,
                        help="instead: any model's labels, a JSONL file of objects with the example's text fields "
                             "(text_a, text_b; COPA: premise, choices) and 'label'; it must cover E and the "
                             "generated examples (bort.agora.labelers)")
    parser.add_argument("--labeler_command", default=None,
                        help="instead: a shell command that reads examples as JSONL on stdin and writes one JSON "
                             "object {\"label\": ...} per line on stdout (bort.agora.labelers)")
    parser.add_argument("--selection_fraction", type=float, default=AgoraConfig.selection_fraction,
                        help="part of E (seeded by --split_seed) that picks epochs, trials, the best round and "
                             "replays; the rest of E provides the mistakes that drive generation (0: all of E does "
                             "both)")
    parser.add_argument("--prune_rule", choices=PRUNE_RULES, default=AgoraConfig.prune_rule,
                        help="prefix: keep the best of each group sharing the longest common prefix (grid key "
                             "order); best: remove the sets sharing the longest common prefix with the best set "
                             "(docs/agora.md)")
    parser.add_argument("--generators", default=",".join(AgoraConfig.generators),
                        help=f"comma-separated generating functions among {', '.join(GENERATORS)} (mlm needs "
                             "--mlm_parameters)")
    parser.add_argument("--mlm_parameters", default=None,
                        help="pretrained Bort with its MLM head (e.g. model/bort.params)")
    parser.add_argument("--variants", type=int, default=AgoraConfig.variants,
                        help="new examples per mistake (before duplicates go)")
    parser.add_argument("--heldout_fraction", type=float, default=AgoraConfig.heldout_fraction,
                        help="part of the official dev set held out from E (scores only the final model)")
    parser.add_argument("--split_seed", type=int, default=AgoraConfig.split_seed,
                        help="seed of the E / held-out split (and, plus 7919, of E's E_gen / E_sel split)")
    parser.add_argument("--max_rounds", type=int, default=max_rounds)
    parser.add_argument("--max_replays", type=int, default=AgoraConfig.max_replays,
                        help="replays per round when its best E_sel score falls")
    parser.add_argument("--replay_margin", type=float, default=AgoraConfig.replay_margin,
                        help="replay a round whose best E_sel score is below the previous round's plus this margin")


def parse_flags(parser, argv):
    """Parse `<own flags> -- <finetune flags>`: the parser's namespace, with `finetune_args` and with --gpus and
    --generators as tuples, ready for GridConfig / AgoraConfig (`config_of`)."""
    own, finetune_args = split_finetune_flags(argv)
    args = parser.parse_args(own)
    args.finetune_args = tuple(finetune_args)
    if hasattr(args, "gpus"):
        try:
            args.gpus = tuple(int(g) for g in args.gpus.split(",") if g.strip())
        except ValueError:
            raise BortError(f"--gpus: expected comma-separated integers, found {args.gpus!r}") from None
    if hasattr(args, "generators"):
        args.generators = tuple(g.strip() for g in args.generators.split(",") if g.strip())
    return args


def config_of(config_class, args, **overrides):
    """A GridConfig or AgoraConfig from parsed flags (`parse_flags`; flags that are not fields are left out) and
    `overrides`."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in dict(vars(args), **overrides).items() if k in fields})
