"""Predict a task's segment with a fine-tuned checkpoint on CPU, in INT8 (the default), bf16 or fp32.

    python scripts/predict.py --task_name MRPC --model_parameters out/MRPC.params --data_dir glue/MRPC \
        --segment test --output_dir preds/

INT8 is the fastest mode and the default: on the real SST-2 dev set (872 sentences) it changed dev accuracy by
+0.11 points against fp32 and agreed with fp32 on 99.7 % of the predictions (docs/results/inference.md,
benchmarks/inference_accuracy.py). `--mode fp32` gives float32 exactly. Every mode uses Bort's fused
layer-norm and masked-softmax operators (bort.inference.native_ops, compiled once on first use) when a C++ compiler is there;
BORT_NATIVE_OPS=0 turns them off.

The work is bort.inference.task_prediction's (`predict_segment`); this script parses the flags into its
`PredictConfig` and sets up MXNet's engine and OpenMP's waiting first.
"""
import argparse
import dataclasses
import json
import logging

import bort  # noqa: E402,F401  (sets OMP_NUM_THREADS before mxnet is imported)
from bort.errors import run_cli
from bort.finetune.tasks import task_names
from bort.io import check_writable
from bort.inference.task_prediction import PredictConfig
from bort.text.gluonnlp_files import GLUONNLP_DATASET
from bort.text.tokenizer import add_tokenizer_args, tokenizer_from_args

log = logging.getLogger("predict")
D = PredictConfig()


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task_name", required=True, choices=task_names(), metavar="TASK")
    p.add_argument("--model_parameters", required=True, help="a fine-tuned checkpoint of this task (.params)")
    p.add_argument("--data_dir", default=None, help="the task's data folder (default: the task's usual place)")
    p.add_argument("--segment", default=D.segment, help="segment to predict (dev, test, dev_matched, ...)")
    p.add_argument("--mode", default=D.mode, choices=["fp32", "fused", "bf16", "int8"],
                   help="int8 (default): fastest, calibrated on --calib_size sequences; fp32: exact")
    p.add_argument("--batch_size", type=int, default=D.batch_size)
    p.add_argument("--max_len", type=int, default=D.max_len, help="maximum sequence length (with special tokens)")
    p.add_argument("--calib_segment", default=D.calib_segment,
                   help="segment whose sentences calibrate INT8 (default: --segment)")
    p.add_argument("--calib_size", type=int, default=D.calib_size, help="sequences used to calibrate INT8")
    p.add_argument("--calib_mode", default=D.calib_mode, choices=["naive", "entropy"])
    p.add_argument("--output_dir", default=D.output_dir)
    p.add_argument("--engine", default="naive", choices=["naive", "threaded"],
                   help="MXNet engine (bort.runtime.configure_inference_engine): naive is faster on free cores, "
                        "threaded on a machine that is busy with other work")
    p.add_argument("--omp_wait", default="auto", choices=["auto", "active", "passive"],
                   help="how idle OpenMP threads wait (bort.runtime.configure_omp_wait): active spins (fastest on "
                        "free cores), passive sleeps (much faster on a busy machine), auto picks passive when the "
                        "load average exceeds the cores")
    add_tokenizer_args(p, dataset_name=GLUONNLP_DATASET)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    from bort.runtime import configure_inference_engine, configure_omp_wait
    engine = configure_inference_engine(args.engine)  # before the first MXNet import
    omp_wait = configure_omp_wait(args.omp_wait)
    import mxnet as mx

    # MXNet creates its engine on first use, or else at exit, where its "start using engine" line (logged when an
    # engine is named) would follow our error line: create it now, so that an error is the last line.
    mx.nd.waitall()
    log.info("MXNet engine %s, OpenMP wait %s", engine, omp_wait)
    from bort.inference.task_prediction import predict_segment

    config = PredictConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(PredictConfig)})
    check_writable(config.output_dir, "--output_dir")  # before the model is loaded and the segment predicted
    result = predict_segment(config, tokenizer_from_args(args))
    print(f"predictions={result['path']}")
    if result["metrics"]:
        print("metrics=" + json.dumps(result["metrics"], sort_keys=True))
    print(f"throughput_seqs_per_s={result['sequences_per_s']:.2f}")


if __name__ == "__main__":
    run_cli(main)()
