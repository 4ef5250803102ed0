"""The whole search: candidates, timing, the error surrogate of the selected ones, W, ranking, outputs.

    settings = SearchSettings(space="cpu_scaled", train=..., heldout=..., teacher_cache="beside", ...)
    summary = run_search(settings)

Steps: (1) the space's candidates, sorted by encoder parameters (ties: operation count); (2) the teacher cache of
the training and held-out shards (an existing one, or built once from --teacher_ckpt_dir); (3) CPU timing of every
candidate and of the maximum point T in one worker process; (4) stage 1: the pivots of the ε-intervals, each
trained s steps per θ and scored on B; with `refine`, stage 2: the other members of the winning interval;
(5) W, rejection, Pareto front, the chosen candidate: results.{json,csv,md} and plot.png in the output directory.

Resume: every candidate's result is written (atomically) to <candidate_dir>/<name>.json when done, with a
fingerprint of the settings that determine ê; a rerun skips the candidates whose file matches. Timing is kept in
timing.json. Distribution: under horovodrun rank r evaluates the stage's pending candidates j with j mod size == r
(each on its own GPU or the CPU); with `gpus`, one worker process per GPU does the same. Either way every candidate
trains on one device, alone.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time

import bort  # noqa: F401
from bort.errors import BortError
from bort.io import read_json, write_json
from bort.pretrain.extraction import evaluate, fptas, timing
from bort.pretrain.extraction.objectives import best_by_w, rejection_reason, w_coefficient
from bort.pretrain.extraction.report import write_reports
from bort.pretrain.extraction.space import (encoder_parameters, load_space, operation_counts, parse_architecture,
                                            total_parameters)

log = logging.getLogger(__name__)
SPEEDS = ("measured", "operations")
# Settings that do not change a candidate's ê: a result computed under other values of these is reused.
NOT_IN_FINGERPRINT = ("space", "out_dir", "candidate_dir", "maximum_point", "eps", "pivot", "refine", "speed",
                      "timing_batch", "timing_seq_len", "timing_threads", "timing_repeats", "timing_rounds",
                      "gpus", "progress", "keep_checkpoints", "teacher_ckpt_dir", "teacher_model")


@dataclasses.dataclass
class SearchSettings:
    """Every input of a search (the flags of scripts/extract_subarchitecture.py)."""

    space: str = "cpu_scaled"
    train: str = None
    heldout: str = None
    out_dir: str = "extraction"
    candidate_dir: str = None  # per-candidate results (default <out_dir>/candidates); searches may share one
    teacher_cache: str = None  # directory of <shard>.topk caches of train and held-out shards, or "beside"
    teacher_ckpt_dir: str = None  # without teacher_cache: the teacher, cached once beside the shards
    teacher_model: str = "roberta_24_1024_16"
    maximum_point: str = None  # e.g. "D24-A16-H1024-I4096"; default: the space's
    eps: int = 1
    pivot: str = "first"
    refine: bool = False
    steps: int = 100  # s
    thetas: str = '[{"lr": 1e-4}]'  # Θ
    error_proxy: str = "distill"
    speed: str = "measured"
    base_model: str = "bort_4_8_768_1024"  # dropout, vocabulary default, max length of every candidate
    max_length: int = None
    batch_size: int = 32
    batch_size_eval: int = 32
    mlm_weight: float = 0.1
    teacher_ce_weight: float = 0.5
    temperature: float = 2.0
    seed: int = 0
    dtype: str = "float32"
    cpu_only: bool = False
    timing_batch: int = 1
    timing_seq_len: int = 128
    timing_threads: int = 1
    timing_repeats: int = 10
    timing_rounds: int = 3
    gpus: str = None
    keep_checkpoints: bool = False
    progress: bool = True


def check_settings(s):
    for flag in ("train", "heldout"):
        if not getattr(s, flag):
            raise BortError(f"--{flag}: no shards given")
    if s.speed not in SPEEDS:
        raise BortError(f"--speed must be one of {list(SPEEDS)}, got {s.speed!r}")
    if s.error_proxy not in evaluate.PROXIES:
        raise BortError(f"--error_proxy must be one of {list(evaluate.PROXIES)}, got {s.error_proxy!r}")
    if s.steps < 1:
        raise BortError(f"--steps must be >= 1, got {s.steps}")
    if not s.teacher_cache and not s.teacher_ckpt_dir:
        raise BortError("give the teacher as --teacher_cache (preferred: cached top-k of the training and held-out "
                        "shards) or --teacher_ckpt_dir (cached beside the shards first)")
    fptas.intervals([], s.eps)
    fptas.pivot_of([None], s.pivot)


class Search:
    """The plan of one search (deterministic from its settings and the files in its directories)."""

    def __init__(self, settings):
        check_settings(settings)
        from bort.model import get_config  # noqa: PLC0415
        from bort.pretrain.batches import shard_metadata  # noqa: PLC0415

        self.settings = s = settings
        self.thetas = evaluate.parse_thetas(s.thetas)
        self.space = load_space(s.space)
        self.maximum = parse_architecture(s.maximum_point) if s.maximum_point else self.space.maximum_point
        meta = shard_metadata(s.train)
        self.base_model = get_config(s.base_model, vocab_size=int(meta["vocab_size"]), max_length=s.max_length)
        self.candidate_dir = s.candidate_dir or os.path.join(s.out_dir, "candidates")
        ops = {}
        for a in self.space.candidates() + [self.maximum]:
            ops[a] = operation_counts(a, s.timing_batch, s.timing_seq_len)["total"]
        self.ops = ops
        self.ordered = fptas.sort_by_size(self.space.candidates(), encoder_parameters, ops.get)
        self.fingerprint = hashlib.sha256(json.dumps(
            {k: v for k, v in dataclasses.asdict(s).items() if k not in NOT_IN_FINGERPRINT}, sort_keys=True,
            default=str).encode()).hexdigest()[:16]

    def timings(self):
        """The stored CPU timings (timing.json, written by `measure` before any training)."""
        path = os.path.join(self.settings.out_dir, "timing.json")
        return read_json(path, "timing results")["candidates"] if os.path.isfile(path) else None

    def result_path(self, arch):
        return os.path.join(self.candidate_dir, f"{arch.name}.json")

    def load_result(self, arch):
        """A candidate's stored result when it was computed under this search's ê settings, else None."""
        path = self.result_path(arch)
        if not os.path.isfile(path):
            return None
        result = read_json(path, "a candidate result")
        if result.get("fingerprint") != self.fingerprint:
            raise BortError(f"{path}: result of a search with other training settings (fingerprint "
                            f"{result.get('fingerprint')}, this one {self.fingerprint}); use another --output_dir "
                            f"or --candidate_dir")
        return result

    def stage(self, k):
        """The candidates of stage k (1: the pivots; 2: the rest of the winning interval, with --refine)."""
        s = self.settings
        first = fptas.pivots(self.ordered, s.eps, s.pivot)
        if k == 1:
            return first
        if not s.refine or s.eps == 1:
            return []
        rows = [self.row(a, self.timings()) for a in first]
        best = best_by_w([r for r in rows if r is not None])
        if best is None:
            return []
        winner = next(a for a in first if a.name == best["name"])
        return [a for a in fptas.interval_containing(self.ordered, s.eps, winner) if a not in first]

    def row(self, arch, timings):
        """The candidate's objectives and W (None when it has no result yet)."""
        result = self.load_result(arch)
        if result is None:
            return None
        return self.objectives(arch, timings, result)

    def objectives(self, arch, timings, result=None):
        s, base = self.settings, self.base_model
        p, p_t = encoder_parameters(arch), encoder_parameters(self.maximum)
        ms = (timings or {}).get(arch.name, {}).get("median_ms")
        ms_t = (timings or {}).get(self.maximum.name, {}).get("median_ms")
        row = {"name": arch.name, **arch.to_dict(), "params_encoder": p,
               "params_total": total_parameters(arch, base.vocab_size, base.max_length),
               "operations": self.ops[arch], "cpu_ms": ms, "evaluated": result is not None}
        speed, speed_t = (ms, ms_t) if s.speed == "measured" else (self.ops[arch], self.ops[self.maximum])
        row["rejected"] = rejection_reason(p, speed, p_t, speed_t) if speed is not None else None
        row["error"] = row["W"] = row["W_measured"] = row["W_operations"] = None
        if result is not None:
            row.update(error=result["error"], theta=result["theta"], train_seconds=result["seconds"],
                       heldout=result["per_theta"][result["theta_index"]]["eval"])
            if math.isfinite(result["error"]) and result["error"] > 0:
                speeds = {"W_measured": (ms, ms_t), "W_operations": (self.ops[arch], self.ops[self.maximum])}
                for key, (i, i_t) in speeds.items():
                    if i is not None:
                        row[key] = w_coefficient(p, i, result["error"], p_t, i_t)
                row["W"] = row["W_measured" if s.speed == "measured" else "W_operations"]
            else:
                row["rejected"] = row["rejected"] or f"error surrogate not positive and finite ({result['error']})"
        return row


def train_config(settings):
    from bort.pretrain.loop import PretrainConfig  # noqa: PLC0415

    s = settings
    return PretrainConfig(data=s.train, data_eval=s.heldout, teacher_cache=s.teacher_cache or "beside",
                          num_steps=s.steps, batch_size=s.batch_size, batch_size_eval=s.batch_size_eval,
                          mlm_weight=s.mlm_weight, teacher_ce_weight=s.teacher_ce_weight,
                          distillation_temperature=s.temperature, seed=s.seed, dtype=s.dtype, cpu_only=s.cpu_only,
                          ckpt_interval=s.steps, log_interval=s.steps, progress=False, overwrite_ckpt_dir=True,
                          warmup_ratio=0.1, teacher_ckpt_dir=None)


def evaluate_share(search, stage, rank, size, local_rank=0, progress=True):
    """Train and score this worker's pending candidates of `stage` (j mod size == rank); returns how many."""
    from bort.train.distributed import Distributed  # noqa: PLC0415

    # by position in the stage's list, not among the pending ones: a rank that starts late must not see another
    # rank's fresh results and shift the assignment
    mine = [a for j, a in enumerate(search.stage(stage)) if j % size == rank and search.load_result(a) is None]
    single = Distributed(use_horovod=False)
    single.local_rank = local_rank  # this worker's GPU; the candidate trains alone on it
    config = train_config(search.settings)
    bar = None
    if progress and rank == 0 and mine:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(mine), desc=f"stage {stage} (rank 0 of {size})", unit="candidate", dynamic_ncols=True)
    for arch in mine:
        work = os.path.join(search.settings.out_dir, "work", arch.name)
        result = evaluate.estimate_error(arch, search.base_model, config, search.thetas, search.settings.error_proxy,
                                         work, single, search.settings.keep_checkpoints)
        result.update(architecture=arch.to_dict(), name=arch.name, fingerprint=search.fingerprint, stage=stage)
        write_json(search.result_path(arch), result)
        log.info("%s: error %.4f (theta %d) in %.1f s", arch.name, result["error"], result["theta_index"],
                 result["seconds"])
        if bar:
            bar.update(1)
            bar.set_postfix(last=arch.name, error=f"{result['error']:.3f}")
    if bar:
        bar.close()
    return len(mine)


def ensure_cache(settings):
    """Build the teacher cache beside the shards from --teacher_ckpt_dir when no --teacher_cache is given, and
    check that the held-out shards have one when the proxy needs the teacher."""
    from bort.pretrain.teacher_cache import CacheReader, build_cache  # noqa: PLC0415
    from data.shard_files import list_shards  # noqa: PLC0415

    s = settings
    if not s.teacher_cache:
        for data in (s.train, s.heldout):
            build_cache(data, "beside", s.teacher_ckpt_dir, s.teacher_model, temperature=s.temperature,
                        cpu_only=s.cpu_only, progress=s.progress)
        s = dataclasses.replace(s, teacher_cache="beside")
    reader = CacheReader(s.teacher_cache, s.temperature)
    for flag, data in (("--train", s.train), ("--heldout", s.heldout)):
        if not reader.has_caches(list_shards(data)) and (flag == "--train" or s.error_proxy == "distill"):
            raise BortError(f"{flag} {data}: no teacher cache in {s.teacher_cache} for every shard; write it with "
                            f"scripts/cache_teacher.py --data {data} --cache_dir {s.teacher_cache}")
    return s


def measure(search):
    """timing.json of every candidate and T (reused when its request is unchanged)."""
    s = search.settings
    path = os.path.join(s.out_dir, "timing.json")
    archs = search.ordered + [search.maximum]
    request = {"configs": {a.name: a.model_config(search.base_model).to_dict() for a in archs},
               "batch_size": s.timing_batch, "seq_len": s.timing_seq_len, "repeats": s.timing_repeats,
               "warmup": 2, "rounds": s.timing_rounds}
    request_path = os.path.join(s.out_dir, "timing_request.json")
    if os.path.isfile(path) and os.path.isfile(request_path) and read_json(request_path) == request:
        old = read_json(path, "timing results")
        if old.get("threads") == s.timing_threads:
            return old["candidates"]
    write_json(request_path, request)
    log.info("timing %d architectures on CPU (%d threads, batch %d x %d tokens, %d rounds x %d repeats)",
             len(archs), s.timing_threads, s.timing_batch, s.timing_seq_len, s.timing_rounds, s.timing_repeats)
    return timing.run_worker(request_path, path, s.timing_threads)["candidates"]


def run_search(settings, dist=None):
    """Run (or resume) a search; on the root returns the summary dict written to results.json, else None."""
    from bort.train.distributed import Distributed  # noqa: PLC0415

    start = time.time()
    dist = dist or Distributed()
    os.makedirs(settings.out_dir, exist_ok=True)
    if dist.is_root:
        settings = ensure_cache(settings)
    else:
        settings = dataclasses.replace(settings, teacher_cache=settings.teacher_cache or "beside")
    search = Search(settings)
    timings = measure(search) if dist.is_root else None
    dist.barrier()
    trained = 0
    for stage in (1, 2):
        if settings.gpus and dist.size == 1:
            trained += run_gpu_workers(search, stage)
        else:
            trained += int(dist.allreduce_sum([evaluate_share(search, stage, dist.rank, dist.size, dist.local_rank,
                                                              settings.progress)])[0])
            dist.barrier()
    if not dist.is_root:
        return None
    return write_reports(search, timings, trained, time.time() - start)


def run_gpu_workers(search, stage):
    """One worker process per GPU of --gpus for `stage`; returns how many candidates they trained."""
    gpus = [g.strip() for g in search.settings.gpus.split(",") if g.strip()]
    pending = [a for a in search.stage(stage) if search.load_result(a) is None]
    if not pending:
        return 0
    settings_path = os.path.join(search.settings.out_dir, "settings.json")
    write_json(settings_path, dataclasses.asdict(search.settings))
    procs = []
    for rank, gpu in enumerate(gpus):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
        procs.append(subprocess.Popen([sys.executable, "-m", "bort.pretrain.extraction.runner", settings_path,
                                       str(stage), str(rank), str(len(gpus))], env=env))
    failed = [gpus[k] for k, p in enumerate(procs) if p.wait() != 0]
    if failed:
        raise BortError(f"extraction workers on GPUs {failed} failed (see their output above); rerun to resume")
    return len(pending)


def worker_main(argv):
    """python -m bort.pretrain.extraction.runner SETTINGS.json STAGE RANK SIZE (started by run_gpu_workers)."""
    settings_path, stage, rank, size = argv
    settings = SearchSettings(**read_json(settings_path, "search settings"))
    evaluate_share(Search(settings), int(stage), int(rank), int(size), 0, settings.progress and rank == "0")


if __name__ == "__main__":
    from bort.errors import run_cli

    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    run_cli(worker_main)(sys.argv[1:])
