"""The hostile-input sweep of the task readers (experiments/sweep_reader_inputs.py): every malformed input a one-line
error, no traceback, nothing silently accepted."""
import json
import subprocess
import sys


def test_sweep_has_no_traceback_and_no_silent_acceptance(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, "experiments/sweep_reader_inputs.py", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["inputs"] >= 25
    assert result["totals"]["traceback"] == 0 and result["totals"]["silently accepted"] == 0
    assert result["totals"]["one-line error"] == result["inputs"] - result["totals"]["valid, accepted"]
    assert all("\n" not in row["message"] for row in result["rows"])
