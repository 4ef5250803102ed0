#!/usr/bin/env bash
# Bort pretraining by knowledge distillation, as the original launcher:
#
#   ./run_pretraining_distillation.sh <num gpus> <train data> <test data> [teacher ckpt] [extra flags...]
#   ./run_pretraining_distillation.sh <num gpus> TEST [TEST] [teacher ckpt] [extra flags...]
#
# <train data>/<test data>: shard files, globs or directories (create_pretraining_data.py output).
# [teacher ckpt]: a .params file, a directory with one .params file, or a local HF RoBERTa directory;
#                 without it, gluon-nlp's pretrained roberta_24_1024_16 from $MXNET_HOME/models (as the original).
# Extra flags after the positional arguments go to run_pretraining_distillation_hvd.py and override the
# defaults below (e.g. --num_steps 1000 --ckpt_dir out/).
#
# Inputs are checked (one process, before horovodrun starts: flags, and every shard read and validated whole) so
# that a bad path or shard is one line "error: ..." and a non-zero exit, and nothing is created.
# The launcher's own files (train.log, the whole run's output, appended to across resumes) go into the --ckpt_dir
# in effect (the default below, or the one given among the extra flags). When a run fails, the first rank's "error: ..." line in train.log is
# repeated as the last line, below Horovod's reports of the other ranks.
# Checkpoints: every 10 steps as the original, of which the newest 3 and every 100,000th step are kept
# (--keep_last_checkpoints / --keep_every_checkpoints; docs/checkpoints.md).
#
# TEST as <train data> (<test data> may be left out, as in the original's own test call): tokenize test_data/sample_text.txt with the test vocabulary, pretrain a tiny RoBERTa
# teacher on it by masked-LM (unless a teacher checkpoint is given), then distill a tiny Bort student from it,
# on CPU in float32, in about a minute; both then fill held-back masks of the text (see the TEST block below).
# Uses horovodrun with <num gpus> processes when it is installed.
# The run directory is $BORT_TEST_DIR (default: pretraining_distillation_test).
# TEST_TEACHER_CACHE=1 with TEST: distill from the teacher's cached top-k (scripts/cache_teacher.py) instead of
# running the teacher every step. Other runs: cache with scripts/cache_teacher.py, then pass --teacher_cache DIR.
set -euo pipefail

if [ $# -lt 3 ] && ! { [ $# -eq 2 ] && [ "$2" = "TEST" ]; }; then
    echo "usage: $0 <num gpus> <train data> <test data> [teacher ckpt] [extra flags...]" >&2
    echo "       $0 <num gpus> TEST [TEST] [teacher ckpt] [extra flags...]" >&2
    exit 2
fi
NUMPROC=$1
TRAIN_DATA=$2
shift 2
TEST_DATA=TEST
if [ "$TRAIN_DATA" != "TEST" ] || { [ $# -gt 0 ] && [ "$1" = "TEST" ]; }; then
    TEST_DATA=$1
    shift
fi
TEACHER_CKPT=""
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
    TEACHER_CKPT=$1
    shift
fi
case "$NUMPROC" in
    ''|*[!0-9]*|0) echo "error: <num gpus> must be a positive integer, got '$NUMPROC'" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON=${PYTHON:-python}
export MXNET_SAFE_ACCUMULATION=1
# As the original and gluon-nlp's pretraining script: round allocations to powers of two, so that the memory of
# one length bucket's static graph is reused by the next (the default pool keeps missing). A user's value wins.
export MXNET_GPU_MEM_POOL_TYPE=${MXNET_GPU_MEM_POOL_TYPE:-Round}

# The original's settings.
MODEL=bort_4_8_768_1024
TEACHER_MODEL=roberta_24_1024_16
DTYPE=float16
NUM_STEPS=2000000
LR=1e-4
BS=1024
BS_EVAL=16
ACC=1
LOG_INTERVAL=10
CKPT_INTERVAL=10
KEEP_LAST=3
KEEP_EVERY=100000
CKPT_DIR=${MODEL}_model
EXTRA_TEST=()
CACHE_ARGS=()

if [ "$TRAIN_DATA" = "TEST" ]; then
    # The point of TEST mode is a model that has memorized the ~105 sample sentences and fills their masks, in
    # about a minute on 2 CPU cores. What that takes, against the original's recipe (measured: docs/results/distillation.md):
    # - 45 % of the training tokens masked (the original: 15 %): 3x the MLM signal per step; held-out maskings
    #   stay at 15 %.
    # - Adam with bias correction and no weight decay for teacher and student. BERTAdam has no bias correction,
    #   so its early steps are 2-5x larger than --lr (harmless over 2M steps, but in runs of a few hundred steps
    #   it crawls or collapses to predicting token frequencies); MXNet's adam adds weight decay to the gradient (L2), which
    #   Adam's normalisation turns into full-size steps shrinking unused embedding rows.
    # - No dropout (memorization is the goal); students and teacher 128 units wide: at bort_tiny's 64 units the
    #   student stays near the frequency baseline in 300 steps. The student keeps Bort's shape (FFN = 3/4 units).
    # - KD at temperature 1 with MLM weight 0.5: T=2 / 0.1 transfers the teacher's top-1 more slowly.
    # - The teacher warms up over 30 % of its steps: with 10 %, some data orders (e.g. gluon-nlp's sample text in
    #   2 shards) left it predicting token frequencies (docs/results/distillation.md).
    RUN_DIR=${BORT_TEST_DIR:-pretraining_distillation_test}
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    # The sample text's vocabulary (the bundled one when it was made from this text, else one trained on it), and a
    # sequence length that holds most of its lines whole (32 for the bundled text).
    SEQ_LEN=$("$PYTHON" -m bort.text.bpe_train --print_seq_length \
        --input "$HERE/test_data/sample_text.txt" --output_dir "$RUN_DIR/vocab" --bundled "$HERE/test_data/vocab")
    VOCAB=(--vocab_json "$RUN_DIR/vocab/vocab.json" --merges "$RUN_DIR/vocab/merges.txt")
    # Training shards (one per process) and held-out maskings of the same text for evaluation.
    "$PYTHON" "$HERE/create_pretraining_data.py" --input_file "$HERE/test_data/sample_text.txt" \
        --output_dir "$RUN_DIR/train" "${VOCAB[@]}" --max_seq_length "$SEQ_LEN" --dupe_factor 40 --masked_lm_prob 0.45 \
        --num_outputs "$NUMPROC" --num_workers 1 --no_progress
    "$PYTHON" "$HERE/create_pretraining_data.py" --input_file "$HERE/test_data/sample_text.txt" \
        --output_dir "$RUN_DIR/eval" "${VOCAB[@]}" --max_seq_length "$SEQ_LEN" --dupe_factor 1 --random_seed 4321 \
        --num_outputs 1 --num_workers 1 --no_progress
    TRAIN_DATA="$RUN_DIR/train"
    TEST_DATA="$RUN_DIR/eval"
    # bort_tiny and roberta_tiny, twice as wide (they learn the sample text much faster).
    write_config() {
        "$PYTHON" -c "import sys; from bort.model import get_config; from bort.io import write_json; \
write_json(sys.argv[2], get_config(sys.argv[1], units=128, embed_size=128, hidden_size=int(sys.argv[3]), \
dropout=0.0).to_dict())" "$@"
    }
    write_config bort_tiny "$RUN_DIR/student_config.json" 96
    MODEL="$RUN_DIR/student_config.json"
    TEACHER_MODEL=roberta_tiny
    DTYPE=float32
    NUM_STEPS=${TEST_STEPS:-400}
    LR=5e-3
    BS=$((2048 / NUMPROC))  # tokens per process: the same global batch for any number of processes
    BS_EVAL=64
    LOG_INTERVAL=20
    CKPT_INTERVAL=100
    CKPT_DIR="$RUN_DIR/bort_tiny_model"
    EXTRA_TEST=(--cpu_only --num_buckets 4 --warmup_ratio 0.1 --optimizer adam --weight_decay 0 --dropout 0
                --distillation_temperature 1.0 --mlm_weight 0.5)
    # TEST_TEACHER_CACHE=1 runs the teacher once over the TEST shards, caches its top-k
    # beside them (scripts/cache_teacher.py, each rank its shards) and distills from the cache instead.
    if [ "${TEST_TEACHER_CACHE:-0}" = "1" ]; then
        CACHE_ARGS=(--teacher_cache beside)
    fi
    # Threads: unless the user set OMP_NUM_THREADS, every process takes the cores divided by the processes
    # (bort.runtime), so the single teacher process gets all cores and each student rank its share.
    # A value inherited from a parent that imported bort is a default too, not a user setting.
    if [ "${OMP_NUM_THREADS:-}" = "${BORT_THREADS_DEFAULTED:-}" ]; then
        unset OMP_NUM_THREADS BORT_THREADS_DEFAULTED
    fi
    TEACHER_ENV=()
    [ -n "${OMP_NUM_THREADS:-}" ] && TEACHER_ENV=(OMP_NUM_THREADS=$((OMP_NUM_THREADS * NUMPROC)))
    if [ -z "$TEACHER_CKPT" ]; then
        TEACHER_STEPS=${TEST_TEACHER_STEPS:-450}
        echo "TEST: pretraining a tiny teacher (masked LM, $TEACHER_STEPS steps) in $RUN_DIR/teacher" >&2
        write_config roberta_tiny "$RUN_DIR/teacher_config.json" 512
        # One process: it gets the threads of all <num gpus> processes.
        env "${TEACHER_ENV[@]}" "$PYTHON" "$HERE/run_pretraining_distillation_hvd.py" \
            --data "$TRAIN_DATA" --data_eval "$TEST_DATA" --model "$RUN_DIR/teacher_config.json" \
            --teacher_model none --mlm_weight 1 --teacher_ce_weight 0 \
            --num_steps "$TEACHER_STEPS" --optimizer adam --lr 5e-3 --weight_decay 0 --warmup_ratio 0.3 \
            --batch_size 2048 --use_avg_len --num_buckets 4 --dropout 0 --dtype float32 --cpu_only \
            --log_interval 50 --ckpt_interval "$TEACHER_STEPS" --eval_interval 0 --ckpt_dir "$RUN_DIR/teacher" \
            --no_progress
        TEACHER_CKPT="$RUN_DIR/teacher/$(printf 'step_%07d.params' "$TEACHER_STEPS")"
    fi
fi

# An explicit --ckpt_dir among the extra flags (the last one wins, as in argparse) is where train.log goes.
EXTRA_FLAGS=("$@")
for ((i = 0; i < ${#EXTRA_FLAGS[@]}; i++)); do
    case "${EXTRA_FLAGS[i]}" in
        --ckpt_dir) [ $((i + 1)) -lt ${#EXTRA_FLAGS[@]} ] && CKPT_DIR=${EXTRA_FLAGS[i + 1]} ;;
        --ckpt_dir=*) CKPT_DIR=${EXTRA_FLAGS[i]#--ckpt_dir=} ;;
    esac
done

TEACHER_ARGS=()
if [ -n "$TEACHER_CKPT" ]; then
    TEACHER_ARGS=(--teacher_ckpt_dir "$TEACHER_CKPT")
fi

ARGS=(--data "$TRAIN_DATA" --data_eval "$TEST_DATA" --model "$MODEL" --teacher_model "$TEACHER_MODEL"
      "${TEACHER_ARGS[@]}" --teacher_ce_weight 0.5 --distillation_temperature 2.0 --mlm_weight 0.1
      --num_steps "$NUM_STEPS" --lr "$LR" --batch_size_eval "$BS_EVAL" --batch_size "$BS" --accumulate "$ACC"
      --num_buckets 20 --use_avg_len --log_interval "$LOG_INTERVAL" --ckpt_interval "$CKPT_INTERVAL"
      --keep_last_checkpoints "$KEEP_LAST" --keep_every_checkpoints "$KEEP_EVERY"
      --ckpt_dir "$CKPT_DIR" --dtype "$DTYPE" "${EXTRA_TEST[@]}" "${CACHE_ARGS[@]}" "$@")

if command -v horovodrun >/dev/null 2>&1 && "$PYTHON" -c "import horovod.mxnet" >/dev/null 2>&1; then
    LAUNCH=(horovodrun -np "$NUMPROC" -H "localhost:$NUMPROC" "$PYTHON")
elif [ "$NUMPROC" -eq 1 ]; then
    LAUNCH=("$PYTHON")
else
    echo "error: horovodrun (horovod with MXNet) is needed for $NUMPROC processes; install it or use 1" >&2
    exit 2
fi
if [ ${#CACHE_ARGS[@]} -gt 0 ]; then  # TEST_TEACHER_CACHE=1: cache the teacher's top-k first (TEST's temperature 1.0)
    "${LAUNCH[@]}" "$HERE/scripts/cache_teacher.py" --data "$TRAIN_DATA,$TEST_DATA" --cache_dir beside \
        --teacher_ckpt_dir "$TEACHER_CKPT" --distillation_temperature 1.0 --cpu_only --no_progress
fi
"$PYTHON" "$HERE/run_pretraining_distillation_hvd.py" "${ARGS[@]}" --preflight_workers "$NUMPROC" || exit $?
mkdir -p "$CKPT_DIR"
# Appended: a resumed run keeps the log of the runs before it. This run's part starts after LOG_LINES lines.
LOG_LINES=0
if [ -f "$CKPT_DIR/train.log" ]; then LOG_LINES=$(wc -l < "$CKPT_DIR/train.log"); fi
set +e -x
"${LAUNCH[@]}" "$HERE/run_pretraining_distillation_hvd.py" "${ARGS[@]}" 2>&1 | tee -a "$CKPT_DIR/train.log"
STATUS=${PIPESTATUS[0]}
{ set -e +x; } 2>/dev/null
if [ "$STATUS" -ne 0 ]; then
    # The rank's one-line error, without Horovod's "[rank,local]<stderr>:" prefix, as the run's last line.
    FIRST_ERROR=$(tail -n "+$((LOG_LINES + 1))" "$CKPT_DIR/train.log" \
        | sed -n -E 's/^(\[[0-9,]+\]<std(out|err)>:)?(error: .*)$/\3/p' | head -n 1 || true)
    if [ -n "$FIRST_ERROR" ]; then
        echo "$FIRST_ERROR" >&2
    fi
fi
exit "$STATUS"
