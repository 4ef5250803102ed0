#!/usr/bin/env bash
# The whole pipeline on the bundled data, on CPU, in a few minutes:
#   1. tokenize test_data/sample_text.txt into masked-LM shards, pretrain a tiny teacher and distil a tiny Bort
#      student from it (run_pretraining_distillation.sh's TEST mode, 2 Horovod processes when Horovod is installed);
#   2. fill a mask with the student's MLM head;
#   3. fine-tune the distilled student on the bundled SST-2 fixture (GLUE format) and write SST-2.tsv;
#   4. predict the dev set with the fine-tuned checkpoint in INT8 and report its accuracy.
# Sets up .venv on first use. Output goes to $BORT_QUICKSTART_DIR (default quickstart_run/).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup_env.sh"
export PATH="${BORT_VENV:-$repo/.venv}/bin:$PATH"
cd "$repo"
run=${BORT_QUICKSTART_DIR:-quickstart_run}
nproc=${BORT_QUICKSTART_PROCS:-2}
rm -rf "$run"
mkdir -p "$run"
start=$SECONDS

echo "== 1/4 tokenize + distil ($nproc processes)"
BORT_TEST_DIR="$run/pretrain" ./run_pretraining_distillation.sh "$nproc" TEST TEST --no_progress > "$run/pretrain.log" 2>&1 \
  || { tail -n 20 "$run/pretrain.log"; exit 1; }
student=$(ls "$run"/pretrain/bort_tiny_model/step_*.params | tail -n 1)
# The TEST run's vocabulary: test_data/vocab/ for the bundled sample text, else one trained on the text.
vocab=(--vocab_json "$run/pretrain/vocab/vocab.json" --merges "$run/pretrain/vocab/merges.txt")
grep -E "eval|teacher" "$run/pretrain.log" | tail -n 3 || true
echo "student checkpoint: $student"

echo "== 2/4 fill a mask with the student"
python scripts/fill_mask.py --params "$student" "${vocab[@]}" --top_k 5 \
  "The fish are sold at the <mask> near the harbor." "The boats come back in the afternoon with fish and <mask>."

echo "== 3/4 fine-tune the student on SST-2 (bundled fixture)"
python finetune_bort.py --task_name SST-2 --data_dir test_data/glue/SST-2 --pretrained_parameters "$student" \
  "${vocab[@]}" --gpu 999 --no_distributed --max_len 32 --batch_size 16 --dev_batch_size 32 --lr 1e-3 \
  --epochs 3 --ramp_up_epochs 3 --warmup_ratio 0.1 --weight_decay 0.01 --seed 2 \
  --output_dir "$run/finetune" > "$run/finetune.log" 2>&1 || { tail -n 20 "$run/finetune.log"; exit 1; }
grep -E "^(checkpoint|dev_score|submission)=" "$run/finetune.log"

echo "== 4/4 predict SST-2 dev in INT8"
python scripts/predict.py --task_name SST-2 --data_dir test_data/glue/SST-2 --segment dev --mode int8 \
  --model_parameters "$run/finetune/model_bort_SST-2.params" "${vocab[@]}" --max_len 32 \
  --output_dir "$run/predict" 2>&1 | tail -n 4
echo "quickstart finished in $((SECONDS - start)) s; outputs in $run/"
