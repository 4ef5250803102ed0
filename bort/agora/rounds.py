"""Agora, the algorithm (de Wynter, arXiv 2010.07990, and the author's notes "Bort: Algorithms and Applications").

Inputs: the model to fine-tune (the flags after `--`), a trained model of the task (the labeler,
bort.agora.labelers: official score on E >= 2/3 and above the majority class's), generating functions
(bort.agora.generators), the training set D, the evaluation set E (a seeded part of the official dev set; the rest
is held out and only scores the final model) and Θ (the grid file). E is split again (seeded, --selection_fraction):
E_sel picks everything (each run's epoch: it is the runs' dev set; the round's best trial; the best model across
rounds; replays) and E_gen only provides the mistakes that drive generation, so the selection scores are not
inflated by data generated from the rows they are measured on.

    round k:  fine-tune once per θ in Θ_k on D_k (finetune_bort.py runs, dev = E_sel); keep the best model seen
              in any round; collect the E_gen examples it gets wrong (argmax != gold); generate variants of them
              and label the variants with the labeler; D_{k+1} = D_k + variants; Θ_{k+1} = prune(Θ_k)
              (bort.agora.pruning); stop when Θ_{k+1} is empty (or after --max_rounds).
    replay:   when a round's best E_sel score falls below the previous round's (plus --replay_margin), the round is
              rolled back (its folder kept as round_NN.replayR) and redone on data generated with a new generator
              seed, at most --max_replays times per round.

Layout of `<output_dir>`: `split.json` and `heldout/` (the held-out dev part, task format); `round_NN/data/`
(D_k and E_sel in the task's format), `round_NN/<trial>/` (one finetune_bort.py run each: bort.agora.grid.TrialRunner),
`round_NN/generated.jsonl` and `round_NN/round.json` (written last: a round without it is rerun, its finished
trials kept);
`rounds.md` / `rounds.csv` (one row per round), `result.json` (final E_sel and held-out scores),
`heldout_predictions.jsonl` (the final model's per-example held-out predictions). Every file read back on a resume
is checked (bort.agora.state): structure, paths inside the output directory, trials' commands and checksums.
"""
import csv
import json
import os

import numpy as np

from bort.agora import generators as augment
from bort.agora.data_files import check_supported, label_index, raw_label, split_dev, write_examples
from bort.agora.grid import CPU, TrialRunner, collect, grid_path, inference_command, read_grid, trials
from bort.agora.labelers import CheckpointLabeler, check_labeler, make_labeler
from bort.agora.pruning import prune
from bort.agora.state import INTEGER, LIST, NUMBER, OBJECT, TEXT, check_fields, inside, read_record, read_result, \
    trial_trust
from bort.errors import BortError
from bort.finetune.tasks import get_task, main_score
from bort.io import atomic_write, read_jsonl, write_json

SELECTION_SEED_OFFSET = 7919  # E's generation / selection split uses --split_seed + this


def predict_examples(task, checkpoint, examples_by_segment, tokenizer, max_len):
    """{segment: [predicted label index]} of a task checkpoint."""
    model = CheckpointLabeler(task, checkpoint, tokenizer, max_len)
    return {segment: model.predict(examples) for segment, examples in examples_by_segment.items()}


def score_examples(task, checkpoint, examples_by_segment, tokenizer, max_len):
    """(metrics, main score, predictions) of a task checkpoint on labelled examples (the held-out part)."""
    predictions = predict_examples(task, checkpoint, examples_by_segment, tokenizer, max_len)
    metrics = {seg: task.metrics(predictions[seg], task.gold(examples))
               for seg, examples in examples_by_segment.items()}
    return metrics, main_score(task, metrics), predictions


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
        if config.selection_fraction > 0:
            parts = split_dev(self.task, self.evaluation, config.selection_fraction,
                              config.split_seed + SELECTION_SEED_OFFSET)
            self.generation = {seg: g for seg, (g, _) in parts.items()}
            self.selection = {seg: sel for seg, (_, sel) in parts.items()}
        else:  # the paper's single dev set: E both drives generation and selects
            self.generation = self.selection = self.evaluation
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
        self.labeler = make_labeler(config, self.task, self.tokenizer, self.options.max_len)
        self.labeler_score, self.majority_score = check_labeler(self.labeler, self.task, self.evaluation)
        count = lambda part: sum(map(len, part.values()))  # noqa: E731
        print(f"agora: labeler {self.labeler.name}: official score on E {self.labeler_score:.4f} (majority class "
              f"{self.majority_score:.4f}); |D|={len(self.train)}, |E|={count(self.evaluation)} (selects: "
              f"{count(self.selection)}, generates: {count(self.generation)}), held out={count(self.heldout)}, "
              f"|Θ|={len(self.theta0)}", flush=True)

    def _write_split(self, split):
        rows = lambda examples: [ex["where"] for ex in examples]  # noqa: E731
        record = {"seed": self.config.split_seed, "heldout_fraction": self.config.heldout_fraction,
                  "selection_fraction": self.config.selection_fraction,
                  "segments": {seg: {"E": rows(e), "heldout": rows(h), "E_generation": rows(self.generation[seg]),
                                     "E_selection": rows(self.selection[seg])} for seg, (e, h) in split.items()}}
        path = os.path.join(self.out, "split.json")
        if os.path.isfile(path) and read_record(path, "Agora's dev split", {"segments": OBJECT})["segments"] != \
                record["segments"]:
            raise BortError(f"{path}: this output folder was made with another dev split (--split_seed, "
                            f"--heldout_fraction, --selection_fraction or data); use a new --output_dir")
        write_json(path, record)
        for seg, examples in self.heldout.items():
            write_examples(self.task, seg, examples, os.path.join(self.out, "heldout"))

    # ---- one round ----
    def round_dir(self, k):
        return os.path.join(self.out, f"round_{k:02d}")

    def write_round_data(self, k, train):
        folder = os.path.join(self.round_dir(k), "data")
        write_examples(self.task, self.task.train_segment, train, folder)
        for seg, examples in self.selection.items():
            write_examples(self.task, seg, examples, folder)
        return folder

    def mistakes(self, checkpoint):
        """[segment, row] of the E_gen examples a model gets wrong (row: index in E_gen's segment)."""
        predictions = predict_examples(self.task, checkpoint, self.generation, self.tokenizer, self.options.max_len)
        return [[seg, row] for seg, examples in self.generation.items()
                for row, (p, gold) in enumerate(zip(predictions[seg], self.task.gold(examples))) if p != gold]

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
            self.runner.run_pending(theta, folder, data_dir=data_dir, rerun_changed=config.rerun_changed,
                                    label=f"agora round {k}")
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
                mistakes = [self.generation[s][r] for s, r in previous["mistake_rows"]]
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
            rows_wrong = self.mistakes(state["best"]["checkpoint"])
            wrong = [self.generation[s][r] for s, r in rows_wrong]
            next_theta = prune(scored, config.prune_rule) if k < config.max_rounds else []
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
        """Rounds recorded by round.json files; a round without one (interrupted) is rerun. Every file read is
        checked (bort.agora.state) and the best trials' result sets must be the ones their runs wrote."""
        state = {"rounds": [], "generated": [], "theta": None, "best": None, "replays": {}}
        if os.path.isfile(self.state_path()):
            saved = read_record(self.state_path(), "Agora's state", {"replays": OBJECT})
            check_fields(saved["replays"], {k: INTEGER for k in saved["replays"]}, f"{self.state_path()}: 'replays'")
            state["replays"] = saved["replays"]
        names = [n for n, _ in self.theta0]
        k = 1
        while os.path.isfile(os.path.join(self.round_dir(k), "round.json")):
            path = os.path.join(self.round_dir(k), "round.json")
            record = read_record(path, "a finished Agora round", ROUND_RECORD)
            allowed = names if state["theta"] is None else state["theta"]
            for field, members, within in (("theta", record["theta"], allowed),
                                           ("next_theta", record["next_theta"], record["theta"]),
                                           ("round_best_trial", [record["round_best_trial"]], record["theta"])):
                if not all(isinstance(m, str) and m in within for m in members):
                    raise BortError(f"{path}: field {field!r}: expected names of this round's Θ (the grid's "
                                    f"settings), found {members!r:.80}")
            for row in record["mistake_rows"]:
                if not (isinstance(row, list) and len(row) == 2 and row[0] in self.generation and
                        isinstance(row[1], int) and 0 <= row[1] < len(self.generation[row[0]])):
                    raise BortError(f"{path}: field 'mistake_rows': expected [segment, row of E_gen], found {row!r}")
            state["rounds"].append(record)
            state["generated"] += self.read_generated(os.path.join(self.round_dir(k), "generated.jsonl"))
            if state["best"] is None or record["round_best_score"] > state["best"]["score"]:
                state["best"] = self.recorded_best(k, record)
            state["theta"] = record["next_theta"]
            k += 1
        if state["rounds"]:
            print(f"agora: resuming after round {len(state['rounds'])}", flush=True)
        return state

    def recorded_best(self, k, record):
        """The best trial of a finished round, trusted only when it is unchanged since its run."""
        folder = inside(self.out, os.path.join(self.round_dir(k), record["round_best_trial"]),
                        f"{self.round_dir(k)}/round.json: field 'round_best_trial'")
        setting = dict(self.theta0)[record["round_best_trial"]]
        distrust = trial_trust(folder, self.runner.command(folder, setting, CPU, os.path.join(self.round_dir(k),
                                                                                               "data")))
        if distrust:
            raise BortError(f"{folder}: the best trial of finished round {k} cannot be trusted: {distrust}; use a "
                            f"new --output_dir")
        result = read_result(folder)
        if result["score"] != record["round_best_score"]:
            raise BortError(f"{folder}/result.json: score {result['score']} differs from round.json's "
                            f"round_best_score {record['round_best_score']}")
        return {"score": record["round_best_score"], "checkpoint": result["checkpoint"], "round": k,
                "trial": record["round_best_trial"], "folder": folder}

    def read_generated(self, path):
        """A round's generated examples, each with the task's text fields and a label the task knows."""
        out = []
        if os.path.isfile(path) and os.path.getsize(path) == 0:  # a round that generated nothing
            return out
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            try:
                fields = augment.text_fields(self.task, record)
                texts = [augment.get_field(record, f) for f in fields]
            except (KeyError, IndexError, TypeError):
                raise BortError(f"{where}: expected the task's text fields") from None
            if not all(isinstance(t, str) for t in texts):
                raise BortError(f"{where}: expected text (strings) in the fields {fields}")
            self.task.label_index(record.get("label"), where)
            out.append(record)
        return out

    def save_state(self, state, theta):
        write_json(self.state_path(), {"replays": state["replays"], "theta": [n for n, _ in theta],
                                       "best": state["best"], "rounds": len(state["rounds"])})

    # ---- the end ----
    def finish(self, state):
        best = state["best"]
        heldout_metrics, heldout_score = ({}, None)
        if self.heldout:
            heldout_metrics, heldout_score, predictions = score_examples(self.task, best["checkpoint"], self.heldout,
                                                                         self.tokenizer, self.options.max_len)
            write_predictions(os.path.join(self.out, "heldout_predictions.jsonl"), self.task, self.heldout,
                              predictions)
        replayed, replayed_row_runs = replayed_runs(self.out, self.task)
        runs = sum(r["runs"] for r in state["rounds"]) + replayed
        result = {"task": self.task.name, "rounds": len(state["rounds"]), "runs": runs,
                  "row_runs": sum(r["runs"] * r["train_size"] for r in state["rounds"]) + replayed_row_runs,
                  "teacher_accuracy": self.labeler_score, "labeler_majority_score": self.majority_score,
                  "best": best, "E_score": best["score"],
                  "heldout_score": heldout_score, "heldout": heldout_metrics,
                  "split": {"seed": self.config.split_seed, "heldout_fraction": self.config.heldout_fraction,
                            "selection_fraction": self.config.selection_fraction},
                  "prune_rule": self.config.prune_rule,
                  "generated": len(state["generated"]), "replays": state["replays"]}
        write_json(os.path.join(self.out, "result.json"), result)
        write_round_tables(self.out, state["rounds"], result)
        return result


def replayed_runs(output_dir, task):
    """(runs, runs x training rows) spent in rolled-back rounds (their folders are kept as round_NN.replayR)."""
    runs = row_runs = 0
    for name in sorted(os.listdir(output_dir)):
        if ".replay" in name and name.startswith("round_"):
            folder = os.path.join(output_dir, name)
            done = sum(os.path.isfile(os.path.join(folder, t, "result.json")) for t in os.listdir(folder))
            runs += done
            if done:
                row_runs += done * len(task.read(task.train_segment, os.path.join(folder, "data")))
    return runs, row_runs


def write_predictions(path, task, examples_by_segment, predictions):
    """One JSON line per example: segment, row, where, gold label and prediction (class or choice indices)."""
    with atomic_write(path) as handle:
        for seg, examples in examples_by_segment.items():
            for row, (ex, gold, pred) in enumerate(zip(examples, task.gold(examples), predictions[seg])):
                handle.write(json.dumps({"segment": seg, "row": row, "where": ex["where"], "label": gold,
                                         "prediction": int(pred)}) + "\n")


ROUND_RECORD = {"round": INTEGER, "theta": LIST, "runs": INTEGER, "round_best_trial": TEXT,
                "round_best_score": NUMBER, "train_size": INTEGER, "mistake_rows": LIST, "generated": INTEGER,
                "generated_before": INTEGER, "next_theta": LIST}
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
                     f"runs; labeler's official score on E {result['teacher_accuracy']:.4f}.\n")


def run_agora(config):
    """Run (or resume) Agora as an AgoraConfig says; returns result.json's record and `predict`, the
    finetune_bort.py --only_inference command line for the final model."""
    result = Agora(config).run()
    result["predict"] = inference_command(config.task_name, result["best"]["checkpoint"],
                                          os.path.join(config.output_dir, "submission"), config.finetune_args)
    return result

