"""Subarchitecture extraction (bort.pretrain.extraction, scripts/extract_subarchitecture.py): W, the rejection
rule, ε-interval selection and the Pareto front on hand-made numbers; the search space files and the analytic
objectives against the model; a 2-candidate search end to end on the sample text, interrupted and resumed."""
import dataclasses
import json
import os
import shutil

import pytest

import bort  # noqa: F401
from bort.errors import BortError
from bort.model import get_config, parameter_summary
from bort.pretrain.extraction import evaluate, fptas
from bort.pretrain.extraction.evaluate import parse_thetas
from bort.pretrain.extraction.objectives import best_by_w, pareto_front, rejection_reason, w_coefficient
from bort.pretrain.extraction.runner import SearchSettings, run_search
from bort.pretrain.extraction.space import (Architecture, encoder_parameters, load_space, operation_counts,
                                            parse_architecture, total_parameters)
from helpers import make_shards
from scripts.extract_subarchitecture import main as extract_main


# ------------------------------------------------------------------------------------------- hand-made numbers
def test_w_coefficient_of_hand_made_candidates():
    # p(T) = 100, i(T) = 10: half the size, half the time, error 0.5 -> 0.5 * 0.5 / 0.5
    assert w_coefficient(50, 5, 0.5, 100, 10) == pytest.approx(0.5)
    assert w_coefficient(90, 1, 2.0, 100, 10) == pytest.approx(0.1 * 0.9 / 2.0)
    # lower error, same cost: higher W
    assert w_coefficient(50, 5, 0.25, 100, 10) > w_coefficient(50, 5, 0.5, 100, 10)
    with pytest.raises(BortError, match="positive and finite"):
        w_coefficient(50, 5, 0.0, 100, 10)


def test_rejection_rule_takes_no_absolute_values():
    assert rejection_reason(50, 5, 100, 10) is None
    assert w_coefficient(100, 5, 0.5, 100, 10) is None  # p = p(T)
    assert "i 10" in rejection_reason(50, 10, 100, 10)
    # both larger than T: the two negative factors would multiply to a positive W (0.2 * 0.2 / 0.5); rejected
    assert w_coefficient(120, 12, 0.5, 100, 10) is None
    assert "p 120" in rejection_reason(120, 12, 100, 10) and "i 12" in rejection_reason(120, 12, 100, 10)


def test_pareto_front_and_best():
    points = [(1, 5, 0.9), (2, 4, 0.8), (2, 5, 0.9), (3, 1, 0.5), (3, 1, 0.6)]
    assert pareto_front(points) == [0, 1, 3]  # (2,5,.9) is dominated by (2,4,.8); (3,1,.6) by (3,1,.5)
    rows = [{"W": None}, {"W": 0.3, "name": "a"}, {"W": 0.7, "name": "b"}, {"W": 0.7, "name": "c"}]
    assert best_by_w(rows)["name"] == "b" and best_by_w([{"W": None}]) is None


def test_eps_interval_pivots():
    ordered = list(range(10))  # stands for ten candidates already sorted by size
    assert fptas.intervals(ordered, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert fptas.pivots(ordered, 1) == ordered  # exhaustive
    assert fptas.pivots(ordered, 4) == [0, 4, 8]
    assert fptas.pivots(ordered, 4, "middle") == [1, 5, 8]
    assert fptas.pivots(ordered, 4, "last") == [3, 7, 9]
    assert fptas.pivots(ordered, 20) == [0]
    assert fptas.interval_containing(ordered, 4, 6) == [4, 5, 6, 7]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(BortError, match="--eps"):
            fptas.pivots(ordered, bad)
    with pytest.raises(BortError, match="--pivot"):
        fptas.pivots(ordered, 2, "random")
    archs = [parse_architecture(n) for n in ("D2-A4-H64-I64", "D1-A2-H64-I64", "D1-A4-H64-I64")]
    by_size = fptas.sort_by_size(archs, encoder_parameters, lambda a: operation_counts(a, 1, 16)["total"])
    assert [a.name for a in by_size] == ["D1-A2-H64-I64", "D1-A4-H64-I64", "D2-A4-H64-I64"]


# ------------------------------------------------------------------------------------- spaces and analytic sizes
@pytest.mark.parametrize("name", ["bort_4_8_768_1024", "roberta_24_1024_16", "bort_tiny"])
def test_analytic_parameters_match_the_model(name):
    config = get_config(name)
    arch = Architecture(config.num_layers, config.num_heads, config.units, config.hidden_size)
    parts = parameter_summary(config)
    assert encoder_parameters(arch) == parts["encoder"]
    assert total_parameters(arch, config.vocab_size, config.max_length) == sum(parts.values())


def test_bort_is_in_the_shipped_paper_space_and_the_cpu_grid_is_large_enough():
    paper = load_space("bort_paper")
    names = {a.name for a in paper.candidates()}
    assert "D4-A8-H1024-I768" in names and "D4-A12-H1024-I768" not in names  # 1024 is not divisible by 12
    assert paper.maximum_point.name == "D24-A16-H1024-I4096"
    bort_arch = parse_architecture("D4-A8-H1024-I768")
    # the README's 56 M vs 75.1 M: the encoder alone is far below the total with RoBERTa's embeddings
    assert encoder_parameters(bort_arch) < 0.5 * total_parameters(bort_arch, 50265, 512)
    assert len(load_space("cpu_scaled").candidates()) >= 40


def test_operation_counts_follow_the_matrix_multiplies():
    arch = parse_architecture("D4-A8-H1024-I768")
    counts = operation_counts(arch, 1, 128)
    matmul_mults = 4 * 128 * (4 * 1024 ** 2 + 2 * 1024 * 768 + 2 * 128 * 1024)
    assert matmul_mults < counts["multiplications"] < 1.05 * matmul_mults
    assert counts["total"] == counts["additions"] + counts["multiplications"] + counts["other"]
    assert operation_counts(parse_architecture("D8-A8-H1024-I768"), 1, 128)["total"] == 2 * counts["total"]


def test_bad_space_and_thetas_are_one_line_errors(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"dimensions": {"num_layers": [2], "num_heads": [3], "units": [64],
                                               "hidden_size": [64]},
                                "maximum_point": {"num_layers": 4, "num_heads": 4, "units": 64, "hidden_size": 64}}))
    with pytest.raises(BortError, match="no architecture"):  # 64 is not divisible by 3
        load_space(str(path))
    path.write_text(json.dumps({"dimensions": {"num_layers": [0]}, "maximum_point": {}}))
    with pytest.raises(BortError, match="exactly"):
        load_space(str(path))
    with pytest.raises(BortError, match="unknown keys"):
        parse_thetas('[{"learning_rate": 1e-3}]')
    with pytest.raises(BortError, match="batch_size must be int"):
        parse_thetas('[{"batch_size": 2.5}]')
    assert parse_thetas('[{"lr": 1, "batch_size": 8}]') == [{"lr": 1.0, "batch_size": 8}]


# ------------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def search_inputs(tmp_path_factory, shards, vocab_size):
    """Copies of the session's training shards, held-out shards of the sample text, a random tiny teacher, and a
    2-candidate space whose maximum point is the teacher's shape."""
    import mxnet as mx  # noqa: PLC0415

    from bort.model import build_model  # noqa: PLC0415
    from bort.weights.checkpoint import finish_deferred_init, save_parameters  # noqa: PLC0415

    root = tmp_path_factory.mktemp("extraction")
    train = shutil.copytree(shards, root / "train")
    heldout = make_shards(root / "heldout", num_outputs=1, dupe_factor=1, seed=4321)
    mx.random.seed(3)
    config = get_config("roberta_tiny", vocab_size=vocab_size, dropout=0.0)
    teacher = root / "teacher.params"
    save_parameters(finish_deferred_init(build_model(config)), str(teacher), config)
    space = root / "space.json"
    space.write_text(json.dumps({"dimensions": {"num_layers": [1], "num_heads": [2], "units": [16, 32],
                                                "hidden_size": [32]},
                                 "maximum_point": {"num_layers": 2, "num_heads": 4, "units": 64, "hidden_size": 256}}))
    return {"train": str(train), "heldout": heldout, "teacher": str(teacher), "space": str(space), "root": root}


def flags(inputs, out, *extra):
    return ["--space", inputs["space"], "--train", inputs["train"], "--heldout", inputs["heldout"],
            "--output_dir", str(out), "--steps", "3", "--thetas", '[{"lr": 1e-3}, {"lr": 3e-3}]',
            "--base_model", "bort_tiny", "--batch_size", "8", "--batch_size_eval", "16", "--timing_seq_len", "16",
            "--timing_repeats", "2", "--timing_rounds", "1", "--speed", "operations", "--cpu_only", "--no_progress",
            *extra]


def test_search_end_to_end_interrupted_and_resumed(search_inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = evaluate.estimate_error
    calls = []

    def interrupted_after_one(arch, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the machine goes down during the second candidate
        calls.append(arch.name)
        return real(arch, *args, **kwargs)

    # The teacher as a checkpoint: the search caches it beside the shards once.
    monkeypatch.setattr(evaluate, "estimate_error", interrupted_after_one)
    with pytest.raises(KeyboardInterrupt):
        extract_main(flags(search_inputs, out, "--teacher_ckpt_dir", search_inputs["teacher"]))
    assert sorted(os.listdir(out / "candidates")) == [f"{calls[0]}.json"]
    assert os.path.isfile(os.path.join(search_inputs["heldout"], "part-000.npz.topk"))

    resumed = []
    monkeypatch.setattr(evaluate, "estimate_error",
                        lambda arch, *a, **k: resumed.append(arch.name) or real(arch, *a, **k))
    timing_before = os.path.getmtime(out / "timing.json")
    extract_main(flags(search_inputs, out, "--teacher_cache", "beside"))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed == [n for n in ("D1-A2-H16-I32", "D1-A2-H32-I32") if n != calls[0]]  # only the unfinished one
    assert os.path.getmtime(out / "timing.json") == timing_before  # timings reused
    summary = json.loads((out / "results.json").read_text())
    assert printed["evaluated"] == summary["evaluated"] == 2 and printed["trained_this_run"] == 1

    t = summary["maximum_point"]
    for row in summary["rows"]:
        stored = json.loads((out / "candidates" / f"{row['name']}.json").read_text())
        assert len(stored["per_theta"]) == 2 and row["error"] == min(x["error"] for x in stored["per_theta"])
        assert 0 < row["error"] < 20 and row["cpu_ms"] > 0 and not row["rejected"]
        size = (t["params_encoder"] - row["params_encoder"]) / t["params_encoder"]
        assert row["W"] == row["W_operations"] == pytest.approx(
            size * (t["operations"] - row["operations"]) / t["operations"] / row["error"])
        if row["cpu_ms"] < t["cpu_ms"]:  # timings of models this small are noisy on a shared machine
            assert row["W_measured"] == pytest.approx(size * (t["cpu_ms"] - row["cpu_ms"]) / t["cpu_ms"] / row["error"])
        else:
            assert row["W_measured"] is None
    best = max(summary["rows"], key=lambda r: r["W"])
    assert summary["chosen"] == best["name"] and best["rank"] == 1
    assert (out / "results.csv").read_text().count("\n") == 3
    assert summary["chosen"] in (out / "results.md").read_text()
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"

    # ε = 2 on the same candidate results: one pivot (the smaller), nothing retrained; --refine adds its interval
    monkeypatch.setattr(evaluate, "estimate_error", lambda *a, **k: pytest.fail("nothing should be retrained"))
    settings = SearchSettings(space=search_inputs["space"], train=search_inputs["train"],
                              heldout=search_inputs["heldout"], out_dir=str(tmp_path / "eps2"),
                              candidate_dir=str(out / "candidates"), teacher_cache="beside", eps=2, steps=3,
                              thetas='[{"lr": 1e-3}, {"lr": 3e-3}]', base_model="bort_tiny", batch_size=8,
                              batch_size_eval=16, speed="operations", timing_seq_len=16, timing_repeats=1,
                              timing_rounds=1, cpu_only=True, progress=False)
    eps = run_search(settings)
    assert eps["evaluated"] == 1 and eps["chosen"] == "D1-A2-H16-I32"
    assert [r["evaluated"] for r in eps["rows"]] == [True, False]
    refined = run_search(dataclasses.replace(settings, refine=True))
    assert refined["evaluated"] == 2 and [r["stage"] for r in refined["rows"]] == [1, 2]

    # other training settings must not silently reuse these results
    with pytest.raises(BortError, match="other training settings"):
        extract_main(flags(search_inputs, out, "--teacher_cache", "beside", "--steps", "4"))
