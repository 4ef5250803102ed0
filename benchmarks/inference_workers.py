"""Worker processes of `benchmarks/inference.py`: one per framework (ours on MXNet, HF transformers on
PyTorch, the same HF graph in ONNX Runtime), each timing its modes on request.

A worker builds its models, checks every mode against its float32 reference, prints one JSON line
{"ready", "checks", "matmul_peak_gflops"}, then answers one timing request per stdin line (`serve`). The PyTorch and
ONNX Runtime workers never import MXNet (two OpenMP runtimes in one process distort both); the ONNX Runtime worker
exports its graphs in a helper process so that it never loads PyTorch either.
"""
import json
import os
import subprocess
import sys
import time

from bort.paths import REPO_ROOT

MODELS = {"bort": "bort_4_8_768_1024", "bert_base": "bert_12_768_12", "roberta_large": "roberta_24_1024_16"}
# gluon: the plain BortModel (gluon-nlp blocks), fp32; <mode>_stock: <mode> with MXNet's LayerNorm instead of
# Bort's fused add + layer norm operator (bort.inference.native_ops), the baseline of that operator
OUR_MODES = ("gluon", "fp32", "fused", "bf16", "int8", "fp32_stock", "fused_stock", "bf16_stock", "int8_stock")
TORCH_MODES = ("fp32", "bf16", "int8")
ORT_MODES = ("fp32", "opt_fp32", "int8", "opt_int8")
CHECK_BATCH, CHECK_SEQ, NUM_CLASSES = 4, 128, 3

def log(msg):
    print(msg, file=sys.stderr, flush=True)

# ------------------------------------------------------------------------------------------------ workers

def random_batch(rng, config, batch_size, seq_len, full=False):
    import numpy as np
    ids = rng.randint(5, config.vocab_size, size=(batch_size, seq_len)).astype(np.float32)
    if full:
        valid = np.full((batch_size,), seq_len, dtype=np.float32)
    else:
        valid = rng.randint(seq_len // 2, seq_len + 1, size=(batch_size,)).astype(np.float32)
    return ids, valid

def time_each(call, modes, repeats):
    """{mode: [seconds per call]}: one warm-up call per mode (traces the shape), then `repeats` rounds that
    take the modes in turn, so each round sees one machine load."""
    for mode in modes:
        call(mode)
    times = {m: [] for m in modes}
    for _ in range(repeats):
        for mode in modes:
            start = time.perf_counter()
            call(mode)
            times[mode].append(time.perf_counter() - start)
    return times

def agreement(out, ref, valid, head):
    """max |out - ref| over valid positions, mean token cosine, argmax agreement of `head` on token 0."""
    import numpy as np
    mask = np.arange(ref.shape[1])[None, :] < valid[:, None]
    a, b = out[mask], ref[mask]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
    agree = (out[:, 0] @ head).argmax(-1) == (ref[:, 0] @ head).argmax(-1)
    return {"max_abs_diff": float(np.abs(a - b).max()), "mean_cosine": float(cos.mean()),
            "argmax_agreement": float(agree.mean()), "ref_max_abs": float(np.abs(b).max())}

def mxnet_worker(args):
    import mxnet as mx
    import numpy as np
    from bort.inference.modes import prepare
    from bort.model import build_model, get_config

    config = get_config(MODELS[args.model], dropout=0.0)
    mx.random.seed(0)
    rng = np.random.RandomState(0)
    model = build_model(config, use_decoder=False)
    calib = [random_batch(rng, config, args.calib_batch, args.calib_seq) for _ in range(args.calib_batches)]
    check = random_batch(rng, config, CHECK_BATCH, CHECK_SEQ)
    head = rng.normal(size=(config.units, NUM_CLASSES)).astype(np.float32)
    ref = model(mx.nd.array(check[0]), mx.nd.array(check[1])).asnumpy()
    nets, checks = {}, {}
    for mode in args.modes:
        start = time.time()
        if mode == "gluon":
            model.hybridize(static_alloc=True, static_shape=True)
            nets[mode] = lambda ids, valid, m=model: m(ids, valid)
        else:
            stock = mode.endswith("_stock")
            nets[mode] = prepare(model, mode[:-len("_stock")] if stock else mode, calib_batches=calib,
                                 calib_mode=args.calib_mode, native_ops=False if stock else None)
            if not stock and not nets[mode].native_ops:
                log(f"[mxnet {args.model}] {mode}: Bort's native operators did not load; timing MXNet's LayerNorm")
        out = nets[mode](mx.nd.array(check[0]), mx.nd.array(check[1])).astype("float32").asnumpy()
        checks[mode] = dict(agreement(out, ref, check[1], head), native_ops=getattr(nets[mode], "native_ops", False))
        log(f"[mxnet {args.model}] {mode} ready in {time.time() - start:.1f}s: {checks[mode]}")
    peak = matmul_peak_mxnet(mx)

    def time_modes(batch_size, seq_len, repeats):
        ids, valid = (mx.nd.array(a) for a in random_batch(rng, config, batch_size, seq_len, full=True))
        return time_each(lambda mode: nets[mode](ids, valid).wait_to_read(), list(nets), repeats)

    serve(time_modes, checks, peak)

def matmul_peak_mxnet(mx):
    n = 2048
    x, w = mx.nd.random.uniform(shape=(n, n)), mx.nd.random.uniform(shape=(n, n))
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        mx.nd.FullyConnected(x, w, no_bias=True, num_hidden=n).wait_to_read()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9

def hf_bert(config_json):
    """(config, HF `BertModel` with the config's sizes and seed-0 random weights), as the PyTorch and ONNX peers
    both use it."""
    import types

    import torch
    from transformers import BertConfig, BertModel

    if "mxnet" in sys.modules:
        raise RuntimeError("the PyTorch worker must not load MXNet (two OpenMP runtimes)")
    config = types.SimpleNamespace(**json.loads(config_json))
    hf = BertConfig(vocab_size=config.vocab_size, hidden_size=config.units, num_hidden_layers=config.num_layers,
                    num_attention_heads=config.num_heads, intermediate_size=config.hidden_size,
                    max_position_embeddings=config.max_length + 2, type_vocab_size=max(1, config.token_type_vocab_size),
                    layer_norm_eps=config.layer_norm_eps, hidden_act="gelu")
    torch.manual_seed(0)
    return config, BertModel(hf, add_pooling_layer=False).eval()

def torch_worker(args):
    import numpy as np
    import torch

    # No bort.model here: it imports MXNet, and a second OpenMP runtime in this process slows PyTorch badly.
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config, base = hf_bert(args.config_json)
    rng = np.random.RandomState(0)
    models = {"fp32": base}  # the reference, timed only when asked for
    for mode in args.modes:
        if mode == "int8":
            import copy
            models[mode] = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear},
                                                                  dtype=torch.qint8)
        else:
            models[mode] = base

    def run(mode, ids, mask):
        with torch.inference_mode():
            if mode == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return models[mode](input_ids=ids, attention_mask=mask).last_hidden_state.float()
            return models[mode](input_ids=ids, attention_mask=mask).last_hidden_state

    def inputs(ids, valid):
        mask = torch.from_numpy((np.arange(ids.shape[1])[None, :] < valid[:, None]).astype(np.int64))
        return torch.from_numpy(ids.astype(np.int64)), mask

    ids, valid = random_batch(rng, config, CHECK_BATCH, CHECK_SEQ)
    head = rng.normal(size=(config.units, NUM_CLASSES)).astype(np.float32)
    ref = run("fp32", *inputs(ids, valid)).numpy()
    checks = {m: agreement(run(m, *inputs(ids, valid)).numpy(), ref, valid, head) for m in args.modes}
    log(f"[torch {args.model}] ready: {checks}")
    n = 2048
    a, b = torch.rand(n, n), torch.rand(n, n)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)

    def time_modes(batch_size, seq_len, repeats):
        batch = inputs(*random_batch(rng, config, batch_size, seq_len, full=True))
        return time_each(lambda mode: run(mode, *batch), args.modes, repeats)

    serve(time_modes, checks, 2 * n ** 3 / best / 1e9)

def ort_export(args):
    """Helper process (PyTorch, no ONNX Runtime session): export the HF model, optimize it, quantize both."""
    import torch
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    config, base = hf_bert(args.config_json)

    class Wrapped(torch.nn.Module):  # transformers 5.x takes the attention mask by keyword only
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    out = args.export_dir
    paths = {mode: os.path.join(out, f"{mode}.onnx") for mode in ORT_MODES}
    ids = torch.randint(5, config.vocab_size, (2, 16))
    with torch.inference_mode():
        torch.onnx.export(Wrapped(base), (ids, torch.ones_like(ids)), paths["fp32"], dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["hidden"], opset_version=17,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "hidden": {0: "batch", 1: "seq"}})
    optimized = optimize_model(paths["fp32"], model_type="bert", num_heads=config.num_heads,
                               hidden_size=config.units)
    log(f"[ort export] fused operators: {optimized.get_fused_operator_statistics()}")
    optimized.save_model_to_file(paths["opt_fp32"])
    quantize_dynamic(paths["fp32"], paths["int8"], weight_type=QuantType.QInt8)
    # the optimizer's graph has value infos without a type; quantize_dynamic needs a default for them
    quantize_dynamic(paths["opt_fp32"], paths["opt_int8"], weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

def ort_worker(args):
    import tempfile

    import numpy as np
    import onnxruntime as ort

    config = json.loads(args.config_json)
    threads = int(os.environ["OMP_NUM_THREADS"])
    rng = np.random.RandomState(0)
    with tempfile.TemporaryDirectory(prefix="bort_ort_") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.inference", "--worker", "ort_export", "--model", args.model,
               "--config_json", args.config_json, "--export_dir", tmp]
        subprocess.run(cmd, check=True, stdout=sys.stderr, cwd=REPO_ROOT)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # --omp_wait passive: no spinning here either
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = {m: ort.InferenceSession(os.path.join(tmp, f"{m}.onnx"), options,
                                            providers=["CPUExecutionProvider"])
                    for m in set(args.modes) | {"fp32"}}

    def run(mode, ids, valid):
        mask = (np.arange(ids.shape[1])[None, :] < valid[:, None]).astype(np.int64)
        return sessions[mode].run(None, {"input_ids": ids.astype(np.int64), "attention_mask": mask})[0]

    cfg = type("Config", (), config)
    ids, valid = random_batch(rng, cfg, CHECK_BATCH, CHECK_SEQ)
    head = rng.normal(size=(config["units"], NUM_CLASSES)).astype(np.float32)
    ref = run("fp32", ids, valid)
    checks = {m: agreement(run(m, ids, valid), ref, valid, head) for m in args.modes}
    log(f"[ort {args.model}] ready: {checks}")

    def time_modes(batch_size, seq_len, repeats):
        batch = random_batch(rng, cfg, batch_size, seq_len, full=True)
        return time_each(lambda mode: run(mode, *batch), args.modes, repeats)

    serve(time_modes, checks, None)

def serve(time_modes, checks, peak):
    """Worker loop: announce readiness, then answer one timing request per stdin line."""
    print(json.dumps({"ready": True, "checks": checks, "matmul_peak_gflops": peak}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        times = time_modes(request["batch"], request["seq"], request["repeats"])
        print(json.dumps({"times": times}), flush=True)
