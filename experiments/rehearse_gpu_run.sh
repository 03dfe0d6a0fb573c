#!/usr/bin/env bash
# A dress rehearsal of the GPU run, here on the CPU, with the device's software: a Python 3.12
# virtual environment holding what the device holds (JAX 0.11.2 and numpy 2.5.2 among others, no
# TensorFlow, no Keras, nothing of this project's), the staged parts received one by one by a fresh
# copy of the tree as on the device, then `all` (the experiment and the benchmark) at tiny sizes.
# CI's tests run gpu_run.sh against this environment's TensorFlow; this proves the real bundle
# imports and runs under the device's Python and packages. About 12-15 min on 2 cores.
#
#   experiments/gpu_run.sh stage && experiments/rehearse_gpu_run.sh
#   experiments/gpu_run.sh stage_step && experiments/rehearse_gpu_run.sh step   # `step` alone (~2 min)
#
# Knobs (environment): PYTHON312 (an interpreter of the device's Python minor version), VENV (the
# device-like environment, reused when present), SIM (stands in for the device's /tmp; emptied
# first). gpu_run.sh's knobs pass through; the tiny defaults below are used where unset.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-/tmp/fcn_device_venv}
SIM=${SIM:-/tmp/fcn_device_sim}
# What the device's image holds and the project uses (its package list, read there 2026-11: Python
# 3.12.3, jax 0.11.2 with the CUDA plugin, numpy 2.5.2; the others unversioned there), with JAX's
# CPU build instead of the CUDA plugin.
DEVICE_PACKAGES="jax[cpu]==0.11.2 numpy==2.5.2 ml-dtypes h5py matplotlib absl-py rich protobuf scipy pillow
 tensorboard wrapt grpcio requests packaging typing-extensions opt-einsum setuptools"

find_python312() {
  local candidate
  for candidate in "${PYTHON312:-}" python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "rehearse: no Python 3.12 found (the device's version): set PYTHON312=/path/to/python3.12" >&2
  return 1
}

cd "$ROOT"
MODE=${1:-all}
case "$MODE" in all|step) ;; *) echo "rehearse: usage: rehearse_gpu_run.sh [all|step]. Received: $MODE" >&2; exit 2 ;; esac
parts=$(ls -d .gpu[1-9]* 2>/dev/null | sort -V || true)
if [ "$MODE" = step ]; then parts=.gpu0; [ -d .gpu0 ] || parts=; fi
if [ -z "$parts" ]; then
  echo "rehearse: no staged parts (.gpu1 .., or .gpu0 for step) in $ROOT: run experiments/gpu_run.sh stage (stage_step) first" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python3" ]; then
  "$(find_python312)" -m venv "$VENV"
  "$VENV/bin/python3" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086  # a list of requirements
  "$VENV/bin/python3" -m pip install -q $DEVICE_PACKAGES
fi
if "$VENV/bin/python3" -c 'import tensorflow' 2>/dev/null || "$VENV/bin/python3" -c 'import keras' 2>/dev/null; then
  echo "rehearse: $VENV has TensorFlow or Keras, which the device has not: remove it" >&2
  exit 2
fi

rm -rf "$SIM" && mkdir -p "$SIM/out"
export PATH=$VENV/bin:$PATH STAGE=$SIM/stage SITE=$SIM/site WORK=$SIM/work OUT=$SIM/out
# Tiny settings unless set: two steps of two 96x96 crops per stage, 4 evaluation images on the
# 500x500 canvas, the benchmark's configurations at 64x64 with a small fc6/fc7.
# RUN and BENCH_NAME of their own: the committed run and tables would be reused, not exercised.
export RUN=${RUN:-rehearsal} BENCH_NAME=${BENCH_NAME:-rehearsal} LIMIT_S=${LIMIT_S:-3000} BENCH_RESERVE_S=${BENCH_RESERVE_S:-900} CROP=${CROP:-96} BATCH=${BATCH:-2} \
  STEPS=${STEPS:-2} EPOCHS=${EPOCHS:-2} STAGE_SECONDS=${STAGE_SECONDS:-10} EVAL_CANVAS=${EVAL_CANVAS:-500} \
  EXTRA_FLAGS=${EXTRA_FLAGS:---eval_max_images=4} BENCH_VARIANTS=${BENCH_VARIANTS:-8s} BENCH_BATCHES=${BENCH_BATCHES:-1,2} \
  EXTRA_BENCH_FLAGS=${EXTRA_BENCH_FLAGS:---sizes=64 --steps=1 --warmup=1 --latency_runs=2 --fc_units=64 --peak_size=256} \
  EXTRA_DECONV_FLAGS=${EXTRA_DECONV_FLAGS:---size=64 --batch_size=1 --steps=1 --warmup=1} \
  EXTRA_FC6_FLAGS=${EXTRA_FC6_FLAGS:---size=64 --batch_size=1 --steps=1 --warmup=1 --fc_units=64 --peak_size=256} \
  EXTRA_LAYERS_FLAGS=${EXTRA_LAYERS_FLAGS:---size=64 --batch_size=1 --steps=1 --warmup=1 --fc_units=64 --peak_size=256} \
  EXTRA_STEP_FLAGS=${EXTRA_STEP_FLAGS:---size=64 --batch_size=1 --steps=1 --warmup=1 --fc_units=64 --peak_size=256} \
  EXTRA_PIPELINE_FLAGS=${EXTRA_PIPELINE_FLAGS:---crop_size=64 --batch_size=2 --seconds=1 --warmup_seconds=0.5}

device_call() {  # $1: the part carried ("" for none), then gpu_run.sh's verbs
  local part=$1 tree=$SIM/tree
  shift
  rm -rf "$tree" && mkdir -p "$tree"
  # The device's copy of the tree: tracked files and untracked ones git does not ignore.
  git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$tree"
  if [ -n "$part" ]; then cp -r "$part" "$tree/"; fi
  (cd "$tree" && bash experiments/gpu_run.sh "$@")
}

require() {  # $1: a line (grep pattern) that the log $2 must hold, $3: what failed otherwise
  grep -q "$1" "$2" || { echo "rehearse: FAILED: $3 ($2)" >&2; exit 1; }
}

collect_here() {  # `collect`, in the last call's copy of the tree (as here, afterwards); $1: the log
  (cd "$SIM/tree" && bash experiments/gpu_run.sh collect "$SIM/out") | tee -a "$1"
}

passed() {  # $1: what ran
  echo "rehearse: passed: $1 under $("$VENV/bin/python3" --version) with" \
    "$("$VENV/bin/python3" -c 'import jax, numpy; print("jax", jax.__version__, "numpy", numpy.__version__)');" \
    "what came back is in $SIM/out"
}

if [ "$MODE" = step ]; then  # one call carrying .gpu0, then collect: the report complete, the log beside it
  device_call .gpu0 step 2>&1 | tee "$SIM/step.log"
  require '^step complete' "$SIM/step.log" "step did not complete"
  collect_here "$SIM/step.log"
  require "^benchmarks/results/${BENCH_NAME}_train_step.md: complete" "$SIM/step.log" "collect found no complete report"
  passed "step ran benchmarks/train_step.py without TensorFlow"
  exit 0
fi
last=$(echo "$parts" | tail -1)
for part in $parts; do
  if [ "$part" = "$last" ]; then break; fi
  device_call "$part" receive
done
device_call "$last" receive all 2>&1 | tee "$SIM/all.log"

for result in "$SIM/out/$RUN.tar.gz" "$SIM/out/bench.tar.gz"; do
  if [ ! -s "$result" ]; then echo "rehearse: FAILED: $result was not written ($SIM/all.log)" >&2; exit 1; fi
done
listing=$(tar -tzf "$SIM/out/$RUN.tar.gz")  # (not piped into grep -q: pipefail would see tar's SIGPIPE)
grep -qx './results.md' <<< "$listing" \
  || { echo "rehearse: FAILED: the experiment wrote no results.md ($SIM/all.log)" >&2; exit 1; }
require '^experiment complete' "$SIM/all.log" "the experiment did not complete"
require '^bench complete' "$SIM/all.log" "the benchmark did not complete"
collect_here "$SIM/all.log"
require '^experiment: complete' "$SIM/all.log" "collect did not find complete results"
passed "the bundle ran the experiment and the benchmark"
