#!/usr/bin/env bash
# One GPU, one call: installs what the machine lacks, decodes the data, runs a run list in a
# time budget, and leaves the results in $OUT.
#
#   launch/gpu_run.sh --prepare STANDIN_DIR   here, where pip reaches PyPI: fills the ignored
#                                             folders wheels/ and data_cache/cifar10-jpeg/
#   launch/gpu_run.sh [RUNS_FILE]             there (default RUNS_FILE: launch/gpu_runs.csv)
#   launch/gpu_run.sh --help                  this text; starts nothing
#
# The GPU machine has jax, flax, optax, orbax, tensorboard, absl-py, PyYAML and Pillow but no
# ml-collections and no network: --prepare downloads exactly that wheel (never jax or flax: the
# machine's own are used) and copies the JPEG npz pair (train.npz, test.npz with jpeg, offsets,
# labels) from STANDIN_DIR. Carry `wheels` and `data_cache/cifar10-jpeg` with the checkout.
#
# Run mode, in order: launch/multi_run.py --check reads the run list (a bad list stops here, exit
# 2, before anything is installed or decoded); pip installs ml-collections from wheels/
# (--no-index --no-deps) and the package (-e .) where they are missing;
# launch/decode_jpeg_npz.py decodes the JPEG pair into $DATA once; the optional benchmarks and
# profiles below; launch/multi_run.py runs the list's unfinished runs, $PARALLEL at a time on the
# one GPU, until $BUDGET_S seconds after this script started (then it stops them; they resume
# from their checkpoints in $WORK if the next call finds the machine still warm, else start
# again). A row may name another row as its teacher or its stage-1 source (columns teacher,
# init_from): it starts when that run has finished, with its workdir, and is skipped (a row with
# status skipped and the reason) where that run failed, diverged or did not finish in the
# budget. Runs whose (name, seed) is a row of $SKIP_CSV (the committed results) are skipped.
# Written to $OUT: gpu_runs.csv (one row per finished or skipped run), gpu_epochs.csv (test
# accuracy at every evaluation of every run so far), gpu_run.log, end_to_end.txt with BENCH=1,
# imagenet_steps.txt with IMAGENET_BENCH=1 (AlexNet and ResNet-18, binary and float, bfloat16,
# batch $IMAGENET_BATCH, synthetic images on the device: images/s and the minutes of steps one
# ImageNet epoch takes), and with PROFILE=1 profile_binary.txt and profile_float.txt
# (benchmarks/profile_step.py: a jax.profiler trace of $PROFILE_STEPS train steps of
# configs/vgg_small.py and configs/vgg_small_fp.py at batch $PROFILE_BATCH after 3 warm-up steps,
# the top XLA ops by device time; the raw traces beside them as profile_*.trace.json.gz). The
# benchmarks and profiles run inside the budget, before the runs (about a minute for PROFILE=1:
# two compilations). To profile only: PROFILE=1 launch/gpu_run.sh /dev/null (an empty list).
#
# Environment (defaults): OUT (./gpu_out), BUDGET_S (540, at most 540), PARALLEL (3: the list is
# planned for three at once), MIN_START_S (60), PYTHON (python3), WORK (gpu_work), DATA_JPEG
# (data_cache/cifar10-jpeg), DATA (data_cache/cifar10_jpeg_q75), SKIP_CSV
# (docs/results/gpu_runs.csv), RUN_FLAGS (flags for every run, below), BENCH (0; 1:
# benchmarks/end_to_end.py first), IMAGENET_BENCH (0), IMAGENET_BATCH (256), IMAGENET_CONFIGS
# (alexnet_imagenet resnet18_imagenet), IMAGENET_FLAGS (more flags for benchmarks/train_speed.py,
# after the others; tests shrink it), PROFILE (0), PROFILE_BATCH (128), PROFILE_STEPS (5),
# PROFILE_FLAGS (more flags for benchmarks/profile_step.py, after the others; tests shrink it).
# The data is a JPEG q75 copy of CIFAR-10: a stand-in, never a CIFAR-10 result.
set -euo pipefail
start_s=$(date +%s)
case "${1:-}" in
  -h | --help)  # the comment above, without its marks
    sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
    ;;
  --prepare) ;;
  -*)
    echo "error: unknown option $1; launch/gpu_run.sh --help lists the usage" >&2
    exit 2
    ;;
esac
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
PYTHON=${PYTHON:-python3}
WHEELS="wheels"
MISSING_WHEELS="ml-collections==1.1.0"  # what bnn_jax needs that the GPU image lacks

if [[ "${1:-}" == "--prepare" ]]; then
  standin=${2:?usage: launch/gpu_run.sh --prepare STANDIN_DIR (the JPEG train.npz and test.npz)}
  mkdir -p "$WHEELS" data_cache/cifar10-jpeg
  # shellcheck disable=SC2086
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" $MISSING_WHEELS
  for split in train test; do
    if [[ ! -f "$standin/$split.npz" ]]; then
      echo "error: $standin has no $split.npz (the JPEG npz pair: jpeg, offsets, labels)" >&2
      exit 2
    fi
    install -m 0644 "$standin/$split.npz" data_cache/cifar10-jpeg/
  done
  if [[ -f "$standin/SHA256SUMS" ]]; then
    (cd data_cache/cifar10-jpeg && grep -E ' (train|test)\.npz$' "$standin/SHA256SUMS" | sha256sum -c --quiet)
  fi
  du -sh "$WHEELS" data_cache/cifar10-jpeg
  echo "ready: carry [\"wheels\", \"data_cache/cifar10-jpeg\"] and run launch/gpu_run.sh"
  exit 0
fi

RUNS=${1:-launch/gpu_runs.csv}
OUT=${OUT:-gpu_out}
BUDGET_S=${BUDGET_S:-540}
PARALLEL=${PARALLEL:-3}
MIN_START_S=${MIN_START_S:-60}
WORK=${WORK:-gpu_work}
DATA_JPEG=${DATA_JPEG:-data_cache/cifar10-jpeg}
DATA=${DATA:-data_cache/cifar10_jpeg_q75}
SKIP_CSV=${SKIP_CSV:-docs/results/gpu_runs.csv}
BENCH=${BENCH:-0}
IMAGENET_BENCH=${IMAGENET_BENCH:-0}
IMAGENET_BATCH=${IMAGENET_BATCH:-256}
IMAGENET_CONFIGS=${IMAGENET_CONFIGS:-alexnet_imagenet resnet18_imagenet}
IMAGENET_FLAGS=${IMAGENET_FLAGS:-}
PROFILE=${PROFILE:-0}
PROFILE_BATCH=${PROFILE_BATCH:-128}
PROFILE_STEPS=${PROFILE_STEPS:-5}
PROFILE_FLAGS=${PROFILE_FLAGS:-}
# 10 steps a call; a checkpoint every 10 epochs of 390 steps (a stopped run loses at most that);
# a test evaluation every 2 epochs (each costs about as much as a few hundred train steps).
RUN_FLAGS=${RUN_FLAGS:---config.steps_per_call=10 --config.checkpoint_every_steps=3900 --config.eval_every_epochs=2}
if (( BUDGET_S > 540 )); then
  echo "error: BUDGET_S=$BUDGET_S is over 540 s (a device call runs at most 10 minutes)" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK"
WORK="$(cd "$WORK" && pwd)"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
echo "== gpu_run.sh $(date -u +%FT%TZ): $RUNS, budget ${BUDGET_S} s, $PARALLEL at once"
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "no nvidia-smi: $(uname -m) CPU"
# The list first: a bad one costs no install, no decoding, no budget.
"$PYTHON" -m launch.multi_run --runs="$RUNS" --root="$WORK/runs" --parallel="$PARALLEL" --check

# --- what the machine lacks
if ! "$PYTHON" -c "import ml_collections" 2>/dev/null; then
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "error: ml_collections is missing and $WHEELS/ holds no wheel; run launch/gpu_run.sh --prepare STANDIN_DIR where pip reaches PyPI and carry $WHEELS" >&2
    exit 2
  fi
  # Into the environment; where that is read-only, into $WORK/site (on PYTHONPATH below).
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" $MISSING_WHEELS \
    || "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
      --target "$WORK/site" $MISSING_WHEELS
fi
if ! (cd / && "$PYTHON" -c "import bnn_jax" 2>/dev/null); then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . \
    || echo "warning: pip could not install the package; it runs from $root (PYTHONPATH)"
fi
export PYTHONPATH="$root:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
# Compiled programs are kept: a resumed run, a second seed and the next call skip compiling.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}"

# --- the data
if [[ ! -f "$DATA/train.npz" || ! -f "$DATA/test.npz" ]]; then
  "$PYTHON" launch/decode_jpeg_npz.py "$DATA_JPEG" "$DATA" --workers="$(nproc)"
fi
DATA="$(cd "$DATA" && pwd)"

# --- optional: end to end against the step benchmark, 1/2/4 runs at once
if [[ "$BENCH" == 1 ]]; then
  "$PYTHON" benchmarks/end_to_end.py --config=configs/vgg_small.py --batch_size=128 \
    --variants=binary --steps_per_call=1,10 --runs_at_once=1,2,4 2>"$OUT/end_to_end.err" \
    | tee "$OUT/end_to_end.txt" || echo "warning: the benchmark failed; see end_to_end.err"
fi

# --- optional: the ImageNet networks' train step, bfloat16, synthetic input on the device
if [[ "$IMAGENET_BENCH" == 1 ]]; then
  for config in $IMAGENET_CONFIGS; do
    # shellcheck disable=SC2086
    "$PYTHON" benchmarks/train_speed.py --config="configs/$config.py" \
      --config.compute_dtype=bfloat16 --batch_size="$IMAGENET_BATCH" --steps=5 --repeats=3 \
      --epoch_images=1281167 $IMAGENET_FLAGS 2>>"$OUT/imagenet_steps.err" \
      | tee -a "$OUT/imagenet_steps.txt" \
      || echo "warning: the ImageNet step benchmark of $config failed; see imagenet_steps.err"
  done
fi

# --- optional: a trace of the binary and the float train step, the top XLA ops by device time
if [[ "$PROFILE" == 1 ]]; then
  for variant in binary float; do
    config=configs/vgg_small.py
    [[ "$variant" == float ]] && config=configs/vgg_small_fp.py
    # shellcheck disable=SC2086
    if "$PYTHON" benchmarks/profile_step.py --config="$config" --batch_size="$PROFILE_BATCH" \
      --steps="$PROFILE_STEPS" --warmup=3 --output="$OUT/profile_$variant.txt" $PROFILE_FLAGS \
      >/dev/null 2>>"$OUT/profile.err"; then
      head -n 12 "$OUT/profile_$variant.txt"  # the settings, the totals and the top ops
    else
      echo "warning: profiling the $variant step failed; see profile.err"
    fi
  done
fi

# --- the runs, in what is left of the budget (15 s kept to stop them and write the CSVs)
left_s=$(( BUDGET_S - ($(date +%s) - start_s) - 15 ))
skip=()
[[ -f "$SKIP_CSV" ]] && skip=(--skip_csv="$SKIP_CSV")
status=0
# shellcheck disable=SC2086
"$PYTHON" -m launch.multi_run --runs="$RUNS" --root="$WORK/runs" --parallel="$PARALLEL" \
  --budget_s="$(( left_s > 1 ? left_s : 1 ))" --min_start_s="$MIN_START_S" \
  --results="$OUT/gpu_runs.csv" --epochs_csv="$OUT/gpu_epochs.csv" "${skip[@]}" \
  -- --config.data.name=npz --config.data.path="$DATA" $RUN_FLAGS || status=$?
[[ -f "$OUT/gpu_runs.csv" ]] && cat "$OUT/gpu_runs.csv"
echo "== gpu_run.sh done in $(( $(date +%s) - start_s )) s (exit $status)"
exit "$status"
