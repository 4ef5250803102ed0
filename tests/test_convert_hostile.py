"""Hostile HF directories: each malformed file gives a one-line BortError naming it, nothing is allocated
from what a file merely claims, nothing outside the HF directory is read."""
import json
import os
import resource
import struct

import numpy as np
import pytest

import bort  # noqa: F401
import mxnet as mx

from bort.weights import convert, hf_files
from bort.errors import BortError
from bort.model import build_model, get_config
from bort.weights.checkpoint import finish_deferred_init


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random bort_tiny with its MLM head as an HF RoBERTa directory."""
    path = tmp_path_factory.mktemp("hf")
    mx.random.seed(0)
    model = finish_deferred_init(build_model("bort_tiny"))
    convert.gluon_to_hf(model, model.config, path, arch="roberta")
    return path


def _copy(hf_dir, dest, config=None):
    os.makedirs(dest, exist_ok=True)
    hf = json.loads((hf_dir / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps(config(hf) if callable(config) else hf))
    (dest / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    return dest


def _one_line_error(call, *names):
    with pytest.raises(BortError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message
    return message


def test_the_untouched_directory_converts(hf_dir):
    assert sorted(os.listdir(hf_dir)) == ["config.json", "model.safetensors"]  # no lock file left in an export
    config, arrays = convert.hf_to_gluon(hf_dir)
    assert config.num_layers == 2 and "word_embed.0.weight" in arrays


def test_export_onto_a_full_disk_leaves_no_directory(hf_dir, tmp_path, monkeypatch):
    import errno

    config, arrays = convert.hf_to_gluon(hf_dir)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "export"
    _one_line_error(lambda: convert.gluon_to_hf(arrays, config, out, arch="roberta"), "model.safetensors",
                    "No space left on device")
    assert not out.exists()


@pytest.mark.parametrize("edit, field", [
    (lambda hf: [hf], "JSON object"),
    (lambda hf: dict(hf, num_attention_heads=0), "num_attention_heads"),
    (lambda hf: dict(hf, hidden_size="64"), "hidden_size"),
    (lambda hf: dict(hf, num_hidden_layers=-2), "num_hidden_layers"),
    (lambda hf: dict(hf, num_attention_heads=True), "num_attention_heads"),
    (lambda hf: dict(hf, layer_norm_eps="small"), "layer_norm_eps"),
    (lambda hf: dict(hf, pad_token_id="one"), "pad_token_id"),
    (lambda hf: dict(hf, hidden_act=["gelu"]), "hidden_act"),
    (lambda hf: dict(hf, num_attention_heads=3), "divisible"),
])
def test_impossible_config_values_are_one_line_errors(hf_dir, tmp_path, edit, field):
    bad = _copy(hf_dir, tmp_path / "bad", edit)
    _one_line_error(lambda: convert.hf_to_gluon(bad), str(bad), field)


def test_a_config_claiming_a_hundred_million_layers_fails_before_allocating(hf_dir, tmp_path):
    bad = _copy(hf_dir, tmp_path / "bad", lambda hf: dict(hf, num_hidden_layers=10 ** 8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _one_line_error(lambda: convert.hf_to_gluon(bad), "10000000", "hold 2")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_export_refuses_a_config_claiming_more_layers_than_the_parameters(hf_dir):
    _, arrays = convert.hf_to_gluon(hf_dir)
    config = get_config("bort_tiny").replace(num_layers=10 ** 8)
    _one_line_error(lambda: convert.gluon_to_tensors(arrays, config, source="p.params"), "p.params", "hold 2")


def _rewrite_header(src, dest, edit):
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    dest.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    return dest


def _first_tensor(header):
    return header[sorted(k for k in header if k != "__metadata__")[0]]


@pytest.mark.parametrize("edit, field", [
    (lambda h: _first_tensor(h).update(data_offsets=["0", "8"]), "data_offsets"),
    (lambda h: _first_tensor(h).update(data_offsets=[0.0, 8.5]), "data_offsets"),
    (lambda h: _first_tensor(h).update(data_offsets=[0]), "data_offsets"),
    (lambda h: _first_tensor(h).update(shape=[-4, -16]), "shape"),
    (lambda h: _first_tensor(h).update(shape="64"), "shape"),
    (lambda h: _first_tensor(h).update(dtype=7), "dtype"),
    (lambda h: h.update(extra=[1, 2]), "header entry"),
])
def test_malformed_safetensors_headers(hf_dir, tmp_path, edit, field):
    bad = _rewrite_header(hf_dir / "model.safetensors", tmp_path / "bad.safetensors", edit)
    _one_line_error(lambda: hf_files.read_safetensors(bad), str(bad), field)


def test_negative_shape_that_multiplies_to_the_right_size_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    hf_files.write_safetensors(path, {"w": np.ones((4, 4), np.float32)})
    bad = _rewrite_header(path, tmp_path / "neg.safetensors", lambda h: h["w"].update(shape=[-4, -4]))
    _one_line_error(lambda: hf_files.read_safetensors(bad), "shape")


def _sharded(hf_dir, dest, weight_map_of):
    os.makedirs(dest, exist_ok=True)
    (dest / "config.json").write_text((hf_dir / "config.json").read_text())
    (dest / "model-1.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    names = sorted(hf_files.read_safetensors(hf_dir / "model.safetensors"))
    (dest / "model.safetensors.index.json").write_text(json.dumps(weight_map_of(names)))
    return dest


def test_index_that_is_not_an_object_or_points_outside(hf_dir, tmp_path):
    good = _sharded(hf_dir, tmp_path / "good",
                    lambda names: {"weight_map": dict.fromkeys(names, "model-1.safetensors")})
    assert convert.hf_to_gluon(good)[0].num_layers == 2
    for name, index in {"list": lambda names: ["model-1.safetensors"],
                        "no_map": lambda names: {"weight_map": []},
                        "not_a_name": lambda names: {"weight_map": dict.fromkeys(names, 3)},
                        "outside": lambda names: {"weight_map": dict.fromkeys(names, "../good/model-1.safetensors")},
                        "absolute": lambda names: {"weight_map": dict.fromkeys(
                            names, str(good / "model-1.safetensors"))}}.items():
        bad = _sharded(hf_dir, tmp_path / name, index)
        _one_line_error(lambda: convert.hf_to_gluon(bad), "index.json")


def test_pickled_pytorch_bin_is_refused_without_torchs_weights_only_false_advice(tmp_path):
    torch = pytest.importorskip("torch")

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    os.makedirs(tmp_path / "hf")
    torch.save({"w": Payload()}, str(tmp_path / "hf" / "pytorch_model.bin"))
    message = _one_line_error(lambda: hf_files.read_hf_weights(str(tmp_path / "hf")), "pytorch_model.bin", "refused")
    assert "weights_only" not in message and "False" not in message
    assert not (tmp_path / "ran").exists()


def test_hf2gluon_refuses_an_output_it_cannot_write_before_converting(hf_dir, tmp_path, monkeypatch, capsys):
    import runpy

    from bort.errors import run_cli
    from helpers import ROOT, read_only_disk

    main = runpy.run_path(os.path.join(ROOT, "scripts", "convert_checkpoint.py"))["main"]

    def no_work(*args, **kwargs):
        raise AssertionError("converted before the output was checked")
    monkeypatch.setattr(convert, "hf_to_gluon", no_work)

    def refused(output):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main)(["hf2gluon", "--hf_dir", str(hf_dir), "--output", str(output)])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and "\n" not in err, err
        return err

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert refused(tmp_path) == f"error: {tmp_path}: is a directory; --output must be a file name"
    assert refused(a_file / "m.params") == f"error: {a_file}: is a file, so --output {a_file / 'm.params'} cannot " \
                                           "be created"
    disk = tmp_path / "ro"
    with read_only_disk(disk, monkeypatch):
        assert refused(disk / "m.params") == \
            f"error: {disk / 'm.params'}: cannot write there (Read-only file system; --output)"
