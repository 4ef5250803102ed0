"""The pretraining shard format and its reader (data/pretraining_format.py), shard paths (data/shard_files.py)
and batch collation (data/collate.py): round trips, ragged rows, legacy shards, corrupt files."""
import numpy as np
import pytest

from bort.errors import BortError
from data.collate import batchify
from data.pretraining_format import Instance, InstanceBatch, load_shard, smallest_uint, write_shard
from data.shard_files import list_shards


def random_instances(rng, n, vocab_size=50):
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 20))
        k = int(rng.integers(0, length))
        out.append(Instance(rng.integers(0, vocab_size, length).astype(np.int32),
                            (np.arange(length) >= length // 2).astype(np.int32),
                            np.sort(rng.choice(length, k, replace=False)).astype(np.int32),
                            rng.integers(0, vocab_size, k).astype(np.int32), int(rng.integers(0, 2))))
    return out


META = {"vocab_size": 50, "pad_id": 1, "mask_id": 49, "bos_id": 0, "eos_id": 2, "max_seq_length": 20}


def assert_same(a, b):
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("version", [2, 1])
def test_reader_round_trip_and_batchify(tmp_path, version):
    rng = np.random.default_rng(0)
    instances = random_instances(rng, 37)
    path = tmp_path / "part-000.npz"
    write_shard(path, InstanceBatch.from_instances(instances), META, format_version=version)
    shard = load_shard(path)
    assert len(shard) == 37 and not shard.legacy
    assert shard.metadata["pad_id"] == 1 and shard.metadata["format_version"] == version
    for i, inst in enumerate(instances):
        assert_same(shard[i], inst)
        assert shard[i].input_ids.dtype == np.int32
    assert_same(shard[-1], instances[-1])
    with pytest.raises(IndexError):
        shard[37]
    assert list(shard.lengths) == [len(i.input_ids) for i in instances]
    # the same content, written twice, gives the same bytes
    write_shard(tmp_path / "again.npz", InstanceBatch.from_instances(instances), META, format_version=version)
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()
    batch = batchify([shard[i] for i in (0, 5, 9)], pad_id=1)
    lengths = [len(shard[i].input_ids) for i in (0, 5, 9)]
    counts = [len(shard[i].masked_positions) for i in (0, 5, 9)]
    assert batch["input_ids"].shape == (3, max(lengths)) and batch["input_ids"].dtype == np.int32
    assert batch["valid_length"].tolist() == lengths
    assert batch["masked_positions"].shape == batch["masked_weights"].shape == (3, max(1, max(counts)))
    for row, i in enumerate((0, 5, 9)):
        n, k = lengths[row], counts[row]
        assert np.array_equal(batch["input_ids"][row, :n], shard[i].input_ids)
        assert np.all(batch["input_ids"][row, n:] == 1)
        assert np.array_equal(batch["masked_ids"][row, :k], shard[i].masked_ids)
        assert batch["masked_weights"][row].tolist() == [1.0] * k + [0.0] * (batch["masked_weights"].shape[1] - k)
        assert batch["next_sentence_label"][row] == shard[i].next_sentence_label


def test_version_2_keeps_the_smallest_types_and_only_the_segment_ids_it_needs(tmp_path):
    assert [smallest_uint(v) for v in (255, 256, 50264, 65536)] == [np.uint8, np.uint16, np.uint16, np.uint32]
    instances = random_instances(np.random.default_rng(4), 30, vocab_size=50265)
    meta = dict(META, vocab_size=50265, mask_id=50264, max_seq_length=512)
    zeros = [inst._replace(segment_ids=np.zeros_like(inst.segment_ids)) for inst in instances]
    other = [inst._replace(segment_ids=(np.arange(len(inst.segment_ids)) % 2).astype(np.int32)) for inst in instances]
    for name, rows, stored in (("two", instances, "segment_b_starts"), ("zeros", zeros, None),
                               ("other", other, "segment_ids")):
        path = tmp_path / f"{name}.npz"
        write_shard(path, InstanceBatch.from_instances(rows), meta)
        with np.load(path, allow_pickle=False) as npz:
            assert npz["input_ids"].dtype == npz["masked_lm_ids"].dtype == np.uint16
            assert npz["masked_lm_positions"].dtype == npz["input_lengths"].dtype == np.uint16
            assert {n for n in npz.files if n.startswith("segment")} == ({stored} if stored else set())
        shard = load_shard(path)
        for i, inst in enumerate(rows):
            assert_same(shard[i], inst)
    payload = {}
    for version in (1, 2):
        write_shard(tmp_path / "v.npz", InstanceBatch.from_instances(instances), meta, format_version=version)
        with np.load(tmp_path / "v.npz", allow_pickle=False) as npz:
            payload[version] = sum(npz[name].nbytes for name in npz.files)
    assert payload[2] < payload[1] / 2.5  # ids: 2 bytes instead of 4, segment ids: 2 bytes an instance, not 4 a token
    with pytest.raises(ValueError, match="input_ids: values .* do not fit uint8"):  # never a silent wrap-around
        write_shard(tmp_path / "bad.npz", InstanceBatch.from_instances(instances), dict(META, vocab_size=200))


def test_take_deals_ragged_rows(tmp_path):
    instances = random_instances(np.random.default_rng(1), 10)
    batch = InstanceBatch.from_instances(instances).take([7, 2, 2, 9])
    for got, want in zip((batch.instance(i) for i in range(4)), [instances[j] for j in (7, 2, 2, 9)]):
        assert_same(got, want)


def write_legacy(path, instances):
    """The gluon-nlp/Bort layout: numpy object arrays of per-instance arrays (needs pickle to read)."""
    def obj(rows, dtype):
        out = np.empty(len(rows), dtype=object)
        for i, row in enumerate(rows):
            out[i] = np.asarray(row, dtype=dtype)
        return out

    np.savez_compressed(
        path, input_ids=obj([i.input_ids for i in instances], "int32"),
        segment_ids=obj([i.segment_ids for i in instances], "int32"),
        masked_lm_positions=obj([i.masked_positions for i in instances], "int32"),
        masked_lm_ids=obj([i.masked_ids for i in instances], "int32"),
        masked_lm_weights=obj([np.ones(len(i.masked_ids)) for i in instances], "float32"),
        next_sentence_labels=np.array([i.next_sentence_label for i in instances], dtype="int32"),
        valid_lengths=np.array([len(i.input_ids) for i in instances], dtype="int32"))


def test_legacy_shards_need_the_opt_in(tmp_path):
    instances = random_instances(np.random.default_rng(2), 12)
    path = tmp_path / "legacy.npz"
    write_legacy(path, instances)
    with pytest.raises(BortError, match=r"legacy.npz: legacy .*--allow_legacy_pickle") as err:
        load_shard(path)
    assert "\n" not in str(err.value)
    shard = load_shard(path, allow_legacy_pickle=True)
    assert shard.legacy and len(shard) == 12
    for i, inst in enumerate(instances):
        assert_same(shard[i], inst)


def test_corrupt_shards_give_one_line_errors(tmp_path):
    good = tmp_path / "good.npz"
    write_shard(good, InstanceBatch.from_instances(random_instances(np.random.default_rng(3), 20)), META)
    data = good.read_bytes()
    cases = {"truncated.npz": data[: len(data) // 2], "garbage.npz": b"not a shard at all" * 10,
             "empty.npz": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    write_shard(tmp_path / "v1.npz", InstanceBatch.from_instances(random_instances(np.random.default_rng(3), 20)),
                META, format_version=1)
    changes = {"offsets.npz": ("v1.npz", "input_offsets", lambda a: a[::-1].copy()),
               "positions.npz": ("good.npz", "masked_lm_positions", lambda a: a + 100),
               "lengths.npz": ("good.npz", "input_lengths", lambda a: a + 1),
               "segments.npz": ("good.npz", "segment_b_starts", lambda a: a + 30)}
    for name, (source, array, change) in changes.items():
        with np.load(tmp_path / source) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays[array] = change(arrays[array])
        np.savez(tmp_path / name, **arrays)
    for name in list(cases) + ["other.npz", "missing.npz", *changes]:
        with pytest.raises(BortError) as err:
            load_shard(tmp_path / name)
        message = str(err.value)
        assert name in message and "\n" not in message, message


def test_list_shards_expands_dirs_globs_and_lists(tmp_path):
    for i in range(3):
        (tmp_path / f"part-00{i}.npz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.npz").write_bytes(b"x")
    expected = [str(tmp_path / f"part-00{i}.npz") for i in range(3)]
    assert list_shards(str(tmp_path)) == expected
    assert list_shards(str(tmp_path / "part-*.npz")) == expected
    assert list_shards(f"{tmp_path}/part-002.npz, {other}") == [expected[2], str(other / "a.npz")]
    assert list_shards(f"{tmp_path}/part-00*.npz,{tmp_path}/part-001.npz") == expected  # no duplicates
    for spec, pattern in ((str(tmp_path / "nothing-*.npz"), "no shard files match"),
                          (str(tmp_path / "absent.npz"), "no such file"), (str(tmp_path / "other" / "x"), "no such"),
                          ("", "no shard files given")):
        with pytest.raises(BortError, match=pattern):
            list_shards(spec)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BortError, match="holds no shard files"):
        list_shards(str(empty))


def test_existing_paths_with_glob_characters_are_taken_literally(tmp_path):
    """Old code globbed `part-[0].npz` to `part-0.npz` and `run[1]/*.npz` to `run1/*.npz`: another file."""
    for name in ("part-[0].npz", "part-0.npz", "run[1]/part-000.npz", "run1/part-000.npz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_shards(str(tmp_path / "part-[0].npz")) == [str(tmp_path / "part-[0].npz")]
    assert list_shards(str(tmp_path / "run[1]" / "*.npz")) == [str(tmp_path / "run[1]" / "part-000.npz")]
    assert list_shards(str(tmp_path / "run[1]")) == [str(tmp_path / "run[1]" / "part-000.npz")]
    assert list_shards(str(tmp_path / "part-[0-9].npz")) == [str(tmp_path / "part-0.npz")]  # a pattern still globs


def test_a_directory_refuses_shards_older_than_its_summary_that_it_does_not_list(tmp_path):
    """A directory written by a run with --num_outputs 4 and again (by earlier code, which only warned) with 2."""
    import json
    import os

    for i in range(4):
        (tmp_path / f"part-00{i}.npz").write_bytes(b"x")
        os.utime(tmp_path / f"part-00{i}.npz", (1000, 1000))
    (tmp_path / "summary.json").write_text(json.dumps({"shards": ["part-000.npz", "part-001.npz"]}))
    for i in range(2):
        os.utime(tmp_path / f"part-00{i}.npz", None)  # rewritten by the second run
    with pytest.raises(BortError, match=r"part-002.npz, part-003.npz predate its summary.json .* 2 shard"):
        list_shards(str(tmp_path))
    assert len(list_shards(f"{tmp_path}/part-00*.npz")) == 4  # named explicitly: taken as meant
    for i in (2, 3):
        os.utime(tmp_path / f"part-00{i}.npz", None)  # added after the summary: taken as meant
    assert len(list_shards(str(tmp_path))) == 4


def test_special_ids_outside_the_vocabulary_are_refused_at_open(tmp_path):
    from data.shard_files import check_shards_fit

    instances = random_instances(np.random.default_rng(5), 8)
    for name, value in (("pad_id", 50), ("mask_id", 77), ("pad_id", -1)):
        path = tmp_path / f"{name}{value}.npz"
        write_shard(path, InstanceBatch.from_instances(instances), dict(META, **{name: value}))
        for read in (load_shard, lambda p: check_shards_fit([p], max_length=64)):
            with pytest.raises(BortError, match=rf"{path.name}: {name} {value} is outside the vocabulary \(0..49\)"):
                read(path)
