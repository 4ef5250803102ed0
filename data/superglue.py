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
"""
import re

from bort.errors import BortError

from bort.io import read_jsonl

from .glue import default_data_dir, find_file

SUPERGLUE_DIRS = {
    "BoolQ": "superglue_boolq", "CB": "superglue_cb", "COPA": "superglue_copa", "MultiRC": "superglue_multirc",
    "ReCoRD": "superglue_record", "SuperGLUE-RTE": "superglue_rte", "WiC": "superglue_wic", "WSC": "superglue_wsc",
    "AX-b": "superglue_axb", "AX-g": "superglue_axg",
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


def clean_multirc(text):
    """The passage without its markup: '<b>Sent 1: </b>...<br>' becomes plain sentences."""
    text = re.sub(r"<b>Sent \d+: </b>", " ", text)
    text = re.sub(r"</?br>|</?b>", " ", text)
    return " ".join(text.split())


def word_span(text, index, span_text, where):
    """Character span of `span_text`'s words starting at whitespace-word `index` of `text` (WSC)."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    count = max(1, len(span_text.split()))
    if not 0 <= index < len(words) or index + count > len(words):
        raise BortError(f"{where}: span index {index} is outside the text's {len(words)} words")
    return words[index][0], words[index + count - 1][1]


def read_superglue(task, segment, data_dir):
    if task not in SUPERGLUE_DIRS:
        raise BortError(f"unknown SuperGLUE task {task!r}; expected one of {sorted(SUPERGLUE_DIRS)}")
    path = find_file(data_dir, SEGMENT_FILES[segment], SUPERGLUE_HELP)
    examples = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        base = {"idx": record.get("idx", len(examples)), "label": record.get("label"), "where": where}
        if task == "BoolQ":
            examples.append(dict(base, text_a=_get(record, "passage", where), text_b=_get(record, "question", where)))
        elif task in ("CB", "SuperGLUE-RTE", "AX-g"):
            examples.append(dict(base, text_a=_get(record, "premise", where),
                                 text_b=_get(record, "hypothesis", where)))
        elif task == "AX-b":
            examples.append(dict(base, text_a=_get(record, "sentence1", where),
                                 text_b=_get(record, "sentence2", where)))
        elif task == "COPA":
            question = _get(record, "question", where)
            if question not in ("cause", "effect"):
                raise BortError(f"{where}: field 'question' must be 'cause' or 'effect', found {question!r}")
            examples.append(dict(base, premise=_get(record, "premise", where), question=question,
                                 choices=[_get(record, "choice1", where), _get(record, "choice2", where)]))
        elif task == "MultiRC":
            passage = _get(record, "passage", where)
            text = clean_multirc(_get(passage, "text", where))
            for question in _get(passage, "questions", where):
                answers = [{"idx": a.get("idx", i), "text": _get(a, "text", where), "label": a.get("label")}
                           for i, a in enumerate(_get(question, "answers", where))]
                examples.append({"idx": question.get("idx", len(examples)), "passage_idx": base["idx"],
                                 "text_a": text, "question": _get(question, "question", where),
                                 "answers": answers, "where": where,
                                 "label": None if any(a["label"] is None for a in answers)
                                 else [a["label"] for a in answers]})
        elif task == "ReCoRD":
            passage = _get(record, "passage", where)
            raw = _get(passage, "text", where)
            entities = sorted({raw[e["start"]:e["end"] + 1] for e in _get(passage, "entities", where)})
            text = raw.replace("\n", " ")
            for qa in _get(record, "qas", where):
                answers = [a["text"] for a in qa.get("answers", [])] or None
                examples.append({"idx": _get(qa, "idx", where), "text_a": text, "query": _get(qa, "query", where),
                                 "entities": entities, "answers": answers, "label": answers, "where": where})
        elif task == "WiC":
            examples.append(dict(base, text_a=_get(record, "sentence1", where), text_b=_get(record, "sentence2", where),
                                 word=_get(record, "word", where),
                                 spans=[(int(_get(record, "start1", where)), int(_get(record, "end1", where))),
                                        (int(_get(record, "start2", where)), int(_get(record, "end2", where)))]))
        elif task == "WSC":
            text = _get(record, "text", where)
            span1 = _get(record, "target.span1_text", where)
            span2 = _get(record, "target.span2_text", where)
            spans = [word_span(text, int(_get(record, "target.span1_index", where)), span1, where),
                     word_span(text, int(_get(record, "target.span2_index", where)), span2, where)]
            examples.append(dict(base, text_a=text, text_b=f"{span2} means {span1}", spans=spans))
    if not examples:
        raise BortError(f"{path}: no examples found")
    return examples


def superglue_dir(task):
    return default_data_dir(SUPERGLUE_DIRS[task])



