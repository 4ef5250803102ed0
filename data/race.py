"""Reader for RACE (`<root>/train|dev|test/middle|high/*.txt`, one JSON object per file).

Each file holds {"id", "article", "questions": [...], "options": [[4 options], ...], "answers": ["A", ...]}.
`read_race(level, segment, root)` returns one example per question: `idx` ("<file id>-<question number>"),
`text_a` (the article), `question`, `choices` (4 options), `label` (0-3, None when the file has no answers),
`level` (middle or high), `file_id`, `question_number` and `where` (the file). Files hold one JSON object, usually
without a final newline; question, option-list and answer counts must agree.
"""
import json
import os

from bort.errors import BortError

from bort.io import read_text

from data.glue import default_data_dir

LEVELS = {"RACE-M": ("middle",), "RACE-H": ("high",), "RACE": ("middle", "high")}
LETTERS = "ABCD"
RACE_HELP = "RACE is available from www.cs.cmu.edu/~glai1/data/race/; unpack it so that train/, dev/, test/ are there"


def race_dir():
    return default_data_dir("race")


def read_race(task, segment, root):
    if task not in LEVELS:
        raise BortError(f"unknown RACE task {task!r}; expected one of {sorted(LEVELS)}")
    examples = []
    for level in LEVELS[task]:
        folder = os.path.join(root, segment, level)
        if not os.path.isdir(folder):
            raise BortError(f"{folder}: directory not found; expected RACE's {segment}/{level}/*.txt under {root} "
                            f"({RACE_HELP}; pass --data_dir)")
        names = sorted(n for n in os.listdir(folder) if n.endswith(".txt"))
        if not names:
            raise BortError(f"{folder}: no .txt files; expected RACE's JSON files there")
        for name in names:
            examples += [dict(e, level=level) for e in _read_file(os.path.join(folder, name), name)]
    return examples


def _strings(record, key, path):
    value = record.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BortError(f"{path}: field {key!r} must be a list of strings, found {json.dumps(value)[:60]}")
    return value


def _read_file(path, name):
    """One RACE file: one JSON object (often without a final newline), one example per question."""
    text = read_text(path, "a RACE JSON object")
    if not text.strip():
        raise BortError(f"{path}: empty file; expected a RACE JSON object")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise BortError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise BortError(f"{path}: expected a JSON object with article, questions, options, answers")
    for key in ("article", "questions", "options"):
        if key not in record:
            raise BortError(f"{path}: missing field {key!r}")
    if not isinstance(record["article"], str):
        raise BortError(f"{path}: field 'article' must be a string")
    questions = _strings(record, "questions", path)
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, list) and all(isinstance(x, str) for x in o)
                                                for o in options):
        raise BortError(f"{path}: field 'options' must be a list of lists of strings")
    answers = _strings(record, "answers", path) if record.get("answers") is not None else None
    if len(options) != len(questions) or (answers is not None and len(answers) != len(questions)):
        raise BortError(f"{path}: {len(questions)} questions, {len(options)} option lists and "
                        f"{'no' if answers is None else len(answers)} answers; expected one option list and one "
                        f"answer per question")
    file_id = record.get("id", name)
    examples = []
    for q, (question, choices) in enumerate(zip(questions, options)):
        if len(choices) != 4:
            raise BortError(f"{path}: question {q} has {len(choices)} options; expected 4")
        label = None
        if answers:
            if answers[q] not in tuple(LETTERS):
                raise BortError(f"{path}: answer {q} must be one of A, B, C, D, found {answers[q]!r}")
            label = LETTERS.index(answers[q])
        examples.append({"idx": f"{file_id}-{q}", "file_id": file_id, "text_a": record["article"],
                         "question": question, "choices": list(choices), "label": label, "where": path,
                         "question_number": q})
    return examples
