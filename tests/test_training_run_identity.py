"""Which run a checkpoint directory belongs to (issue 12, section 1): a fresh run does not mix with another run's
checkpoints, a rewritten step is incomplete until rewritten whole, mixed files are refused by checksum, a resume
compares the settings, leftover temporary files are removed, metrics are not logged twice after a resume."""
import dataclasses
import json
import os
import shutil

import pytest

import bort  # noqa: F401
import bort.pretrain.state as S
from bort.errors import BortError
from bort.pretrain.loop import pretrain
from bort.pretrain.state import complete_checkpoints
from helpers import tiny_config
from pretrain_faults import killed_after

pytestmark = pytest.mark.slow
# `shards` (conftest.py): two shards of the sample text, dupe factor 2, 32 tokens, seed 12345.


def _config(shards, ckpt, **changes):
    return tiny_config(shards, ckpt, **dict(dict(num_steps=6, ckpt_interval=2, log_interval=1), **changes))


def test_fresh_run_refuses_another_runs_checkpoints(shards, tmp_path):
    ckpt = tmp_path / "ck"
    pretrain(_config(shards, ckpt, seed=1, num_steps=2))
    with pytest.raises(BortError, match="holds complete checkpoints of another run") as err:
        pretrain(_config(shards, ckpt, seed=2, num_steps=2))
    assert "\n" not in str(err.value)
    first = json.load(open(ckpt / "step_0000002.state.json"))
    result = pretrain(_config(shards, ckpt, seed=2, num_steps=4, overwrite_ckpt_dir=True))
    assert result["step"] == 4 and complete_checkpoints(str(ckpt)) == [2, 4]
    second = json.load(open(ckpt / "step_0000002.state.json"))
    assert second["seed"] == 2 and second["run_id"] != first["run_id"]
    steps = [json.loads(line)["step"] for line in open(ckpt / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]  # the overwritten run's records are gone


def test_resume_compares_settings(shards, tmp_path):
    ckpt = tmp_path / "ck"
    with killed_after(2):
        pretrain(_config(shards, ckpt))
    with pytest.raises(BortError, match=r"other settings \(--lr 0.001 there, 0.002 now\)"):
        pretrain(_config(shards, ckpt, start_step="latest", lr=2e-3))
    assert pretrain(_config(shards, ckpt, start_step="latest"))["step"] == 6


def test_rewritten_step_is_incomplete_until_rewritten_whole(shards, tmp_path, monkeypatch):
    """Resuming from step 2 rewrites step 4: a crash after its new .params left the old .state.json marking the
    step complete (new weights, old optimizer state), and resume accepted it."""
    ckpt = tmp_path / "ck"
    with killed_after(4):
        pretrain(_config(shards, ckpt))
    assert complete_checkpoints(str(ckpt)) == [2, 4]
    real = S.save_parameters

    def crash_after_params(model, path, config=None):
        real(model, path, config)
        if "step_0000004" in str(path):
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(S, "save_parameters", crash_after_params)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(shards, ckpt, start_step="2"))
    monkeypatch.setattr(S, "save_parameters", real)
    assert complete_checkpoints(str(ckpt)) == [2]
    assert pretrain(_config(shards, ckpt, start_step="latest"))["step"] == 6


def test_mixed_checkpoint_files_are_refused(shards, tmp_path):
    ckpt = tmp_path / "ck"
    with killed_after(4):
        pretrain(_config(shards, ckpt))
    shutil.copy(ckpt / "step_0000002.params", ckpt / "step_0000004.params")
    with pytest.raises(BortError, match=r"step_0000004.params: does not match the checksum in step_0000004.state"):
        pretrain(_config(shards, ckpt, start_step="latest"))


def test_leftover_temporary_files_are_removed_and_metrics_not_duplicated(shards, tmp_path):
    ckpt = tmp_path / "ck"
    with killed_after(5):
        pretrain(_config(shards, ckpt))  # checkpoint at 4, metrics up to step 5
    leftovers = [ckpt / ".step_0000006.params.x1y2.tmp", ckpt / ".step_0000006.states.abcd.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    with open(ckpt / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "st')  # a record cut by the kill
    pretrain(_config(shards, ckpt, start_step="latest"))
    assert not any(path.exists() for path in leftovers)
    records = [json.loads(line) for line in open(ckpt / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert sorted(os.listdir(ckpt)) == sorted(
        ["metrics.jsonl"] + [f"step_{s:07d}{ext}" for s in (2, 4, 6)
                             for ext in (".params", ".json", ".states", ".state.json")])


def test_state_json_checksums_must_be_well_formed(shards, tmp_path):
    ckpt = tmp_path / "ck"
    pretrain(_config(shards, ckpt, num_steps=2))
    path = ckpt / "step_0000002.state.json"
    state = json.load(open(path))
    path.write_text(json.dumps(dict(state, checksums=["not", "a", "map"])))
    with pytest.raises(BortError, match="'checksums' must map file names"):
        pretrain(dataclasses.replace(_config(shards, ckpt, num_steps=4), start_step="latest"))
