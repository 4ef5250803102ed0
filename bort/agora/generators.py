"""Agora's data-generating functions: new text examples from the ones a model gets wrong.

The paper leaves the generating function open (it only asks for one that produces points near the mistakes); the
ones here perturb text and leave the label to the trained model:

- `mlm`: masked-LM replacement. 10-20 % of the tokens of one text field are masked and refilled with a token
  sampled from the top-k of an MLM head (Bort's own, `--mlm_parameters`), never the original token.
- `dropout`: token dropout: 10-20 % of the words are deleted (at least one word stays).
- `swap`: span swap: two non-overlapping spans of 1-3 words trade places.

`TextFields` names the fields a task's examples carry text in (single sentence: text_a; pair: text_a and
text_b; COPA: premise and the choices); one field is perturbed per variant. `generate` makes several variants per
source example and removes duplicates, copies of the source and copies of anything already in the training set.
"""
import numpy as np

from bort.errors import BortError
from bort.finetune.task_kinds import ClassificationTask, CopaTask

GENERATORS = ("mlm", "dropout", "swap")


def text_fields(task, example):
    """Names of the text-carrying fields of an example (lists are addressed as (name, index))."""
    if isinstance(task, ClassificationTask) and not task.num_spans:
        return ["text_a"] + (["text_b"] if example.get("text_b") is not None else [])
    if isinstance(task, CopaTask):
        return ["premise"] + [("choices", i) for i in range(len(example["choices"]))]
    raise BortError(f"{task.name}: Agora's generating functions handle classification tasks without spans and "
                    f"COPA; {task.name} ({task.kind}{', spans' if task.num_spans else ''}) is not supported")


def get_field(example, field):
    return example[field[0]][field[1]] if isinstance(field, tuple) else example[field]


def set_field(example, field, text):
    out = dict(example)
    if isinstance(field, tuple):
        out[field[0]] = list(out[field[0]])
        out[field[0]][field[1]] = text
    else:
        out[field] = text
    return out


def clean(text):
    """One line without tabs, single-spaced: safe in every task file format."""
    return " ".join(text.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


def token_dropout(text, rng, low=0.1, high=0.2):
    words = text.split()
    if len(words) < 2:
        return text
    count = min(len(words) - 1, max(1, int(round(len(words) * rng.uniform(low, high)))))
    drop = set(rng.choice(len(words), size=count, replace=False).tolist())
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def span_swap(text, rng, max_span=3):
    words = text.split()
    if len(words) < 2:
        return text
    first = int(rng.randint(1, min(max_span, len(words) // 2) + 1))
    second = int(rng.randint(1, min(max_span, len(words) - first) + 1))
    start1 = int(rng.randint(0, len(words) - first - second + 1))
    start2 = int(rng.randint(start1 + first, len(words) - second + 1))
    a, b = words[start1:start1 + first], words[start2:start2 + second]
    return " ".join(words[:start1] + b + words[start1 + first:start2] + a + words[start2 + second:])


class MlmReplacer:
    """Masked-LM replacement with a model that has its MLM head (bort.model.BortModel with use_decoder)."""

    def __init__(self, model, tokenizer, low=0.1, high=0.2, top_k=5, max_length=None):
        if tokenizer.mask_id is None:
            raise BortError("the vocabulary has no <mask> token; the mlm generating function needs one")
        if model.config.vocab_size != tokenizer.vocab_size:  # e.g. Bort's MLM head with a WordPiece student
            raise BortError(f"the MLM model has {model.config.vocab_size} word embeddings but the vocabulary has "
                            f"{tokenizer.vocab_size} tokens; pass the vocabulary it was trained with")
        self.model, self.tokenizer = model, tokenizer
        self.low, self.high, self.top_k = low, high, top_k
        self.max_length = min(max_length or model.config.max_length, model.config.max_length)
        tok = tokenizer
        self.special = {i for i in (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id) if i is not None}

    def __call__(self, text, rng):
        ids = self.tokenizer.encode(text)[:self.max_length - 2]
        return self.tokenizer.decode(self.replace_ids(ids, rng)) if ids else text

    def replace_ids(self, ids, rng):
        import mxnet as mx

        count = max(1, int(round(len(ids) * rng.uniform(self.low, self.high))))
        positions = sorted(rng.choice(len(ids), size=min(count, len(ids)), replace=False).tolist())
        masked = list(ids)
        for p in positions:
            masked[p] = self.tokenizer.mask_id
        inputs = [self.tokenizer.bos_id] + masked + [self.tokenizer.eos_id]
        ctx = self.model.collect_params().list_ctx()[0]
        with mx.autograd.pause(train_mode=False):
            _, logits = self.model(mx.nd.array([inputs], ctx=ctx), mx.nd.array([len(inputs)], ctx=ctx),
                                   mx.nd.array([[p + 1 for p in positions]], ctx=ctx))
        logits = logits[0].astype("float32").asnumpy()
        out = list(ids)
        for row, p in zip(logits, positions):
            row = row[:self.tokenizer.vocab_size].astype(np.float64)
            row[[ids[p]] + sorted(self.special)] = -np.inf
            top = np.argsort(-row)[:self.top_k]
            weights = np.exp(row[top] - row[top[0]])
            out[p] = int(top[rng.choice(len(top), p=weights / weights.sum())])
        return out


def make_generators(names, mlm=None):
    """name -> function(text, rng) for the chosen generating functions (`mlm` is an MlmReplacer)."""
    functions = {}
    for name in names:
        if name not in GENERATORS:
            raise BortError(f"--generators: unknown generating function {name!r}; expected some of {GENERATORS}")
        if name == "mlm":
            if mlm is None:
                raise BortError("--generators mlm needs --mlm_parameters (a model with its MLM head)")
            functions[name] = mlm
        else:
            functions[name] = token_dropout if name == "dropout" else span_swap
    if not functions:
        raise BortError(f"--generators: expected at least one of {GENERATORS}")
    return functions


def example_key(task, example):
    return tuple(clean(get_field(example, f)) for f in text_fields(task, example))


def generate(task, sources, functions, variants, rng, seen=()):
    """`variants` new examples per source (fewer when duplicates are removed), label None. `seen`: keys of the
    examples already in the training set (see `example_key`); copies of them and of the sources are dropped."""
    seen = set(seen)
    names = sorted(functions)
    out = []
    for source in sources:
        seen.add(example_key(task, source))
        fields = text_fields(task, source)
        for _ in range(variants):
            for _attempt in range(3):  # a variant equal to something seen is retried, then given up
                field = fields[int(rng.randint(len(fields)))]
                name = names[int(rng.randint(len(names)))]
                text = clean(functions[name](get_field(source, field), rng))
                candidate = set_field(source, field, text)
                key = example_key(task, candidate)
                if text and key not in seen:
                    seen.add(key)
                    candidate.update(label=None, source=source.get("where"), generator=name)
                    out.append(candidate)
                    break
    return out
