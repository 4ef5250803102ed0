"""Search spaces: the candidate architectures ξ = (D layers, A heads, H hidden size, I intermediate size), their
constraints, the maximum point T, and the analytic objectives (parameter count, operation count).

A space is a JSON file (the shipped ones are in `spaces/`):

    {"description": "...",
     "dimensions": {"num_layers": [2, 4], "num_heads": [4, 8], "units": [512, 1024], "hidden_size": [768, 3072]},
     "constraints": [{"divisible": ["units", "num_heads"]}, {"min_head_size": 32}],
     "maximum_point": {"num_layers": 24, "num_heads": 16, "units": 1024, "hidden_size": 4096}}

Constraints (all must hold; `units` divisible by `num_heads` always holds, the encoder needs it):
`{"divisible": [a, b]}` a % b == 0; `{"min_head_size": n}` units / num_heads >= n; `{"max": {dim: n}}` and
`{"min": {dim: n}}` bounds. Expressions are not evaluated: a user's file cannot run code.
"""
import dataclasses
import itertools
import os

from bort.errors import BortError
from bort.io import read_json

DIMENSIONS = ("num_layers", "num_heads", "units", "hidden_size")  # D, A, H, I (gluon-nlp's names for H and I)
SPACES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spaces")


@dataclasses.dataclass(frozen=True, order=True)
class Architecture:
    """One candidate: D layers, A heads, H hidden size (`units`), I intermediate/FFN size (`hidden_size`)."""

    num_layers: int
    num_heads: int
    units: int
    hidden_size: int

    @property
    def name(self):
        return f"D{self.num_layers}-A{self.num_heads}-H{self.units}-I{self.hidden_size}"

    def to_dict(self):
        return dataclasses.asdict(self)

    def model_config(self, base):
        """`base` (a bort.model.ModelConfig: vocabulary, max length, dropout) with this shape."""
        return base.replace(num_layers=self.num_layers, num_heads=self.num_heads, units=self.units,
                            embed_size=self.units, hidden_size=self.hidden_size)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    dimensions: dict
    constraints: tuple
    maximum_point: Architecture
    description: str = ""

    def candidates(self):
        """Every architecture of the grid that satisfies the constraints, in grid order."""
        values = [self.dimensions[d] for d in DIMENSIONS]
        archs = (Architecture(*combo) for combo in itertools.product(*values))
        return [a for a in archs if satisfies(a, self.constraints)]


def satisfies(arch, constraints):
    if arch.units % arch.num_heads:
        return False
    for rule in constraints:
        kind, arg = next(iter(rule.items()))
        if kind == "divisible" and getattr(arch, arg[0]) % getattr(arch, arg[1]):
            return False
        if kind == "min_head_size" and arch.units // arch.num_heads < arg:
            return False
        if kind == "max" and any(getattr(arch, d) > v for d, v in arg.items()):
            return False
        if kind == "min" and any(getattr(arch, d) < v for d, v in arg.items()):
            return False
    return True


def _positive_ints(values, where):
    if not isinstance(values, list) or not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise BortError(f"{where}: expected a non-empty list of positive integers, got {values!r}")
    return sorted(set(values))


def _check_rule(rule, where):
    kinds = {"divisible", "min_head_size", "max", "min"}
    if not isinstance(rule, dict) or len(rule) != 1 or next(iter(rule)) not in kinds:
        raise BortError(f"{where}: expected one of {sorted(kinds)} as {{kind: argument}}, got {rule!r}")
    kind, arg = next(iter(rule.items()))
    if kind == "divisible" and not (isinstance(arg, list) and len(arg) == 2 and set(arg) <= set(DIMENSIONS)):
        raise BortError(f"{where}: 'divisible' takes two of {list(DIMENSIONS)}, got {arg!r}")
    if kind == "min_head_size" and (isinstance(arg, bool) or not isinstance(arg, int)):
        raise BortError(f"{where}: 'min_head_size' takes an integer, got {arg!r}")
    if kind in ("max", "min") and not (isinstance(arg, dict) and set(arg) <= set(DIMENSIONS)):
        raise BortError(f"{where}: '{kind}' takes {{dimension: bound}} over {list(DIMENSIONS)}, got {arg!r}")
    return rule


def architecture_from_dict(values, where):
    if not isinstance(values, dict) or set(values) != set(DIMENSIONS):
        raise BortError(f"{where}: expected an object with exactly {list(DIMENSIONS)}, got {values!r}")
    for d in DIMENSIONS:
        _positive_ints([values[d]], f"{where}.{d}")
    return Architecture(**{d: int(values[d]) for d in DIMENSIONS})


def parse_architecture(text):
    """Architecture from 'D4-A8-H1024-I768' (the names the results use)."""
    try:
        parts = dict((p[0], int(p[1:])) for p in text.upper().split("-"))
        return Architecture(parts["D"], parts["A"], parts["H"], parts["I"])
    except (KeyError, ValueError, IndexError):
        raise BortError(f"{text!r}: expected an architecture as D<layers>-A<heads>-H<hidden>-I<intermediate>, "
                        f"e.g. D24-A16-H1024-I4096") from None


def load_space(path):
    """SearchSpace from a JSON file, or a shipped space by name ('bort_paper', 'cpu_scaled')."""
    if not os.path.exists(path) and os.path.isfile(os.path.join(SPACES_DIR, f"{path}.json")):
        path = os.path.join(SPACES_DIR, f"{path}.json")
    values = read_json(path, "a search space")
    if not isinstance(values, dict) or "dimensions" not in values or "maximum_point" not in values:
        raise BortError(f"{path}: a search space needs 'dimensions' and 'maximum_point'")
    dims = values["dimensions"]
    if not isinstance(dims, dict) or set(dims) != set(DIMENSIONS):
        raise BortError(f"{path}: 'dimensions' must list exactly {list(DIMENSIONS)}, got {sorted(dims)}")
    dims = {d: _positive_ints(dims[d], f"{path}: dimensions.{d}") for d in DIMENSIONS}
    rules = values.get("constraints", [])
    if not isinstance(rules, list):
        raise BortError(f"{path}: 'constraints' must be a list")
    rules = tuple(_check_rule(r, f"{path}: constraints[{i}]") for i, r in enumerate(rules))
    space = SearchSpace(dims, rules, architecture_from_dict(values["maximum_point"], f"{path}: maximum_point"),
                        str(values.get("description", "")))
    if not space.candidates():
        raise BortError(f"{path}: no architecture of the grid satisfies the constraints")
    return space


# ---------------------------------------------------------------------------------------------- analytic objectives
def encoder_parameters(arch):
    """Parameters of the encoder layers (the paper's "effective" size: embeddings excluded): per layer the Q, K, V
    and output projections with biases, the two FFN matrices with biases and two layer norms; plus the layer norm
    on the embeddings. Equals bort.model.parameter_summary(...)['encoder'] (tests check)."""
    h, i = arch.units, arch.hidden_size
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    return arch.num_layers * per_layer + 2 * h


def total_parameters(arch, vocab_size, max_length):
    """Encoder plus word and position embeddings (the MLM head, tied to the embeddings, is not counted)."""
    return encoder_parameters(arch) + (vocab_size + max_length) * arch.units


def operation_counts(arch, batch_size, seq_len):
    """The paper's inference-speed surrogate: additions, multiplications and other operations (exp, division,
    square root, GELU) of one encoder forward pass over (batch_size, seq_len) tokens, embeddings excluded.
    Returns {'additions', 'multiplications', 'other', 'total'}."""
    h, i, a, n = arch.units, arch.hidden_size, arch.num_heads, seq_len
    mult = 4 * h * h + 2 * h * i  # Q, K, V, output projections; FFN
    add = 4 * h * h + 2 * h * i  # their accumulations and biases
    mult += 2 * n * h + a * n  # scores q·k, weighted values, the 1/sqrt(d) scaling
    add += 2 * n * h + a * n  # their accumulations; softmax sums
    other = 2 * a * n + i  # softmax exp and division; GELU
    add += 2 * h + 2 * 4 * h  # two residual adds; two layer norms (mean, centre, variance, shift)
    mult += 2 * 3 * h  # layer norms (square, normalise, scale)
    other += 2  # layer norms' reciprocal square roots
    tokens = arch.num_layers * batch_size * seq_len
    counts = {"additions": add * tokens, "multiplications": mult * tokens, "other": other * tokens}
    counts["total"] = sum(counts.values())
    return counts
