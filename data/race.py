"""Reader for RACE (`<root>/train|dev|test/middle|high/*.txt`, one JSON object per file).

Each file holds {"id", "article", "questions": [...], "options": [[4 options], ...], "answers": ["A", ...]}.
`read_race(level, segment, root)` returns one example per question: `idx` ("<file id>-<question number>"),
`text_a` (the article), `question`, `choices` (4 options), `label` (0-3, None when the file has no answers),
`where` ("file").
"""
import json
import os

from bort.errors import BortError

from bort.io import read_lines

from .glue import default_data_dir

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
            path = os.path.join(folder, name)
            lines = read_lines(path)
            text = "\n".join(line for _, line in lines)
            if not text.strip():
                raise BortError(f"{path}: empty file; expected a RACE JSON object")
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise BortError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
            for key in ("article", "questions", "options"):
                if key not in record:
                    raise BortError(f"{path}:1: missing field {key!r}")
            answers = record.get("answers")
            file_id = record.get("id", name)
            for q, (question, options) in enumerate(zip(record["questions"], record["options"])):
                if len(options) != 4:
                    raise BortError(f"{path}:1: question {q} has {len(options)} options; expected 4")
                label = None
                if answers:
                    if q >= len(answers) or answers[q] not in LETTERS:
                        raise BortError(f"{path}:1: answer {q} must be one of A, B, C, D")
                    label = LETTERS.index(answers[q])
                examples.append({"idx": f"{file_id}-{q}", "file_id": file_id, "text_a": record["article"],
                                 "question": question, "choices": list(options), "label": label, "where": path})
    return examples
