"""Agora, the algorithm (de Wynter, arXiv 2010.07990, and the author's notes "Bort: Algorithms and Applications").

Inputs: the model to fine-tune (the flags after `--`), a trained model of the task with dev accuracy >= 2/3
(`--teacher_parameters`), generating functions (bort.agora.generators), the training set D, the evaluation set E (a seeded
part of the official dev set; the rest is held out and only scores the final model) and Θ (the grid file).

    round k:  fine-tune once per θ in Θ_k on D_k (finetune_bort.py runs, dev = E); keep the best model seen
              in any round; collect the E examples it gets wrong (argmax != gold); generate variants of them and
              label the variants with the trained model; D_{k+1} = D_k + variants; Θ_{k+1} = prune(Θ_k);
              stop when Θ_{k+1} is empty (or after --max_rounds).
    replay:   when a round's best E score falls below the previous round's (plus --replay_margin), the round is
              rolled back (its folder kept as round_NN.replayR) and redone on data generated with a new generator
              seed, at most --max_replays times per round.

Layout of `<output_dir>`: `split.json` and `heldout/` (the held-out dev part, task format); `round_NN/data/`
(D_k and E in the task's format), `round_NN/<trial>/` (one finetune_bort.py run each: bort.agora.grid.TrialRunner),
`round_NN/generated.jsonl` and `round_NN/round.json` (written last: a round without it is rerun, its finished trials kept);
`rounds.md` / `rounds.csv` (one row per round), `result.json` (final E and held-out scores).
"""
import csv
import json
import os

import numpy as np

from bort.agora import generators as augment
from bort.agora.grid import TrialRunner, collect, grid_path, inference_command, read_grid, trials
from bort.agora.data_files import check_supported, label_index, raw_label, split_dev, write_examples
from bort.errors import BortError
from bort.io import atomic_write, read_json, write_json
from bort.finetune.tasks import get_task, main_score

MIN_TEACHER_ACCURACY = 2.0 / 3.0


# ---- Θ --------------------------------------------------------------------------------------------------
def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prune(scored):
    """Θ_{k+1} from [(name, setting, score)]: sort by score (best first); find the longest common sequence of
    values, rooted at the first hyperparameter (a common prefix in the grid file's key order), that any two sets
    share; of each group of sets sharing such a prefix keep only the best. At least one set goes per round; a
    single set left is removed (Θ empty: stop). Failed trials (score None) rank last."""
    ranked = sorted(scored, key=lambda t: (t[2] is None, -(t[2] if t[2] is not None else 0.0), t[0]))
    if len(ranked) <= 1:
        return []
    values = [tuple(str(v) for v in setting.values()) for _, setting, _ in ranked]
    longest = max(common_prefix(values[i], values[j]) for i in range(len(values)) for j in range(i + 1, len(values)))
    groups = {}
    for item, seq in zip(ranked, values):
        groups.setdefault(seq[:longest], []).append(item)
    keep = {group[0][0] for group in groups.values()}
    return [item for item in ranked if item[0] in keep]


# ---- the trained model (labeler) -----------------------------------------------------------------------
class Labeler:
    def __init__(self, task, path, tokenizer, max_len, batch_size=32):
        from bort.finetune.checkpoints import load_task_checkpoint

        self.task, self.path, self.tokenizer, self.max_len, self.batch_size = task, path, tokenizer, max_len, \
            batch_size
        self.model = load_task_checkpoint(path, task)

    def predict(self, examples):
        from bort.finetune.predict import predict_outputs

        instances = self.task.encode(examples, self.tokenizer, self.max_len)
        outputs = predict_outputs(self.task, self.model, instances, self.tokenizer.pad_id, self.batch_size)
        return self.task.predict(examples, instances, outputs)

    def check(self, dev_by_segment):
        """Dev accuracy over every official dev example; one-line error below 2/3."""
        examples = [ex for exs in dev_by_segment.values() for ex in exs]
        preds = self.predict(examples)
        gold = [label_index(self.task, ex) for ex in examples]
        accuracy = float(np.mean(np.asarray(preds) == np.asarray(gold)))
        if accuracy < MIN_TEACHER_ACCURACY:
            raise BortError(f"{self.path}: the trained model's dev accuracy is {accuracy:.4f}, below the 2/3 Agora "
                            f"needs (--teacher_parameters: a stronger {self.task.name} checkpoint)")
        return accuracy


def score_examples(task, checkpoint, examples_by_segment, tokenizer, max_len, batch_size=32):
    """Metrics and main score of a task checkpoint on labelled examples (the held-out part)."""
    from bort.finetune.checkpoints import load_task_checkpoint
    from bort.finetune.predict import predict_outputs

    model = load_task_checkpoint(checkpoint, task)
    metrics = {}
    for segment, examples in examples_by_segment.items():
        instances = task.encode(examples, tokenizer, max_len)
        outputs = predict_outputs(task, model, instances, tokenizer.pad_id, batch_size)
        metrics[segment] = task.metrics(task.predict(examples, instances, outputs), task.gold(examples))
    return metrics, main_score(task, metrics)


# ---- the driver -----------------------------------------------------------------------------------------
def finetune_options(finetune_args):
    """The flags after `--` that the driver itself needs (data, vocabulary, length), parsed as finetune_bort.py
    would."""
    import argparse

    from bort.text.gluonnlp_files import GLUONNLP_DATASET
    from bort.text.tokenizer import add_tokenizer_args

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--max_len", type=int, default=512)
    parser.add_argument("--dev_batch_size", type=int, default=8)
    parser.add_argument("--model_config", default="bort_4_8_768_1024")
    parser.add_argument("--pretrained_parameters", default=None)
    add_tokenizer_args(parser, dataset_name=GLUONNLP_DATASET)
    options, _ = parser.parse_known_args(list(finetune_args))
    return options


class Agora:
    """One Agora run, configured by an AgoraConfig (bort.agora.options); `run()` does (or resumes) it."""

    def __init__(self, config):
        from bort.text.tokenizer import tokenizer_from_args

        self.config = config
        self.runner = TrialRunner.of(config)
        self.task = get_task(config.task_name)
        check_supported(self.task)
        self.out = config.output_dir
        os.makedirs(self.out, exist_ok=True)
        self.options = finetune_options(config.finetune_args)
        data_dir = self.options.data_dir or self.task.default_data_dir()
        self.tokenizer = tokenizer_from_args(self.options, self.options.pretrained_parameters)
        self.train = self.task.read(self.task.train_segment, data_dir)
        official_dev = {seg: self.task.read(seg, data_dir) for seg in self.task.dev_segments}
        for examples in [self.train] + list(official_dev.values()):
            for ex in examples:
                label_index(self.task, ex)  # a bad label fails here, before any run
        split = split_dev(self.task, official_dev, config.heldout_fraction, config.split_seed)
        self.evaluation = {seg: e for seg, (e, _) in split.items()}
        self.heldout = {seg: h for seg, (_, h) in split.items() if h}
        self._write_split(split)
        self.theta0 = list(trials(read_grid(grid_path(config.task_name, config.grid))))
        names = [n for n, _ in self.theta0]
        if len(set(names)) != len(names):
            raise BortError(f"{grid_path(config.task_name, config.grid)}: the grid has repeated settings")
        self.mlm = None
        if "mlm" in config.generators and config.mlm_parameters:
            from bort.weights.checkpoint import load_model

            mlm = load_model(config.mlm_parameters, config=self.options.model_config, use_decoder=True)
            self.mlm = augment.MlmReplacer(mlm, self.tokenizer)
        self.functions = augment.make_generators(config.generators, self.mlm)
        self.labeler = Labeler(self.task, config.teacher_parameters, self.tokenizer, self.options.max_len)
        self.teacher_accuracy = self.labeler.check(official_dev)
        print(f"agora: trained model {config.teacher_parameters}: dev accuracy {self.teacher_accuracy:.4f}; "
              f"|D|={len(self.train)}, |E|={sum(map(len, self.evaluation.values()))}, "
              f"held out={sum(map(len, self.heldout.values()))}, |Θ|={len(self.theta0)}", flush=True)

    def _write_split(self, split):
        record = {"seed": self.config.split_seed, "heldout_fraction": self.config.heldout_fraction,
                  "segments": {seg: {"E": [ex["where"] for ex in e], "heldout": [ex["where"] for ex in h]}
                               for seg, (e, h) in split.items()}}
        path = os.path.join(self.out, "split.json")
        if os.path.isfile(path) and read_json(path)["segments"] != record["segments"]:
            raise BortError(f"{path}: this output folder was made with another dev split (--split_seed, "
                            f"--heldout_fraction or data); use a new --output_dir")
        write_json(path, record)
        for seg, examples in self.heldout.items():
            write_examples(self.task, seg, examples, os.path.join(self.out, "heldout"))

    # ---- one round ----
    def round_dir(self, k):
        return os.path.join(self.out, f"round_{k:02d}")

    def write_round_data(self, k, train):
        folder = os.path.join(self.round_dir(k), "data")
        write_examples(self.task, self.task.train_segment, train, folder)
        for seg, examples in self.evaluation.items():
            write_examples(self.task, seg, examples, folder)
        return folder

    def mistakes(self, trial_folder):
        """[segment, row] of the E examples the model of a finished trial gets wrong (its dev_predictions.jsonl)."""
        path = os.path.join(trial_folder, "dev_predictions.jsonl")
        if not os.path.isfile(path):
            raise BortError(f"{path}: not found; the trial's finetune_bort.py did not write dev predictions")
        wrong = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                if record["prediction"] != record["label"]:
                    wrong.append([record["segment"], record["row"]])
        return wrong

    def generate(self, k, replay, mistakes, train):
        """Variants of round k's mistakes, labelled by the trained model; `replay` > 0: the regeneration for the
        replay of round k + 1 (each (k, replay) has its own seed)."""
        rng = np.random.RandomState(self.config.seed * 100003 + k * 101 + replay)
        seen = {augment.example_key(self.task, ex) for ex in train}
        new = augment.generate(self.task, mistakes, self.functions, self.config.variants, rng, seen)
        if new:
            for ex, label in zip(new, self.labeler.predict(new)):
                ex["label"] = raw_label(self.task, label)
        return new

    @staticmethod
    def write_generated(folder, examples):
        with atomic_write(os.path.join(folder, "generated.jsonl")) as handle:
            for ex in examples:
                handle.write(json.dumps(ex, ensure_ascii=False) + "\n")

    def run(self):
        config, state = self.config, self.load_state()
        theta = [t for t in self.theta0 if t[0] in state["theta"]] if state["theta"] is not None else self.theta0
        train = list(self.train) + state["generated"]
        k = len(state["rounds"]) + 1
        while theta and k <= config.max_rounds:
            folder = self.round_dir(k)
            data_dir = self.write_round_data(k, train)
            self.runner.run_pending(theta, folder, data_dir=data_dir, label=f"agora round {k}")
            rows = collect(folder, theta)
            scored = [(r["trial"], dict(t[1]), r["score"]) for t in theta for r in rows if r["trial"] == t[0]]
            done = [r for r in rows if r["score"] is not None]
            if not done:
                raise BortError(f"{folder}: every trial of round {k} failed; see the log.txt of each trial")
            best_round = done[0]
            previous = state["rounds"][-1] if state["rounds"] else None
            replays = state["replays"].get(str(k), 0)
            falls = previous and best_round["score"] < previous["round_best_score"] + config.replay_margin
            if falls and replays < config.max_replays:
                # replay: roll the round back, regenerate its data from the previous round's mistakes
                replay = replays + 1
                while os.path.exists(f"{folder}.replay{replay}"):
                    replay += 1
                os.replace(folder, f"{folder}.replay{replay}")
                state["replays"][str(k)] = replays + 1
                mistakes = [self.evaluation[s][r] for s, r in previous["mistake_rows"]]
                kept = state["generated"][:previous["generated_before"]]
                new = self.generate(k - 1, replays + 1, mistakes, list(self.train) + kept)
                self.write_generated(self.round_dir(k - 1), new)
                previous.update(generated=len(new), generator_replay=replays + 1)
                write_json(os.path.join(self.round_dir(k - 1), "round.json"), previous)
                state["generated"] = kept + new
                train = list(self.train) + state["generated"]
                print(f"agora: round {k} best E score {best_round['score']:.4f} < round {k - 1}'s "
                      f"{previous['round_best_score']:.4f}: replaying it with {len(new)} regenerated examples",
                      flush=True)
                self.save_state(state, theta)
                continue
            if state["best"] is None or best_round["score"] > state["best"]["score"]:
                state["best"] = {"score": best_round["score"], "checkpoint": best_round["checkpoint"], "round": k,
                                 "trial": best_round["trial"], "folder": os.path.join(folder, best_round["trial"])}
            rows_wrong = self.mistakes(state["best"]["folder"])
            wrong = [self.evaluation[s][r] for s, r in rows_wrong]
            next_theta = prune(scored) if k < config.max_rounds else []
            generated_before = len(state["generated"])
            new = self.generate(k, 0, wrong, train) if next_theta else []  # replays of round k+1 use 1, 2, ...
            self.write_generated(folder, new)
            record = {"round": k, "replays": replays, "theta": [n for n, _ in theta], "runs": len(theta),
                      "round_best_trial": best_round["trial"], "round_best_score": best_round["score"],
                      "best_round": state["best"]["round"], "best_score": state["best"]["score"],
                      "train_size": len(train), "mistakes": len(wrong), "mistake_rows": rows_wrong,
                      "generated": len(new), "generated_before": generated_before,
                      "next_theta": [n for n, _, _ in next_theta]}
            write_json(os.path.join(folder, "round.json"), record)
            state["rounds"].append(record)
            state["generated"] = state["generated"] + new
            train = list(self.train) + state["generated"]
            theta = [(n, s) for n, s, _ in next_theta]
            self.save_state(state, theta)
            print(f"agora: round {k}: best E {best_round['score']:.4f} ({best_round['trial']}), best so far "
                  f"{state['best']['score']:.4f}, {len(wrong)} mistakes on E, {len(new)} new examples, "
                  f"|Θ| {len(record['theta'])} -> {len(theta)}", flush=True)
            k += 1
        return self.finish(state)

    # ---- state, resume ----
    def state_path(self):
        return os.path.join(self.out, "agora_state.json")

    def load_state(self):
        """Rounds recorded by round.json files; a round without one (interrupted) is rerun."""
        state = {"rounds": [], "generated": [], "theta": None, "best": None, "replays": {}}
        if os.path.isfile(self.state_path()):
            saved = read_json(self.state_path(), "Agora's state")
            state["replays"] = saved.get("replays", {})
        k = 1
        while os.path.isfile(os.path.join(self.round_dir(k), "round.json")):
            record = read_json(os.path.join(self.round_dir(k), "round.json"), "a finished Agora round")
            state["rounds"].append(record)
            with open(os.path.join(self.round_dir(k), "generated.jsonl"), encoding="utf-8") as handle:
                state["generated"] += [json.loads(line) for line in handle if line.strip()]
            folder = os.path.join(self.round_dir(k), record["round_best_trial"])
            if state["best"] is None or record["round_best_score"] > state["best"]["score"]:
                result = read_json(os.path.join(folder, "result.json"), "a trial result")
                state["best"] = {"score": record["round_best_score"], "checkpoint": result["checkpoint"],
                                 "round": k, "trial": record["round_best_trial"], "folder": folder}
            state["theta"] = record["next_theta"]
            k += 1
        if state["rounds"]:
            print(f"agora: resuming after round {len(state['rounds'])}", flush=True)
        return state

    def save_state(self, state, theta):
        write_json(self.state_path(), {"replays": state["replays"], "theta": [n for n, _ in theta],
                                       "best": state["best"], "rounds": len(state["rounds"])})

    # ---- the end ----
    def finish(self, state):
        best = state["best"]
        heldout_metrics, heldout_score = ({}, None)
        if self.heldout:
            heldout_metrics, heldout_score = score_examples(self.task, best["checkpoint"], self.heldout,
                                                            self.tokenizer, self.options.max_len)
        runs = sum(r["runs"] for r in state["rounds"]) + replayed_runs(self.out)
        result = {"task": self.task.name, "rounds": len(state["rounds"]), "runs": runs,
                  "teacher_accuracy": self.teacher_accuracy, "best": best, "E_score": best["score"],
                  "heldout_score": heldout_score, "heldout": heldout_metrics,
                  "split": {"seed": self.config.split_seed, "heldout_fraction": self.config.heldout_fraction},
                  "generated": len(state["generated"]), "replays": state["replays"]}
        write_json(os.path.join(self.out, "result.json"), result)
        write_round_tables(self.out, state["rounds"], result)
        return result


def replayed_runs(output_dir):
    """Fine-tuning runs spent in rolled-back rounds (their folders are kept as round_NN.replayR)."""
    count = 0
    for name in sorted(os.listdir(output_dir)):
        if ".replay" in name and name.startswith("round_"):
            folder = os.path.join(output_dir, name)
            count += sum(os.path.isfile(os.path.join(folder, t, "result.json")) for t in os.listdir(folder))
    return count


ROUND_FIELDS = ["round", "replays", "runs", "train_size", "round_best_trial", "round_best_score", "best_round",
                "best_score", "mistakes", "generated"]


def write_round_tables(output_dir, rounds, result):
    with atomic_write(os.path.join(output_dir, "rounds.csv")) as handle:
        writer = csv.DictWriter(handle, fieldnames=ROUND_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rounds)
    with atomic_write(os.path.join(output_dir, "rounds.md")) as handle:
        handle.write("| " + " | ".join(ROUND_FIELDS) + " |\n|" + "---|" * len(ROUND_FIELDS) + "\n")
        for r in rounds:
            cells = [f"{r[f]:.4f}" if isinstance(r[f], float) else str(r[f]) for f in ROUND_FIELDS]
            handle.write("| " + " | ".join(cells) + " |\n")
        held = "n/a" if result["heldout_score"] is None else f"{result['heldout_score']:.4f}"
        handle.write(f"\nFinal model: round {result['best']['round']}, {result['best']['trial']}: E score "
                     f"{result['E_score']:.4f}, held-out score {held} (split seed {result['split']['seed']}, "
                     f"held-out fraction {result['split']['heldout_fraction']}); {result['runs']} fine-tuning "
                     f"runs; trained model's dev accuracy {result['teacher_accuracy']:.4f}.\n")


def run_agora(config):
    """Run (or resume) Agora as an AgoraConfig says; returns result.json's record and `predict`, the
    finetune_bort.py --only_inference command line for the final model."""
    result = Agora(config).run()
    result["predict"] = inference_command(config.task_name, result["best"]["checkpoint"],
                                          os.path.join(config.output_dir, "submission"), config.finetune_args)
    return result

