#!/usr/bin/env bash
# The command sequence of a GPU session: Keras on JAX (bf16, XLA) trains on the lent GPU from a
# tf.data pipeline on the host (../shared/gpu/README.md). Every step is resumable: rerun the same
# step in the next `run` call after a 10-minute kill and it continues.
#
#   Here (CPU, once):    experiments/gpu_run.sh stage
#       converts ../shared/voc2012 to TFRecords, downloads matplotlib's wheels (figures), and
#       calls ../shared/gpu/stage.sh with them and the VGG16 weights -> .gpu1 .. .gpuN.
#   Device, calls 1..N-1 (carry [".gpuK"]):   mkdir -p /tmp/stage && cp .gpuK/* /tmp/stage/
#   Device, call N (carry [".gpuN"]):         cp .gpuN/* /tmp/stage/ && experiments/gpu_run.sh unpack
#   Device, then (no carry), each until it prints "complete":
#       experiments/gpu_run.sh bench          # issue 7: throughput tables -> $OUT/bench.tar.gz
#       experiments/gpu_run.sh experiment     # issue 6: 32s -> 16s -> 8s (+ at-once) -> $OUT/<RUN>.tar.gz
#   Here, afterwards:    experiments/gpu_run.sh collect FILES_AT   # untar into the repo folders
#
# Budget knobs (environment, same values on every call of a run): RUN (results folder name),
# EPOCHS, STEPS (per epoch), BATCH, CROP, GEOMETRY, AT_ONCE (1/0), LIMIT_S (seconds a device
# call may run before stopping cleanly), BENCH_NAME, BENCH_VARIANTS, BENCH_BATCHES, BENCH_REFERENCE
# (1: also the reference geometry at 500x500), EXTRA_FLAGS. See experiments/README.md for the timing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STAGE_EXTRA=${STAGE_EXTRA:-/tmp/fcn_gpu_extra}   # here: what stage.sh bundles besides the wheels
BUNDLE=${BUNDLE:-/tmp/stage/bundle}              # device: where stage.sh's bundle is unpacked
SITE=${SITE:-/tmp/site}                          # device: where unpack.sh installed the wheels
WORK=${WORK:-/tmp/fcn_work}                      # device: survives between calls while warm
RUN=${RUN:-voc2012-gpu}
EPOCHS=${EPOCHS:-3}
STEPS=${STEPS:-100}
BATCH=${BATCH:-16}
CROP=${CROP:-384}
GEOMETRY=${GEOMETRY:-reference}
AT_ONCE=${AT_ONCE:-1}
LIMIT_S=${LIMIT_S:-540}
BENCH_NAME=${BENCH_NAME:-h100}
BENCH_VARIANTS=${BENCH_VARIANTS:-8s,16s,32s}
BENCH_BATCHES=${BENCH_BATCHES:-8,16}
BENCH_REFERENCE=${BENCH_REFERENCE:-1}
EXTRA_FLAGS=${EXTRA_FLAGS:-}   # appended to the driver's / benchmark's flags (the last value of a flag wins)
WEIGHTS_FILE=vgg16_imagenet_notop_torchvision.weights.h5

device_env() {
  # unpack.sh's environment without reinstalling the wheels (they stay in /tmp/site while warm).
  if [ ! -d "$SITE/tensorflow" ]; then
    echo "no $SITE/tensorflow: run 'experiments/gpu_run.sh unpack' first (the machine may have been given back)" >&2
    exit 3
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1 \
    XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 \
    JAX_COMPILATION_CACHE_DIR=$WORK/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
  mkdir -p "$WORK" "${OUT:-$WORK/out}"
  OUT=${OUT:-$WORK/out}
}

case "${1:-}" in
stage)  # --- here, on the CPU machine ---
  . .venv/bin/activate
  mkdir -p "$STAGE_EXTRA"
  python -m fcn_keras.data.convert --voc_root=../shared/voc2012/VOCdevkit \
    --output_dir="$STAGE_EXTRA/voc2012_records" --splits=train,val
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$STAGE_EXTRA/extra_wheels" \
    "matplotlib>=3.8,<4" contourpy cycler fonttools kiwisolver pyparsing python-dateutil packaging
  cp ../shared/weights/$WEIGHTS_FILE "$STAGE_EXTRA/"
  ../shared/gpu/stage.sh "$STAGE_EXTRA/voc2012_records" "$STAGE_EXTRA/extra_wheels" "$STAGE_EXTRA/$WEIGHTS_FILE"
  ;;

unpack)  # --- device, last staging call ---
  cat /tmp/stage/part* | tar -x -C /tmp/stage
  . "$BUNDLE/unpack.sh"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$BUNDLE"/extra_wheels/*.whl
  device_env
  python3 -c "import matplotlib, keras, jax; print('matplotlib', matplotlib.__version__, 'keras', keras.__version__, jax.devices())"
  nvidia-smi --query-gpu=name,memory.total --format=csv || true
  echo "unpack complete"
  ;;

bench)  # --- device: issue 7's tables (resumable: finished configurations are kept) ---
  device_env
  mkdir -p "$WORK/bench"
  status=0
  # The PyTorch reference's setting (8s, 'same', 512, batch 8, bf16) with the TFRecord pipeline
  # beside it, then the paper's reference geometry at 500x500 with batch-1 latency.
  # Configurations are measured in the order given and saved one by one: the target comes first.
  timeout "$LIMIT_S" python3 benchmarks/throughput.py --variants="$BENCH_VARIANTS" --sizes=512 \
    --batch_sizes="$BENCH_BATCHES" --geometry=same --precision=bf16 --input_pipeline=tfrecord \
    --data="$BUNDLE/voc2012_records" --cache_dir="$WORK/bench/cache" --output="$WORK/bench/$BENCH_NAME.md" $EXTRA_FLAGS 2>&1 \
    | tee -a "$OUT/bench.log" || status=$?
  if [ "$status" = 0 ] && [ "$BENCH_REFERENCE" = 1 ]; then
    timeout "$LIMIT_S" python3 benchmarks/throughput.py --variants=8s,32s --sizes=500 --batch_sizes=1,8 \
      --geometry=reference --precision=bf16 --output="$WORK/bench/${BENCH_NAME}_reference.md" $EXTRA_FLAGS 2>&1 \
      | tee -a "$OUT/bench.log" || status=$?
  fi
  tar -czf "$OUT/bench.tar.gz" -C "$WORK/bench" --exclude=cache .
  if [ "$status" = 0 ]; then echo "bench complete"; else echo "bench stopped (status $status): run it again"; fi
  ;;

experiment)  # --- device: issue 6's protocol (resumable stage by stage, and inside a stage) ---
  device_env
  at_once=$([ "$AT_ONCE" = 1 ] && echo --at_once || echo --noat_once)
  status=0
  timeout "$LIMIT_S" python3 -m experiments.skip_experiment --data="$BUNDLE/voc2012_records" \
    --weights="$BUNDLE/$WEIGHTS_FILE" --output_dir="$WORK/experiments/$RUN" $at_once \
    --geometry="$GEOMETRY" --crop_size="$CROP" --batch_size="$BATCH" --epochs="$EPOCHS" \
    --steps_per_epoch="$STEPS" --optimizer=adam --learning_rates=1e-4,3e-5,1e-5 --at_once_learning_rate=1e-4 \
    --mixed_precision=bf16 --jit_compile=true --val_steps=0 --backup_freq=0 --eval_batch_size=16 \
    --figure_images=4 --verbose=2 $EXTRA_FLAGS 2>&1 | tee -a "$OUT/experiment.log" || status=$?
  dir="$WORK/experiments/$RUN"
  if [ -d "$dir" ]; then
    (cd "$dir" && find . -maxdepth 3 \( -name 'results.*' -o -name '*.png' -o -name summary.json -o -name config.json \
      -o -name log.csv -o -name 'metrics.*' \) -not -path './records/*' -not -path './cache/*' -print0 \
      | tar -czf "$OUT/$RUN.tar.gz" --null -T -)
  fi
  if [ "$status" = 0 ] && [ -f "$dir/results.md" ]; then echo "experiment complete"; else
    echo "experiment stopped (status $status): run it again to continue"; fi
  ;;

collect)  # --- here: FILES_AT of the last device call -> the repo's results folders ---
  files_at=${2:?usage: experiments/gpu_run.sh collect FILES_AT}
  if [ -f "$files_at/bench.tar.gz" ]; then
    mkdir -p benchmarks/results && tar -xzf "$files_at/bench.tar.gz" -C benchmarks/results
    echo "benchmarks/results: $(ls benchmarks/results | tr '\n' ' ')"
  fi
  if [ -f "$files_at/$RUN.tar.gz" ]; then
    mkdir -p "experiments/results/$RUN" && tar -xzf "$files_at/$RUN.tar.gz" -C "experiments/results/$RUN"
    echo "experiments/results/$RUN: $(ls "experiments/results/$RUN" | tr '\n' ' ')"
  fi
  ;;

*)
  sed -n '2,/^set -euo/p' "$0" | grep '^#'
  exit 2
  ;;
esac
