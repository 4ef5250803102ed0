"""experiments/hostile_sweep.py's classification of an outcome (the cases themselves run in the sweep)."""
import os

from experiments.hostile_cases import Case
from experiments.hostile_sweep import run_case, table_rows


def _case(code, name="case", absent=(), lines=None, pending=None):
    return Case("c", name, ["-c", code], tuple(absent), (), False, None, lines, pending)


def test_outcomes(tmp_path):
    out = tmp_path / "three_lines.txt"
    cases = {
        "one-line error": "import sys; sys.stderr.write('error: bad\\n'); sys.exit(2)",
        "error not last": "import sys; sys.stderr.write('error: bad\\nstart using engine\\n'); sys.exit(2)",
        "crash": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
        "traceback": "raise ValueError('x')",
        "silently accepted": "pass",
    }
    for expected, code in cases.items():
        assert run_case(_case(code), timeout=60)["outcome"] == expected, expected
    write = f"open({str(out)!r}, 'w').write('a\\nb\\nc\\n')"
    assert run_case(_case(write, lines={str(out): 3}), 60)["outcome"] == "handled"
    assert run_case(_case(write, lines={str(out): 4}), 60)["outcome"] == "wrong output"
    left = f"import sys; open({str(out)!r}, 'w'); sys.stderr.write('error: bad\\n'); sys.exit(2)"
    assert run_case(_case(left, absent=[str(out)]), 60)["outcome"] == "left output"
    os.remove(out)


def test_pending_cases_are_counted_apart():
    results = [{"class": "c", "outcome": "one-line error"}, {"class": "c", "outcome": "handled"},
               {"class": "c", "outcome": "silently accepted", "pending": "#24 item 2"}]
    rows = dict(table_rows(results))
    total = rows["total (without dataset readers and pending)"]
    assert (total["inputs"], total["one-line error"], total["handled"], total["silently accepted"]) == (2, 1, 1, 0)
    assert rows["fixed by other changes of #24 (pass once merged)"]["silently accepted"] == 1
