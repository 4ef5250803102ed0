#!/bin/bash
# Fine-tune Bort on one task:  ./run_finetune.sh <TASK> [extra finetune_bort.py flags]
#   TASK: CoLA SST-2 MRPC STS-B QQP MNLI QNLI RTE WNLI BoolQ CB COPA MultiRC ReCoRD SuperGLUE-RTE WiC WSC
#         RACE-M RACE-H RACE (the original's names SST, SuperGLUERTE, ... work too), or
#   TEST1 / TEST2: WNLI / WSC on the CPU against the bundled fixtures (test_data/) with a tiny random model.
# Data is read from ~/.mxnet/datasets/<task dir> unless --data_dir is given; the pretrained model from
# model/bort.params (see the README for where to get it) unless PRETRAINED is set.
set -euo pipefail
cd "$(dirname "$0")"
# As the original: round GPU allocations to powers of two (reused across batch lengths); a user's value wins.
export MXNET_GPU_MEM_POOL_TYPE=${MXNET_GPU_MEM_POOL_TYPE:-Round}
TASK=${1:?usage: ./run_finetune.sh TASK|TEST1|TEST2 [finetune_bort.py flags]}
shift || true

# Default parameters. Refer to the paper for their values.
EPS=1
REPS=1
BSZ=8
SEED=2
LR=5e-5
MAXLEN=512
WD=110.0
WMUP=0.45
GPU=${GPU:-0}
PRETRAINED=${PRETRAINED:-model/bort.params}
EXTRA=()

if [ "$TASK" = "TEST1" ] || [ "$TASK" = "TEST2" ]; then
  if [ "$TASK" = "TEST1" ]; then TASK="WNLI"; DATA=test_data/glue/WNLI; else TASK="WSC"; DATA=test_data/superglue/WSC; fi
  GPU=999
  MAXLEN=64
  LR=1e-4
  PRETRAINED=none
  EXTRA=(--no_distributed --data_dir "$DATA" --model_config bort_tiny
         --vocab_json test_data/vocab/vocab.json --merges test_data/vocab/merges.txt
         --output_dir "${OUTPUT_DIR:-output_dir/test_$TASK}")
fi

exec python finetune_bort.py \
  --task_name "$TASK" \
  --pretrained_parameters "$PRETRAINED" \
  --batch_size $BSZ \
  --max_len $MAXLEN \
  --ramp_up_epochs $REPS \
  --epochs $EPS \
  --seed $SEED \
  --gpu $GPU \
  --warmup_ratio $WMUP \
  --weight_decay $WD \
  --early_stop 200 \
  --lr $LR \
  "${EXTRA[@]}" "$@"
