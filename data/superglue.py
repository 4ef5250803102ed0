"""Readers for the SuperGLUE `.jsonl` files (`train.jsonl`, `val.jsonl`, `test.jsonl`, `AX-b.jsonl`, `AX-g.jsonl`).

`read_superglue(task, segment, data_dir)` returns example dicts with `idx`, `label` (raw: bool, str or int; None
when the file has none), `where` ("file:line") and the task's fields:

- BoolQ: text_a=passage, text_b=question. CB, RTE, AX-g: premise/hypothesis. AX-b: sentence1/sentence2.
- COPA: premise, question (cause/effect), choices=[choice1, choice2].
- MultiRC: one example per question: text_a=passage (HTML markup removed), question, answers=[{idx, text, label}],
  passage_idx.
- ReCoRD: one example per query: text_a=passage, query (with @placeholder), entities (sorted distinct entity
  strings, as the original), answers (gold strings).
- WiC: text_a/text_b=sentence1/sentence2, spans=[(start1, end1) in text_a, (start2, end2) in text_b] (characters).
- WSC: text_a=text, text_b="<span2> means <span1>" (the original's hint), spans=[span1, span2] in text_a (chars).

Quirks of the released files handled (tests/test_superglue_quirks.py): key order varying between splits, AX-b
`idx` as a string, WSC span texts that do not match the words at their index (see word_span), ReCoRD entity ends
inclusive, MultiRC question/answer idx counted across the whole file (kept as given), AX-g minimal pairs on
consecutive lines with their own pair_id each, a leading BOM, no final newline. Every field is type-checked where
it is read: a wrong type or a missing key is a one-line error naming file:line and the field.
"""
import json
import logging
import re

from bort.errors import BortError

from bort.io import read_jsonl

from data.glue import default_data_dir, find_file

log = logging.getLogger(__name__)

SUPERGLUE_DIRS = {  # the original's directory names under $MXNET_HOME/datasets
    "BoolQ": "superglue_boolq", "CB": "superglue_cb", "COPA": "superglue_copa", "MultiRC": "superglue_multirc",
    "ReCoRD": "superglue_record", "SuperGLUE-RTE": "superglue_rte", "WiC": "superglue_wic", "WSC": "superglue_wsc",
    "AX-b": "superglue_ax_b", "AX-g": "superglue_ax_g",
}
SEGMENT_FILES = {"train": ["train.jsonl"], "dev": ["val.jsonl", "dev.jsonl"], "test": ["test.jsonl"],
                 "AX-b": ["AX-b.jsonl", "test.jsonl"], "AX-g": ["AX-g.jsonl", "test.jsonl"]}
SUPERGLUE_HELP = "get the SuperGLUE data from super.gluebenchmark.com/tasks and unzip each task's folder"


def _get(record, key, where):
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise BortError(f"{where}: missing field {key!r}")
        value = value[part]
    return value


_KINDS = {str: "a string", int: "an integer", list: "a list", dict: "a JSON object"}


def _field(record, key, where, kind=str):
    """record[key] (dotted for nested keys), which must be of `kind`; else a one-line error naming the field."""
    value = _get(record, key, where)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BortError(f"{where}: field {key!r} must be {_KINDS[kind]}, found {json.dumps(value)[:60]}")
    return value


def _items(record, key, where):
    """A list of JSON objects (MultiRC questions and answers, ReCoRD entities, qas and answers)."""
    values = _field(record, key, where, list)
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise BortError(f"{where}: field {key!r}[{i}] must be a JSON object, found {json.dumps(value)[:60]}")
    return values


def _idx(record, where, default):
    """The record's idx: an integer, or (AX-b) a string of digits, read as the integer it names."""
    value = record.get("idx", default)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BortError(f"{where}: field 'idx' must be an integer, found {json.dumps(value)[:60]}")
    return value


def clean_multirc(text):
    """The passage without its markup: '<b>Sent 1: </b>...<br>' becomes plain sentences."""
    text = re.sub(r"<b>Sent \d+: </b>", " ", text)
    text = re.sub(r"</?br>|</?b>", " ", text)
    return " ".join(text.split())


def shorten_cb_text(text):
    """The original's shortening of long CB texts (its `CBExpansion`): a text with more than three '.'-separated
    pieces keeps its last four, joined by spaces (the periods between them are dropped), without the first
    character. Its filler-word removal had no effect (the result of str.replace was discarded) and is not done."""
    pieces = text.split(".")
    return " ".join(pieces[-4:])[1:] if len(pieces) > 3 else text


def word_span(text, index, span_text, where):
    """Character span of WSC's `span_text` at whitespace-word `index` of `text`.

    The released spans do not always match the word at their index (other case, punctuation attached, a
    newline inside the span text, an index that is off by a word or two): the span text read from that word
    (case and whitespace ignored) is used when it is there, else its occurrence nearest to the word, else as
    many words from the index as the span text has."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    if not 0 <= index < len(words):
        raise BortError(f"{where}: span index {index} is outside the text's {len(words)} words")
    parts = span_text.split()
    if not parts:
        raise BortError(f"{where}: empty span text")
    pattern = re.compile(r"\s+".join(re.escape(p) for p in parts), re.IGNORECASE)
    start = words[index][0]
    match = pattern.match(text, start)
    if match:
        return match.start(), match.end()
    found = [m for m in pattern.finditer(text)]
    if found:
        nearest = min(found, key=lambda m: abs(m.start() - start))
        return nearest.start(), nearest.end()
    last = min(index + len(parts), len(words)) - 1
    return start, words[last][1]


def _char_span(record, which, text, where):
    """WiC's (start, end) character offsets of the target word in `text`, checked."""
    start = _field(record, f"start{which}", where, int)
    end = _field(record, f"end{which}", where, int)
    if not 0 <= start < end <= len(text):
        raise BortError(f"{where}: fields 'start{which}'/'end{which}' ({start}, {end}) must lie within "
                        f"sentence{which} ({len(text)} characters)")
    return start, end


def _multirc(record, base, where, examples):
    passage = _field(record, "passage", where, dict)
    text = clean_multirc(_field(passage, "text", where))
    for q, question in enumerate(_items(passage, "questions", where)):
        q_where = f"{where}: question {q}"
        answers = []
        for i, answer in enumerate(_items(question, "answers", q_where)):
            label = answer.get("label")
            if label is not None and label not in (0, 1):
                raise BortError(f"{q_where}: answer {i} field 'label' must be 0 or 1, found {json.dumps(label)}")
            answers.append({"idx": _idx(answer, q_where, i), "text": _field(answer, "text", q_where),
                            "label": None if label is None else int(label)})
        if not answers:  # every MultiRC question has candidate answers; none means a damaged file
            raise BortError(f"{q_where}: field 'answers' is empty; expected at least one candidate answer")
        examples.append({"idx": _idx(question, q_where, len(examples)), "passage_idx": base["idx"],
                         "text_a": text, "question": _field(question, "question", q_where), "answers": answers,
                         "where": where,
                         "label": None if any(a["label"] is None for a in answers) else [a["label"] for a in answers]})


def _record(record, where, examples):
    passage = _field(record, "passage", where, dict)
    raw = _field(passage, "text", where)
    entities = set()
    for i, entity in enumerate(_items(passage, "entities", where)):
        start = _field(entity, "start", f"{where}: entity {i}", int)
        end = _field(entity, "end", f"{where}: entity {i}", int)  # inclusive, as released
        if not 0 <= start <= end < len(raw):
            raise BortError(f"{where}: entity {i} ({start}, {end}) must lie within the passage "
                            f"({len(raw)} characters; 'end' is inclusive)")
        entities.add(raw[start:end + 1])
    entities = sorted(entities)
    text = raw.replace("\n", " ")
    for q, qa in enumerate(_items(record, "qas", where)):
        q_where = f"{where}: query {q}"
        answers = None
        if "answers" in qa:
            answers = [_field(a, "text", q_where) for a in _items(qa, "answers", q_where)] or None
        examples.append({"idx": _idx(qa, q_where, len(examples)), "text_a": text,
                         "query": _field(qa, "query", q_where), "entities": entities, "answers": answers,
                         "label": answers, "where": where})


def read_superglue(task, segment, data_dir, cb_expansion=False):
    """Examples of a SuperGLUE task's segment; `cb_expansion` shortens CB texts as the original did."""
    if task not in SUPERGLUE_DIRS:
        raise BortError(f"unknown SuperGLUE task {task!r}; expected one of {sorted(SUPERGLUE_DIRS)}")
    path = find_file(data_dir, SEGMENT_FILES[segment], SUPERGLUE_HELP)
    examples = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        base = {"idx": _idx(record, where, len(examples)), "label": record.get("label"), "where": where}
        if task == "BoolQ":
            examples.append(dict(base, text_a=_field(record, "passage", where),
                                 text_b=_field(record, "question", where)))
        elif task in ("CB", "SuperGLUE-RTE", "AX-g"):
            premise, hypothesis = _field(record, "premise", where), _field(record, "hypothesis", where)
            if task == "CB" and cb_expansion:
                premise, hypothesis = shorten_cb_text(premise), shorten_cb_text(hypothesis)
            examples.append(dict(base, text_a=premise, text_b=hypothesis))
        elif task == "AX-b":
            examples.append(dict(base, text_a=_field(record, "sentence1", where),
                                 text_b=_field(record, "sentence2", where)))
        elif task == "COPA":
            question = _field(record, "question", where)
            if question not in ("cause", "effect"):
                raise BortError(f"{where}: field 'question' must be 'cause' or 'effect', found {question!r}")
            examples.append(dict(base, premise=_field(record, "premise", where), question=question,
                                 choices=[_field(record, "choice1", where), _field(record, "choice2", where)]))
        elif task == "MultiRC":
            _multirc(record, base, where, examples)
        elif task == "ReCoRD":
            _record(record, where, examples)
        elif task == "WiC":
            text_a, text_b = _field(record, "sentence1", where), _field(record, "sentence2", where)
            examples.append(dict(base, text_a=text_a, text_b=text_b, word=_field(record, "word", where),
                                 spans=[_char_span(record, 1, text_a, where), _char_span(record, 2, text_b, where)]))
        elif task == "WSC":
            text = _field(record, "text", where)
            span1 = _field(record, "target.span1_text", where)
            span2 = _field(record, "target.span2_text", where)
            spans = [word_span(text, _field(record, "target.span1_index", where, int), span1, where),
                     word_span(text, _field(record, "target.span2_index", where, int), span2, where)]
            hint = f"{' '.join(span2.split())} means {' '.join(span1.split())}"
            examples.append(dict(base, text_a=text, text_b=hint, spans=spans))
    if not examples:
        raise BortError(f"{path}: no examples found")
    if task == "AX-g":
        check_gender_pairs(examples, path)
    return examples


def check_gender_pairs(examples, path):
    """AX-g holds minimal pairs on consecutive lines 2i, 2i+1 (the same hypothesis, the premise's pronoun switched),
    which gender parity compares; each line has its own pair_id, so the order is all that pairs them."""
    if len(examples) % 2:  # predictions need no pairs: every line is still predicted, parity skips the last
        log.warning("%s: %d examples, an odd number: line %d has no pair; its prediction is written, gender parity "
                    "counts the %d complete pairs", path, len(examples), len(examples), len(examples) // 2)
    for first, second in zip(examples[0::2], examples[1::2]):
        if first["text_b"] != second["text_b"]:
            raise BortError(f"{second['where']}: hypothesis differs from the line before; expected minimal pairs "
                            f"(lines 2i and 2i+1 with the same hypothesis)")


def superglue_dir(task):
    return default_data_dir(SUPERGLUE_DIRS[task])



