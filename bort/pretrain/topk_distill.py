"""The distillation term from a cached top-k of the teacher (see bort.pretrain.teacher_cache for the cache itself).

For one masked position let S be the teacher's k highest-scoring tokens, p = softmax(t / T) the teacher's
tempered distribution and q = softmax(s / T) the student's. The cache holds t on S, log Σ_v exp(t_v / T) over the
whole vocabulary, and the teacher's mass outside S, r = Σ_{v∉S} p_v. The cached KD term is

    T² · KL(P̄ ‖ Q̄) = T² · [ Σ_{v∈S} p_v (log p_v − log q_v) + r (log r − log q_rest) ],  q_rest = Σ_{v∉S} q_v

the exact KL divergence between the two distributions coarse-grained to k + 1 outcomes: each top-k token, and
"any other token". By the log-sum inequality KL(P̄ ‖ Q̄) ≤ KL(p ‖ q), with equality exactly when the student
spreads its rest mass over the tokens outside S in the teacher's proportions; for k = V the rest is empty (r = 0)
and it is the exact loss. Its gradient in s_v is (q_v − p̃_v) / T, with p̃ = p on S and p̃_v = r · q_v / q_rest
outside: the student is pulled to the teacher's top-k probabilities and to the teacher's total mass elsewhere,
spread as the student already spreads it (only how the teacher divides the rest among tokens is lost).

log q_rest is log Σ_{v∉S} exp(s_v / T) − log Σ_v exp(s_v / T), a sum of the terms outside S (not log(1 − Σ_S q),
which cancels in float32).
"""
import bort  # noqa: F401
import mxnet as mx

from bort.pretrain.distill import DistillationLoss, per_position_terms
from bort.pretrain.distill import prediction_counts as live_prediction_counts
from bort.errors import BortError
from bort.train.distributed import to_device

# The names under which the data pipeline attaches a batch's cached teacher rows (numpy, (B, K, ...)).
BATCH_KEYS = ("teacher_topk_ids", "teacher_topk_prob", "teacher_rest_mass", "teacher_neg_entropy")
_TINY = 1e-37


class CachedTopK:
    """The cached teacher output of one batch, flattened to N masked positions, as NDArrays on one context:
    ids (N, k) (float32, exact below 2^24), prob (N, k) = p on the top-k, rest (N,) = r, and neg_entropy (N,) =
    Σ_S p log p + r log r (constant for the student)."""

    def __init__(self, ids, prob, rest, neg_entropy):
        self.ids, self.prob, self.rest, self.neg_entropy = ids, prob, rest, neg_entropy

    @property
    def k(self):
        return self.ids.shape[-1]

    def top1(self):
        return self.ids[:, 0]


def teacher_from_batch(arrays, ctx):
    """CachedTopK from a batch dict that carries the cache's rows (see BATCH_KEYS), else None."""
    if BATCH_KEYS[0] not in arrays:
        return None
    k = arrays["teacher_topk_ids"].shape[-1]
    ids, prob, rest, neg = (to_device(arrays[key], ctx, "float32") for key in BATCH_KEYS)
    return CachedTopK(ids.reshape((-1, k)), prob.reshape((-1, k)), rest.reshape((-1,)), neg.reshape((-1,)))


def _flatten(logits):
    return logits.reshape((-1, logits.shape[-1])).astype("float32", copy=False)


def cached_kd_terms(student_logits, teacher, temperature=1.0):
    """T² · KL(P̄ ‖ Q̄) per masked position, shape (N,) (see the module docstring)."""
    s = _flatten(student_logits) / temperature
    n, vocab = s.shape
    if teacher.ids.shape[0] != n:
        raise ValueError(f"cached teacher rows ({teacher.ids.shape[0]}) do not match the student's ({n})")
    rows = mx.nd.arange(n, ctx=s.context).reshape((n, 1)).broadcast_to((n, teacher.k)).reshape((-1,))
    index = mx.nd.stack(rows, teacher.ids.reshape((-1,)))
    s_top = mx.nd.gather_nd(s, index).reshape((n, teacher.k))
    outside = 1 - mx.nd.scatter_nd(mx.nd.ones((n * teacher.k,), ctx=s.context), index, shape=(n, vocab))
    shift = mx.nd.BlockGrad(mx.nd.max(s, axis=-1, keepdims=True))
    e = mx.nd.exp(s - shift)
    shift = shift.reshape((-1,))
    log_z = shift + mx.nd.log(e.sum(axis=-1))
    # A sum of the positive terms outside the top-k (no cancellation); _TINY keeps it finite when the top-k is the
    # whole vocabulary (then r = 0 and the term vanishes).
    log_z_rest = shift + mx.nd.log((e * outside).sum(axis=-1) + _TINY)
    mass = teacher.prob.sum(axis=-1) + teacher.rest
    cross = (teacher.prob * s_top).sum(axis=-1) + teacher.rest * log_z_rest - mass * log_z  # Σ p̄ log q̄
    return (teacher.neg_entropy - cross) * (temperature * temperature)


class TopKDistillationLoss(DistillationLoss):
    """DistillationLoss that also takes a CachedTopK in place of the teacher logits (the --teacher_cache path)."""

    def __init__(self, mlm_weight=0.1, teacher_ce_weight=0.5, temperature=2.0, legacy=False):
        if legacy:
            raise BortError("--legacy_kd_loss needs the teacher's full logits; it cannot be combined with "
                            "--teacher_cache")
        super().__init__(mlm_weight, teacher_ce_weight, temperature, legacy=False)

    def __call__(self, student_logits, teacher_logits, labels, weights):
        if not isinstance(teacher_logits, CachedTopK):
            return super().__call__(student_logits, teacher_logits, labels, weights)
        ce, _ = per_position_terms(student_logits, None, labels)
        return self.combine(ce, cached_kd_terms(student_logits, teacher_logits, self.temperature), weights)


def prediction_counts(student_logits, teacher_logits, labels, weights):
    """bort.pretrain.distill.prediction_counts, also for a CachedTopK teacher (its top-1 is the first cached id)."""
    if not isinstance(teacher_logits, CachedTopK):
        return live_prediction_counts(student_logits, teacher_logits, labels, weights)
    correct, _ = live_prediction_counts(student_logits, None, labels, weights)
    weights = weights.reshape((-1,)).astype("float32", copy=False)
    pred = mx.nd.argmax(_flatten(student_logits), axis=-1)
    agree = ((pred == teacher_logits.top1()) * weights).sum()
    return correct, agree
