"""Agora the algorithm: pruning, the dev split, task files, generating functions, the trained-model check, and the
driver end to end on fixtures (2 rounds, pruning, a replay, resume after an interrupted round; in this process,
trials too: scripts/agora.py --in_process)."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import bort  # noqa: F401
import mxnet as mx
import numpy as np
import pytest

import finetune_bort
import scripts.agora as agora_cli
from bort.agora import generators as augment
from bort.agora.grid import inference_command
from bort.paths import FINETUNE_CLI
from bort.agora.data_files import raw_label, split_dev, write_examples
from bort.agora.labelers import CheckpointLabeler
from bort.agora.pruning import prune
from bort.errors import BortError, run_cli
from bort.finetune.checkpoints import build_task_model, save_task_checkpoint
from bort.weights.checkpoint import save_parameters
from bort.model import build_model, get_config
from bort.finetune.tasks import get_task
from bort.text.tokenizer import load_tokenizer

VOCAB = ["--vocab_json", "test_data/vocab/vocab.json", "--merges", "test_data/vocab/merges.txt"]
STUDENT = ["--pretrained_parameters", "none", "--model_config", "bort_tiny", "--max_len", "32", "--epochs", "2",
           "--ramp_up_epochs", "2", "--batch_size", "8"] + VOCAB


def tokenizer():
    return load_tokenizer("test_data/vocab/vocab.json", "test_data/vocab/merges.txt")


# ---- Θ ----------------------------------------------------------------------------------------------------
def theta(scores):
    return [(f"lr{lr}_seed{seed}", {"lr": lr, "seed": seed}, scores[i])
            for i, (lr, seed) in enumerate([(lr, seed) for lr in (1, 2) for seed in (0, 1)])]


def test_prune_keeps_the_best_of_each_longest_shared_prefix():
    kept = prune(theta([0.5, 0.7, 0.9, 0.6]))  # lr1: seed1 wins; lr2: seed0 wins
    assert [name for name, _, _ in kept] == ["lr2_seed0", "lr1_seed1"]
    kept = prune(kept)  # no shared prefix left: the root (empty) prefix groups both, the best stays
    assert [name for name, _, _ in kept] == ["lr2_seed0"]
    assert prune(kept) == []


def test_prune_ranks_failed_trials_last_and_always_removes_one():
    kept = prune(theta([None, 0.7, 0.9, None]))
    assert [name for name, _, _ in kept] == ["lr2_seed0", "lr1_seed1"]
    same = [("a", {"lr": 1}, 0.2), ("b", {"lr": 2}, 0.4), ("c", {"lr": 3}, 0.3)]
    assert [n for n, _, _ in prune(same)] == ["b"]


# ---- the dev split and task files -------------------------------------------------------------------------
def test_split_dev_is_seeded_stratified_and_disjoint():
    task = get_task("SST-2")
    dev = {"dev": task.read("dev", "test_data/glue/SST-2")}
    first = split_dev(task, dev, 0.5, seed=3)
    again = split_dev(task, dev, 0.5, seed=3)
    other = split_dev(task, dev, 0.5, seed=4)
    e, h = first["dev"]
    assert [x["where"] for x in e] == [x["where"] for x in again["dev"][0]]
    assert [x["where"] for x in e] != [x["where"] for x in other["dev"][0]]
    assert sorted(x["where"] for x in e + h) == sorted(x["where"] for x in dev["dev"])
    for label in ("0", "1"):
        total = sum(x["label"] == label for x in dev["dev"])
        assert sum(x["label"] == label for x in h) == round(total * 0.5)
    with pytest.raises(BortError, match="heldout_fraction"):
        split_dev(task, dev, 1.0, seed=0)


@pytest.mark.parametrize("name, folder", [("SST-2", "glue/SST-2"), ("CoLA", "glue/CoLA"), ("RTE", "glue/RTE"),
                                          ("MNLI", "glue/MNLI"), ("MRPC", "glue/MRPC"), ("BoolQ", "superglue/BoolQ"),
                                          ("CB", "superglue/CB"), ("COPA", "superglue/COPA")])
def test_written_task_files_read_back(tmp_path, name, folder):
    task = get_task(name)
    examples = task.read("train", f"test_data/{folder}")
    write_examples(task, "train", examples, tmp_path)
    back = task.read("train", str(tmp_path))
    fields = ["text_a", "text_b"] if name != "COPA" else ["premise", "choices", "question"]
    assert [[x.get(f) for f in fields] for x in back] == [[x.get(f) for f in fields] for x in examples]
    assert task.gold(back) == task.gold(examples)


def test_unsupported_tasks_are_refused():
    from bort.agora.data_files import check_supported

    for name in ("STS-B", "WiC", "MultiRC", "ReCoRD", "RACE"):
        with pytest.raises(BortError, match="not supported"):
            check_supported(get_task(name))


# ---- generating functions ---------------------------------------------------------------------------------
def test_dropout_and_swap_keep_the_words():
    rng = np.random.RandomState(0)
    text = "one two three four five six seven eight nine ten"
    for _ in range(20):
        dropped = augment.token_dropout(text, rng).split()
        assert 8 <= len(dropped) < 10 and all(w in text.split() for w in dropped)
        assert dropped == [w for w in text.split() if w in dropped]  # order kept
        swapped = augment.span_swap(text, rng).split()
        assert sorted(swapped) == sorted(text.split()) and swapped != text.split()


def test_generate_removes_duplicates_and_copies_and_is_seeded():
    task = get_task("RTE")
    source = {"text_a": "a b", "text_b": "c d", "label": "entailment", "where": "x:2", "idx": 0}
    functions = augment.make_generators(["swap"])
    # "a b" / "c d" swapped gives "b a" or "d c": at most 2 distinct variants whatever is asked
    new = augment.generate(task, [source], functions, 6, np.random.RandomState(0))
    keys = [augment.example_key(task, x) for x in new]
    assert len(keys) == len(set(keys)) <= 2 and ("a b", "c d") not in keys
    assert all(x["label"] is None and x["source"] == "x:2" for x in new)
    seen = {("b a", "c d")}
    new = augment.generate(task, [source], functions, 6, np.random.RandomState(0), seen=seen)
    assert ("b a", "c d") not in [augment.example_key(task, x) for x in new]
    many = {"text_a": "w1 w2 w3 w4 w5 w6 w7 w8", "label": "1", "where": "y:3", "idx": 1}
    sst = get_task("SST-2")
    both = augment.make_generators(["dropout", "swap"])
    first = augment.generate(sst, [many], both, 4, np.random.RandomState(7))
    assert first == augment.generate(sst, [many], both, 4, np.random.RandomState(7)) and len(first) == 4
    with pytest.raises(BortError, match="mlm_parameters"):
        augment.make_generators(["mlm"])


def test_mlm_replacement_uses_the_mlm_heads_choice():
    tok = tokenizer()
    model = build_model(get_config("bort_tiny", vocab_size=tok.vocab_size))
    model(mx.nd.array([[0, 5, 2]]), mx.nd.array([3]), mx.nd.array([[1]]))  # finish deferred shapes
    favourite = tok.encode(" wonderful")[0]
    bias = model.decoder[-1].bias
    bias.set_data(mx.nd.where(mx.nd.arange(bias.shape[0]) == favourite, mx.nd.full(bias.shape, 100.0),
                              mx.nd.zeros(bias.shape)))
    replacer = augment.MlmReplacer(model, tok, low=0.3, high=0.3, top_k=1)
    original = tok.encode("the town was terrible and sad .")
    assert favourite not in original
    new = replacer.replace_ids(original, np.random.RandomState(0))
    changed = [i for i, (a, b) in enumerate(zip(original, new)) if a != b]
    assert len(new) == len(original) and len(changed) == round(len(original) * 0.3)
    assert all(new[i] == favourite for i in changed)
    assert replacer("the town was terrible and sad .", np.random.RandomState(0)) == tok.decode(new)
    # the original token is never chosen: with the favourite already there, the runner-up comes in
    again = replacer.replace_ids([favourite] * 4, np.random.RandomState(0))
    assert again.count(favourite) == 3


# ---- the trained-model check ------------------------------------------------------------------------------
def test_a_weak_trained_model_is_refused_in_one_line(tmp_path):
    task = get_task("SST-2")
    tok = tokenizer()
    model = build_task_model(task, get_config("bort_tiny", vocab_size=tok.vocab_size))
    model.head.out.bias.set_data(mx.nd.array([5.0, -5.0]))  # always "0": half the fixture dev set
    weak = tmp_path / "weak" / "model_bort_SST-2.params"
    save_task_checkpoint(model, str(weak), task)
    labeler = CheckpointLabeler(task, str(weak), tok, 32)
    assert labeler.predict(task.read("dev", "test_data/glue/SST-2")[:3]) == [0, 0, 0]
    proc = subprocess.run([sys.executable, "scripts/agora.py", "--algorithm", "agora", "--task_name", "SST-2",
                           "--output_dir", str(tmp_path / "out"), "--teacher_parameters", str(weak), "--",
                           "--data_dir", "test_data/glue/SST-2"] + STUDENT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {weak}: the trained model's official score on E is 0.5")
    assert "2/3" in lines[0] and not (tmp_path / "out" / "round_01").exists()


def test_a_labeler_or_mlm_model_of_another_vocabulary_is_refused(tmp_path):
    """A Bort labeler (or MLM head) with a WordPiece student's tokenizer: the ids would silently index the wrong
    embedding rows (MXNet clips, never fails); both are refused in one line."""
    task = get_task("SST-2")
    tok = tokenizer()
    bigger = tmp_path / "bigger" / "model_bort_SST-2.params"
    save_task_checkpoint(build_task_model(task, get_config("bort_tiny", vocab_size=tok.vocab_size + 5)), str(bigger),
                         task)
    with pytest.raises(BortError, match=f"{bigger}: the checkpoint has {tok.vocab_size + 5} word embeddings but the "
                                        f"tokenizer has {tok.vocab_size} tokens"):
        CheckpointLabeler(task, str(bigger), tok, 32)
    with pytest.raises(BortError, match=f"the MLM model has {tok.vocab_size + 5} word embeddings"):
        augment.MlmReplacer(build_model(get_config("bort_tiny", vocab_size=tok.vocab_size + 5)), tok)


def test_inference_command_keeps_the_flags_after_the_separator():
    command = inference_command("RTE", "/ck/model.params", "out/sub",
                                ["--data_dir", "d i r", "--output_dir", "x", "--vocab_json=v.json", "--epochs", "3",
                                 "--only_inference"])
    assert command.endswith("--task_name RTE --only_inference --model_parameters /ck/model.params --output_dir "
                            "out/sub --data_dir 'd i r' --vocab_json=v.json --epochs 3")


# ---- the driver end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    run_cli(finetune_bort.main)(["--task_name", "SST-2", "--data_dir", "test_data/glue/SST-2", "--output_dir",
                                 str(out), "--epochs", "3", "--ramp_up_epochs", "3", "--batch_size", "16", "--lr",
                                 "1e-3", "--seed", "2", "--pretrained_parameters", "none", "--model_config",
                                 "bort_tiny", "--max_len", "32", "--gpu", "999"] + VOCAB)
    return out / "model_bort_SST-2.params"


def agora(capsys, out, data, teacher, grid, *extra):
    """scripts/agora.py --algorithm agora run in this process, its trials too (--in_process); its exit status and
    output as a process's (tests/test_agora.py runs the CLI and its trials as processes)."""
    argv = ["--algorithm", "agora", "--in_process", "--task_name", "SST-2", "--output_dir", str(out), "--grid",
            str(grid), "--teacher_parameters", str(teacher), "--max_rounds", "2", "--variants", "2", "--seed", "1",
            *extra, "--", "--data_dir", str(data)] + STUDENT
    try:
        code = run_cli(agora_cli.main)(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.slow
def test_agora_two_rounds_with_pruning_replay_and_resume(tmp_path, teacher, capsys):
    data = tmp_path / "scarce"
    data.mkdir()
    lines = open("test_data/glue/SST-2/train.tsv").read().splitlines(True)
    (data / "train.tsv").write_text("".join(lines[:25]))  # scarce: 24 training rows
    shutil.copy("test_data/glue/SST-2/dev.tsv", data / "dev.tsv")
    shutil.copy("test_data/glue/SST-2/test.tsv", data / "test.tsv")
    grid = tmp_path / "theta.json"
    grid.write_text(json.dumps({"lr": [1e-3, 1e-4], "seed": [0, 1]}))
    mlm = tmp_path / "mlm" / "bort_mlm.params"  # an (untrained) model with its MLM head wires the mlm generator
    config = get_config("bort_tiny", vocab_size=tokenizer().vocab_size)
    model = build_model(config)
    model(mx.nd.array([[0, 5, 2]]), mx.nd.array([3]), mx.nd.array([[1]]))  # finish deferred shapes
    save_parameters(model, str(mlm), config=config)
    out = tmp_path / "agora"
    # a margin of 1 makes round 2 fall short of round 1 whatever it scores: one replay
    flags = ["--replay_margin", "1", "--heldout_fraction", "0.25", "--generators", "dropout,swap,mlm",
             "--mlm_parameters", str(mlm)]
    proc = agora(capsys, out, data, teacher, grid, *flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = json.loads((out / "round_01" / "round.json").read_text())
    second = json.loads((out / "round_02" / "round.json").read_text())
    assert first["runs"] == 4 and len(first["next_theta"]) == 2 and second["theta"] == first["next_theta"]
    assert second["runs"] == 2 and second["next_theta"] == []
    assert (out / "round_02.replay1").is_dir() and "replaying it" in proc.stdout
    # D grows by the generated examples (written as an SST-2 file), labelled by the trained model
    generated = [json.loads(x) for x in (out / "round_01" / "generated.jsonl").read_text().splitlines()]
    assert first["generated"] == len(generated) > 0 and first["generator_replay"] == 1
    assert {x["generator"] for x in generated} == {"dropout", "swap", "mlm"}
    train2 = get_task("SST-2").read("train", str(out / "round_02" / "data"))
    assert len(train2) == 24 + len(generated)
    assert [x["text_a"] for x in train2[24:]] == [x["text_a"] for x in generated]
    labels = CheckpointLabeler(get_task("SST-2"), str(teacher), tokenizer(), 32).predict(generated)
    assert [x["label"] for x in generated] == [raw_label(get_task("SST-2"), k) for k in labels]
    # the runs select on E_sel (their dev set); mistakes are the best model's wrong predictions on E_gen
    best_dir = out / "round_01" / first["round_best_trial"]
    assert json.loads((best_dir / "status.json").read_text())["in_process"]
    preds = [json.loads(x) for x in (best_dir / "dev_predictions.jsonl").read_text().splitlines()]
    split = json.loads((out / "split.json").read_text())["segments"]["dev"]
    assert len(preds) == len(split["E_selection"]) == 30 - len(split["E_generation"])  # E: 40 dev rows less 10
    assert 12 <= len(preds) <= 18  # about half of E selects (stratified by label)
    assert sum(p["prediction"] == p["label"] for p in preds) / len(preds) == pytest.approx(first["round_best_score"])
    dev = {x["where"]: x for x in get_task("SST-2").read("dev", str(data))}
    generation = [dev[w] for w in split["E_generation"]]
    checkpoint = json.loads((best_dir / "result.json").read_text())["checkpoint"]
    predicted = CheckpointLabeler(get_task("SST-2"), checkpoint, tokenizer(), 32).predict(generation)
    assert sorted(["dev", i] for i, (p, x) in enumerate(zip(predicted, generation)) if str(p) != x["label"]) == \
        sorted(first["mistake_rows"])
    result = json.loads((out / "result.json").read_text())
    assert result["runs"] == 4 + 2 + 2 and result["heldout_score"] is not None
    assert (out / "rounds.md").read_text().count("\n| ") == 2 and "held-out score" in (out / "rounds.md").read_text()
    # the printed command runs as printed (as a shell parses it, here in this process)
    command = [x for x in proc.stdout.splitlines() if x.startswith("predict: ")][-1][len("predict: "):]
    argv = shlex.split(command)
    assert argv[:2] == [sys.executable, FINETUNE_CLI]
    run_cli(finetune_bort.main)(argv[2:])
    assert (out / "submission" / "SST-2.tsv").is_file()
    # an interrupted round 2: no round.json, one trial without its result; the rerun redoes only that trial
    os.remove(out / "round_02" / "round.json")
    os.remove(out / "round_02" / second["theta"][1] / "result.json")
    stamp = os.path.getmtime(out / "round_01" / "round.json")
    proc = agora(capsys, out, data, teacher, grid, *flags)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming after round 1" in proc.stdout and "2 trials, 1 already recorded, 1 to run" in proc.stdout
    assert "replaying" not in proc.stdout and os.path.getmtime(out / "round_01" / "round.json") == stamp
    again = json.loads((out / "round_02" / "round.json").read_text())
    assert again["theta"] == second["theta"] and again["train_size"] == second["train_size"]
    assert json.loads((out / "result.json").read_text())["runs"] == 8
