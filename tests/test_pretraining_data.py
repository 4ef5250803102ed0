"""create_pretraining_data: instances, masking, determinism, summary, bad input (the shard format itself:
test_pretraining_format.py)."""
import glob
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from bort.errors import BortError, run_cli
from bort.text.tokenizer import load_tokenizer
from data.pretraining import create_pretraining_data
from data.pretraining_format import load_shard
from data.pretraining_instances import InstanceOptions
from helpers import MERGES, ROOT, SAMPLE_TEXT, VOCAB_FLAGS, VOCAB_JSON
# Format version 2 with the test vocabulary (1005 ids: uint16) and max_seq_length 64 (positions: uint8).
ARRAYS = {"input_ids": np.uint16, "segment_b_starts": np.uint8, "input_lengths": np.uint8,
          "masked_lm_positions": np.uint8, "masked_lm_ids": np.uint16, "masked_counts": np.uint8,
          "next_sentence_labels": np.uint8, "format_version": np.int32, "vocab_size": np.int32,
          "pad_id": np.int32, "mask_id": np.int32, "bos_id": np.int32, "eos_id": np.int32}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(vocab_json=VOCAB_JSON, merges=MERGES)


def sample_sentences():
    with open(SAMPLE_TEXT, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def write_corpus(path, num_docs, seed=0, sizes=(3, 30)):
    """Documents of shuffled sample sentences, blank lines between them."""
    rng = random.Random(seed)
    sentences = sample_sentences()
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(num_docs):
            out.write("\n".join(rng.choice(sentences) for _ in range(rng.randint(*sizes))) + "\n\n")
    return path


def shards(directory):
    return sorted(glob.glob(os.path.join(directory, "part-*.npz")))


def leftovers(directory):
    """Anything a failed run might have left: shards or temporary files."""
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if name.endswith((".npz", ".tmp")) or name.startswith("."))


def run(tok, inputs, out, **kwargs):
    kwargs.setdefault("progress", False)
    return create_pretraining_data(inputs, str(out), tok, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Instances


def test_shard_arrays_shapes_dtypes_and_wrapping(tok, tmp_path):
    summary = run(tok, SAMPLE_TEXT, tmp_path, options=InstanceOptions(max_seq_length=64))
    [path] = shards(tmp_path)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == set(ARRAYS) | {"max_seq_length"}  # no int32 segment_ids, no offsets
        arrays = {name: npz[name] for name in npz.files}
    for name, dtype in ARRAYS.items():
        assert arrays[name].dtype == dtype, name
    n = len(arrays["next_sentence_labels"])
    assert n == summary["instances"] > 0
    assert arrays["input_lengths"].shape == arrays["masked_counts"].shape == arrays["segment_b_starts"].shape == (n,)
    assert arrays["input_ids"].shape == (arrays["input_lengths"].sum(dtype=np.int64),)
    assert arrays["masked_lm_ids"].shape == arrays["masked_lm_positions"].shape == (arrays["masked_counts"].sum(),)
    assert int(arrays["format_version"]) == 2 and int(arrays["vocab_size"]) == tok.vocab_size
    assert (int(arrays["mask_id"]), int(arrays["bos_id"]), int(arrays["eos_id"])) == (tok.mask_id, tok.bos_id,
                                                                                        tok.eos_id)
    shard = load_shard(path)
    assert len(shard) == n and list(shard.lengths) == list(arrays["input_lengths"])
    assert shard.metadata["format_version"] == 2 and shard.batch.input_ids.dtype == np.int32
    for inst in shard:
        assert inst.input_ids[0] == tok.bos_id and inst.input_ids[-1] == tok.eos_id
        assert 4 <= len(inst.input_ids) <= 64
        assert set(np.unique(inst.segment_ids)) <= {0, 1} and np.all(np.diff(inst.segment_ids) >= 0)
        assert inst.segment_ids[0] == 0
        assert np.all(np.diff(inst.masked_positions) > 0)  # sorted, unique
        assert 1 <= len(inst.masked_positions) <= 80
        specials = {tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.unk_id}
        assert not specials & set(inst.masked_ids.tolist())  # <s>/</s> are never selected


def test_labels_restore_whole_sentences_of_the_input(tok, tmp_path):
    """Without truncation, putting the labels back gives whole `<s> sentence </s>` runs of the input."""
    corpus = write_corpus(tmp_path / "corpus.txt", 60, seed=1)
    run(tok, str(corpus), tmp_path / "out", options=InstanceOptions(max_seq_length=4096, short_seq_prob=0.3))
    encoded = {tuple(tok.encode(s)) for s in sample_sentences()}
    shard = load_shard(shards(tmp_path / "out")[0])
    changed = 0
    for inst in shard:
        original = inst.input_ids.copy()
        original[inst.masked_positions] = inst.masked_ids
        changed += int(np.sum(original != inst.input_ids))
        unmasked = np.ones(len(original), bool)
        unmasked[inst.masked_positions] = False
        assert np.array_equal(original[unmasked], inst.input_ids[unmasked])
        ids = original.tolist()
        bos = [i for i, t in enumerate(ids) if t == tok.bos_id]
        eos = [i for i, t in enumerate(ids) if t == tok.eos_id]
        assert len(bos) == len(eos) and all(b < e for b, e in zip(bos, eos))
        assert all(e + 1 == b for e, b in zip(eos, bos[1:]))  # nothing between sentences
        for b, e in zip(bos, eos):
            assert tuple(ids[b + 1:e]) in encoded
    assert changed > 0.5 * sum(len(i.masked_positions) for i in shard)  # most labels differ from the input


def test_masking_rate_and_80_10_10_split(tok, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 400, seed=2)
    options = InstanceOptions(max_seq_length=128, max_predictions_per_seq=1000)
    run(tok, str(corpus), tmp_path / "out", options=options)
    shard = load_shard(shards(tmp_path / "out")[0])
    special = {tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.unk_id}
    kinds = {"mask": 0, "same": 0, "random": 0}
    replacements = []
    total_masked = total_candidates = 0
    for inst in shard:
        expected = max(1, int(round(len(inst.input_ids) * 0.15)))
        assert len(inst.masked_positions) == expected
        original = inst.input_ids.copy()
        original[inst.masked_positions] = inst.masked_ids
        total_candidates += sum(t not in special for t in original.tolist())
        total_masked += expected
        for pos, label in zip(inst.masked_positions, inst.masked_ids):
            token = inst.input_ids[pos]
            if token == tok.mask_id:
                kinds["mask"] += 1
            elif token == label:
                kinds["same"] += 1
            else:
                kinds["random"] += 1
                replacements.append(int(token))
    m = sum(kinds.values())
    assert m > 10000
    assert 0.13 < total_masked / sum(len(i.input_ids) for i in shard) < 0.17
    for kind, p in (("mask", 0.8), ("same", 0.1), ("random", 0.1)):
        # 5 standard deviations of a binomial proportion (+ 1/V chance of a random token equal to the label)
        assert abs(kinds[kind] / m - p) < 5 * np.sqrt(p * (1 - p) / m) + 0.002, (kind, kinds)
    assert not special & set(replacements)
    assert len(set(replacements)) > 0.5 * (tok.vocab_size - len(special))  # spread over the vocabulary


def test_masked_positions_are_uniform_over_the_instance(tok, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 300, seed=3)
    run(tok, str(corpus), tmp_path / "out", options=InstanceOptions(max_seq_length=128))
    shard = load_shard(shards(tmp_path / "out")[0])
    relative = np.concatenate([inst.masked_positions / len(inst.input_ids) for inst in shard])
    counts, _ = np.histogram(relative, bins=4, range=(0, 1))
    expected = len(relative) / 4
    assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected)), counts


def test_whole_word_mask_masks_every_piece_of_a_word(tok, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 150, seed=4)
    special = {tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_id, tok.unk_id}

    def split_words(directory, whole_word_mask):
        run(tok, str(corpus), directory, options=InstanceOptions(max_seq_length=128,
                                                                  whole_word_mask=whole_word_mask))
        partial = whole = 0
        for inst in load_shard(shards(directory)[0]):
            original = inst.input_ids.copy()
            original[inst.masked_positions] = inst.masked_ids
            masked = set(inst.masked_positions.tolist())
            ids = original.tolist()
            for pos in masked:
                # the word around pos: back to its first piece, forward while pieces continue it
                lo = pos
                while not tok.is_word_start(ids[lo]) and lo > 0 and ids[lo - 1] not in special:
                    lo -= 1
                hi = pos + 1
                while hi < len(ids) and ids[hi] not in special and not tok.is_word_start(ids[hi]):
                    hi += 1
                if hi - lo > 1:
                    whole += all(p in masked for p in range(lo, hi))
                    partial += not all(p in masked for p in range(lo, hi))
        return partial, whole

    partial, whole = split_words(tmp_path / "wwm", True)
    assert partial == 0 and whole > 100
    partial, _ = split_words(tmp_path / "plain", False)
    assert partial > 50  # the check above can fail: subword masking does split words


def test_dupe_factor_repeats_documents_with_fresh_masks(tok, tmp_path):
    once = run(tok, SAMPLE_TEXT, tmp_path / "once", options=InstanceOptions(max_seq_length=64, short_seq_prob=0.0))
    twice = run(tok, SAMPLE_TEXT, tmp_path / "twice", options=InstanceOptions(max_seq_length=64, short_seq_prob=0.0,
                                                                          dupe_factor=3))
    assert twice["tokens"] == once["tokens"] and twice["documents"] == once["documents"]
    assert 2.5 * once["instances"] < twice["instances"] < 3.5 * once["instances"]
    shard = load_shard(shards(tmp_path / "twice")[0])
    inputs = [tuple(inst.input_ids.tolist()) for inst in shard]
    assert len(set(inputs)) > 0.9 * len(inputs)


def test_summary_counts_match_the_input(tok, tmp_path):
    summary = run(tok, SAMPLE_TEXT, tmp_path)
    with open(SAMPLE_TEXT, encoding="utf-8") as handle:
        text = handle.read()
    documents = [d for d in text.split("\n\n") if d.strip()]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert summary["documents"] == len(documents)
    assert summary["sentences"] == len(lines)
    assert summary["tokens"] == sum(len(tok.encode(line)) + 2 for line in lines)
    assert summary["lines"] == len(text.splitlines())
    with open(tmp_path / "summary.json", encoding="utf-8") as handle:
        on_disk = json.load(handle)
    assert on_disk["instances"] == summary["instances"] == len(load_shard(shards(tmp_path)[0]))
    assert on_disk["masked_positions"] == sum(len(i.masked_positions) for i in load_shard(shards(tmp_path)[0]))


# ---------------------------------------------------------------------------------------------------------------
# Determinism and parallelism


def test_byte_identical_whatever_the_worker_count(tok, tmp_path, monkeypatch):
    import multiprocessing

    import data.workers as data_workers

    corpus = write_corpus(tmp_path / "a.txt", 120, seed=5)
    corpus2 = write_corpus(tmp_path / "b.txt", 40, seed=6)
    inputs = f"{corpus},{corpus2}"
    options = InstanceOptions(max_seq_length=96, dupe_factor=2)
    digests = {}
    for workers, method in ((1, None), (2, None), (3, None), (2, "forkserver")):
        if method:  # the start method used when MXNet or PyTorch is already imported
            monkeypatch.setattr(data_workers, "mp_context", lambda: multiprocessing.get_context(method))
        out = tmp_path / f"w{workers}{method}"
        summary = run(tok, inputs, out, options=options, num_workers=workers, num_outputs=3, chunk_bytes=2000)
        assert len(shards(out)) == 3
        digests[workers, method] = [open(p, "rb").read() for p in shards(out)]
        assert summary["instances"] == sum(len(load_shard(p)) for p in shards(out))
    assert len(set(map(tuple, digests.values()))) == 1
    digests[1] = digests[1, None]
    other = run(tok, inputs, tmp_path / "seed", options=InstanceOptions(max_seq_length=96, dupe_factor=2,
                                                                         random_seed=7),
                num_outputs=3, chunk_bytes=2000)
    assert other["instances"] > 0
    assert [open(p, "rb").read() for p in shards(tmp_path / "seed")] != digests[1]
    sizes = [len(load_shard(p)) for p in shards(tmp_path / "w1None")]
    assert max(sizes) - min(sizes) <= 1  # instances dealt round-robin


def test_cli_end_to_end_with_two_workers(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 200, seed=8)
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "create_pretraining_data.py"), "--input_file", str(corpus),
           "--output_dir", str(out), *VOCAB_FLAGS, "--num_workers", "2", "--num_outputs", "2",
           "--max_seq_length", "128", "--dupe_factor", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stderr  # the throughput line
    assert [os.path.basename(p) for p in shards(out)] == ["part-000.npz", "part-001.npz"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["instances"] == sum(len(load_shard(p)) for p in shards(out)) > 0
    assert summary["num_workers"] == 2 and summary["options"]["dupe_factor"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2, no shard left behind


def cli(argv, capsys):
    import create_pretraining_data as cpd

    with pytest.raises(SystemExit) as exit_info:
        run_cli(cpd.main)(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, [line for line in err if line.startswith("error:")], err


def bad_input_cases(tmp_path):
    good = write_corpus(tmp_path / "good.txt", 30, seed=9)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(good.read_bytes() + b"A fine line.\nA broken \xff\xfe line.\nAnother line.\n")
    bad_line = len(good.read_bytes().splitlines()) + 2
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    return good, {
        "missing file": ([f"{tmp_path}/absent.txt"], "absent.txt: no such file"),
        "glob matches nothing": ([f"{tmp_path}/*.nothing"], "no input files match"),
        "no documents": ([str(blank)], "no documents"),
        "not UTF-8": ([str(bad_utf8)], f"bad.txt:{bad_line}: invalid UTF-8.*--skip_invalid_utf8"),
        "not UTF-8 in a worker": ([f"{good},{bad_utf8}", "--num_workers", "2"], f"bad.txt:{bad_line}: invalid"),
        "output dir not writable": ([str(good), "--output_dir", str(not_a_dir / "out")],
                                    "cannot create the output directory"),
        "dupe_factor 0": ([str(good), "--dupe_factor", "0"], "--dupe_factor 0: expected an integer >= 1"),
        "negative workers": ([str(good), "--num_workers", "-1"], "--num_workers -1"),
        "zero outputs": ([str(good), "--num_outputs", "0"], "--num_outputs 0"),
        "masked_lm_prob": ([str(good), "--masked_lm_prob", "1.5"], "--masked_lm_prob 1.5"),
        "short_seq_prob": ([str(good), "--short_seq_prob", "-0.1"], "--short_seq_prob -0.1"),
        "max_seq_length": ([str(good), "--max_seq_length", "2"], "--max_seq_length 2"),
        "max_predictions": ([str(good), "--max_predictions_per_seq", "0"], "--max_predictions_per_seq 0"),
        "too many outputs": ([SAMPLE_TEXT, "--num_outputs", "500"], "--num_outputs 500: only"),
        "no vocabulary": ([str(good), "--vocab_json", str(tmp_path / "nope.json")], "nope.json"),
    }


def test_bad_input_one_line_exit_2_no_shard(tmp_path, capsys):
    import re

    good, cases = bad_input_cases(tmp_path)
    for name, (args, pattern) in cases.items():
        out = tmp_path / ("out-" + name.replace(" ", "_"))
        argv = ["--input_file", args[0], "--output_dir", str(out), *VOCAB_FLAGS, "--num_workers", "1", *args[1:]]
        code, errors, err = cli(argv, capsys)
        assert code == 2, name
        assert len(errors) == 1 and re.search(pattern, errors[0]), (name, err)
        assert not any("Traceback" in line for line in err), name
        assert leftovers(out) == [], (name, leftovers(out))


def test_skip_invalid_utf8_counts_skipped_lines(tok, tmp_path):
    good, _ = bad_input_cases(tmp_path)
    bad = tmp_path / "bad.txt"
    summary = run(tok, str(bad), tmp_path / "out", skip_invalid_utf8=True)
    reference = run(tok, str(good), tmp_path / "ref")
    assert summary["skipped_lines"] == 1
    assert summary["sentences"] == reference["sentences"] + 2


def test_failure_after_some_work_leaves_no_shard(tok, tmp_path):
    """Invalid bytes in the last of several chunks: shards were being spooled, none may appear."""
    corpus = write_corpus(tmp_path / "corpus.txt", 100, seed=10)
    with open(corpus, "ab") as handle:
        handle.write(b"\xc3\x28 broken\n")
    out = tmp_path / "out"
    with pytest.raises(BortError, match=r"corpus.txt:\d+: invalid UTF-8"):
        run(tok, str(corpus), out, num_outputs=2, chunk_bytes=2000)
    assert leftovers(out) == []
    with pytest.raises(BortError, match=r"corpus.txt:\d+: invalid UTF-8"):
        run(tok, str(corpus), out, num_outputs=2, chunk_bytes=2000, num_workers=2)
    assert leftovers(out) == []


def test_existing_shards_are_replaced_atomically(tok, tmp_path):
    run(tok, SAMPLE_TEXT, tmp_path, options=InstanceOptions(max_seq_length=64))
    before = open(shards(tmp_path)[0], "rb").read()
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(BortError):
        run(tok, str(blank), tmp_path)
    assert open(shards(tmp_path)[0], "rb").read() == before  # a failed run keeps the previous shard


def test_a_rerun_with_fewer_outputs_removes_the_earlier_runs_extra_shards(tok, tmp_path, caplog):
    """Old code warned and left 2 stale shards beside the 2 new ones, which training on the directory then read."""
    out = tmp_path / "out"
    run(tok, SAMPLE_TEXT, out, num_outputs=4)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(BortError):  # a failed rerun keeps the earlier run's shards, all of them
        run(tok, str(blank), out, num_outputs=2)
    assert len(shards(out)) == 4
    summary = run(tok, SAMPLE_TEXT, out, num_outputs=2)
    assert [os.path.basename(p) for p in shards(out)] == summary["shards"] == ["part-000.npz", "part-001.npz"]
    assert "removing 2 shard(s) of an earlier run" in caplog.text and "part-002.npz, part-003.npz" in caplog.text
    assert sum(len(load_shard(p)) for p in shards(out)) == summary["instances"]


def test_format_version_1_on_request(tmp_path):
    out = tmp_path / "out"
    import create_pretraining_data as cpd

    cpd.main(["--input_file", SAMPLE_TEXT, "--output_dir", str(out), *VOCAB_FLAGS, "--format_version", "1",
              "--num_workers", "1", "--no_progress", "--max_seq_length", "64"])
    with np.load(shards(out)[0], allow_pickle=False) as npz:
        assert int(npz["format_version"]) == 1 and npz["input_ids"].dtype == np.int32
    assert json.loads((out / "summary.json").read_text())["format_version"] == 1
    v2 = tmp_path / "v2"
    summary = create_pretraining_data(SAMPLE_TEXT, str(v2), load_tokenizer(vocab_json=VOCAB_JSON, merges=MERGES),
                                      InstanceOptions(max_seq_length=64), progress=False)
    assert summary["format_version"] == 2
    for a, b in zip(load_shard(shards(out)[0]), load_shard(shards(v2)[0])):  # the same instances
        assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_chunks_cut_at_blank_lines_whatever_the_read_size(tmp_path, monkeypatch):
    import data.pretraining as pretraining

    corpus = write_corpus(tmp_path / "corpus.txt", 80, seed=11)
    with open(corpus, "ab") as handle:  # a long document without blank lines, and no final newline
        handle.write(b"\n".join(b"line %d of a very long document" % i for i in range(400)))
    data = corpus.read_bytes()
    results = []
    for block in (7, 100, 1 << 20):
        monkeypatch.setattr(pretraining, "_READ_BLOCK", block)
        results.append(list(pretraining.iter_chunks([str(corpus)], chunk_bytes=1000, max_chunk_bytes=4000)))
    assert results[0] == results[1] == results[2]
    chunks = results[0]
    assert b"".join(c.data for c in chunks) == data
    assert [c.index for c in chunks] == list(range(len(chunks)))
    line = 1
    for chunk in chunks:
        assert chunk.first_line == line
        line += chunk.data.count(b"\n")
        assert len(chunk.data) <= 4000 and (chunk is chunks[-1] or chunk.data.endswith(b"\n"))
    cut_at_blank = [c for c in chunks[:-1] if c.data.endswith(b"\n\n")]
    assert len(cut_at_blank) >= 10 and all(len(c.data) >= 1000 for c in cut_at_blank)
