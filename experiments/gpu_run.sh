#!/usr/bin/env bash
# The GPU session's steps: Keras on JAX (bf16, XLA) trains on the lent GPU from a tf.data
# pipeline on the host. The GPU machine has JAX, numpy, h5py, matplotlib, absl-py, rich and
# protobuf but no TensorFlow or Keras and no network, so they travel as a bundle, with the
# TFRecords and the VGG16 weights, in parts that fit one `run` call each (64 MiB with the tree).
#
#   Here (CPU, once, 6-8 min):  experiments/gpu_run.sh stage
#       -> .gpu1 .. .gpuN (git-ignored), N = 4 at 60 MiB: site.tar.xz (tensorflow-cpu without
#          its C++ headers, keras and small deps, unzipped and xz-compressed: 133 MiB instead of
#          the wheels' 265), the converted VOC 2012 records (45 MiB), the weights (56 MiB).
#          (`pack DIR` alone splits a folder named bundle into such parts.)
#   Device, call K = 1 .. N, carry [".gpuK"], back to back (the machine is given back 30 s
#   after a call; /tmp survives while it stays warm):
#       experiments/gpu_run.sh receive            # copies the part to /tmp/stage; after the
#                                                 # last one: checks the sha256, unpacks
#       last call (timeout_s 600): experiments/gpu_run.sh receive all
#   Device, `all`: the experiment (issue 6) within LIMIT_S - BENCH_RESERVE_S of the call's start,
#       then the benchmark (issue 7) until LIMIT_S; every partial result comes back in $OUT.
#       `experiment` and `bench` run one of them. Each continues where a killed call stopped
#       while the machine is warm (finished stages, configurations and compilations are kept).
#   Here, afterwards:  experiments/gpu_run.sh collect FILES_AT   # untar into the repo folders
#
# The training step alone (issue 7's open question; no TensorFlow, no data, ONE call):
#   Here:    experiments/gpu_run.sh stage_step    # -> .gpu0: the keras, namex and optree wheels (~2 MiB)
#   Device:  one call carrying [".gpu0"], timeout_s 600:
#            FCN_KERAS_COMMIT=<sha> experiments/gpu_run.sh step   # benchmarks/train_step.py until
#            LIMIT_S, its report rewritten in $OUT after every part (a killed call keeps them)
#   Here:    experiments/gpu_run.sh collect FILES_AT   # -> benchmarks/results/<gpu>_train_step.md
#
# Knobs (environment; the same values on every call of a run): RUN (results folder name),
# EPOCHS (at most), STEPS (per epoch), STAGE_SECONDS (FCN-32s's time budget), CONTROLS (1/0), CHECKPOINT_FREQ,
# BATCH, CROP, GEOMETRY, AT_ONCE (1/0), EVAL_CANVAS, LIMIT_S (the whole call), BENCH_RESERVE_S
# (kept for the benchmark), BENCH_NAME (default: the GPU's kind from nvidia-smi, h100 / h200 / ...), BENCH_VARIANTS,
# BENCH_BATCHES, BENCH_REFERENCE (1: also the reference geometry at 500x500), BENCH_PROFILE (1:
# then the block profile of FCN-8s at 512, benchmarks/throughput.py --profile), EXTRA_FLAGS,
# EXTRA_BENCH_FLAGS, EXTRA_DECONV_FLAGS, EXTRA_PIPELINE_FLAGS, EXTRA_FC6_FLAGS, EXTRA_LAYERS_FLAGS, EXTRA_STEP_FLAGS; here: PYVER (the device's Python, 3.12), PART_SIZE, MATPLOTLIB (1: bundle
# it too). experiments/README.md has the timing plan.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STAGE_BUILD=${STAGE_BUILD:-/tmp/fcn_gpu_build}   # here: where the bundle is assembled
STAGE=${STAGE:-/tmp/stage}                       # device: the parts, then the unpacked bundle
SITE=${SITE:-/tmp/site}                          # device: the unpacked Python packages
WORK=${WORK:-/tmp/fcn_work}                      # device: runs, caches; survives while warm
RUN=${RUN:-voc2012-gpu}
EPOCHS=${EPOCHS:-20}   # at most: FCN-32s stops at its time budget (STAGE_SECONDS), the later stages
STEPS=${STEPS:-100}    # then train as many epochs as it did
BATCH=${BATCH:-16}
CROP=${CROP:-384}
GEOMETRY=${GEOMETRY:-reference}
AT_ONCE=${AT_ONCE:-0}
EVAL_CANVAS=${EVAL_CANVAS:-500}
LIMIT_S=${LIMIT_S:-560}
# Kept for the benchmark (issue 7) at the end of the call; the experiment (issue 6) comes first,
# so a short call keeps less: a fifth of LIMIT_S below 750 s, at least 60 s.
BENCH_RESERVE_S=${BENCH_RESERVE_S:-$(( LIMIT_S >= 750 ? 150 : (LIMIT_S / 5 > 60 ? LIMIT_S / 5 : 60) ))}
CONTROLS=${CONTROLS:-0}   # 1: also FCN-32s trained as FCN-16s and as FCN-8s (skip_experiment --controls)
# Epochs between the writes of last.keras and the backup (0.5 + 1.6 GB with Adam; about 4.5 s on
# the 2-core CPU machine, while an epoch of 100 steps may take only a few seconds on the GPU).
# A stage's last epoch and its time-budget stop are always written.
CHECKPOINT_FREQ=${CHECKPOINT_FREQ:-5}
# FCN-32s's training budget (wall time, compilation included). Every other stage trains as many
# epochs, so training takes about UNITS x STAGE_SECONDS (3 stages, + 2 controls, + 3 for the
# at-once model); of the experiment's share of the call (what is left when it starts), 30 s are
# kept for starting up and 60 s per evaluated model for its evaluation and epoch-end checkpoints.
# Not measured yet: a guess. Fixed by the first call that runs the experiment (kept in
# $WORK/stage_seconds), so that a continuation with another LIMIT_S finds the same settings.
UNITS=$(( 3 + 2 * CONTROLS + 3 * AT_ONCE ))
EVALS=$(( 3 + 2 * CONTROLS + AT_ONCE ))
BENCH_VARIANTS=${BENCH_VARIANTS:-8s,16s,32s}
BENCH_BATCHES=${BENCH_BATCHES:-8,16}
BENCH_REFERENCE=${BENCH_REFERENCE:-1}
BENCH_PROFILE=${BENCH_PROFILE:-1}
EXTRA_FLAGS=${EXTRA_FLAGS:-}              # appended to the experiment's flags (the last value of a flag wins)
EXTRA_BENCH_FLAGS=${EXTRA_BENCH_FLAGS:-}  # appended to the benchmark's flags
EXTRA_DECONV_FLAGS=${EXTRA_DECONV_FLAGS:-}  # appended to benchmarks/deconvolution.py's flags
EXTRA_PIPELINE_FLAGS=${EXTRA_PIPELINE_FLAGS:-}  # appended to benchmarks/pipeline.py's flags
EXTRA_FC6_FLAGS=${EXTRA_FC6_FLAGS:-}  # appended to benchmarks/fc6.py's flags
EXTRA_LAYERS_FLAGS=${EXTRA_LAYERS_FLAGS:-}  # appended to benchmarks/conv_layers.py's flags
EXTRA_STEP_FLAGS=${EXTRA_STEP_FLAGS:-}  # appended to benchmarks/train_step.py's flags
PYVER=${PYVER:-3.12}
PART_SIZE=${PART_SIZE:-60m}   # of each part (split -b): 60 MiB + the tree (2.65 MiB on 2026-12-05) < 64 MiB a call
MATPLOTLIB=${MATPLOTLIB:-0}
WEIGHTS_FILE=vgg16_imagenet_notop_torchvision.weights.h5
# What the bundle's site holds: the versions CI tests, built for the device's Python. protobuf
# and flatbuffers travel too so that TensorFlow gets versions it accepts whatever the device has.
PACKAGES="tensorflow-cpu==2.21.0 keras==3.15.1 namex==0.1.0 optree==0.20.0 protobuf==7.36.2 flatbuffers==25.12.19
 gast==0.7.0 astunparse==1.6.3 google-pasta==0.2.0 termcolor==3.3.0 six==1.17.0 wheel==0.48.0"
MATPLOTLIB_PACKAGES="matplotlib>=3.8,<4 contourpy cycler fonttools kiwisolver pyparsing python-dateutil"
# What `step` (benchmarks/train_step.py alone) needs besides the device's packages: Keras, no TensorFlow.
STEP_PACKAGES="keras==3.15.1 namex==0.1.0 optree==0.20.0"

elapsed() { echo $(( $(date +%s) - START )); }

gpu_kind() {  # the GPU's kind as the tables name it (h100, h200, a100, ...), from nvidia-smi; "gpu" if it names none
  local name
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr '[:upper:]' '[:lower:]' || true)
  name=$(grep -o '[a-z][0-9][0-9]*' <<< "${name#nvidia }" | head -1 || true)
  echo "${name:-gpu}"
}
START=$(date +%s)

unpacked() {  # the bundle is unpacked on this machine
  [ -d "$SITE/tensorflow" ] && [ -f "$STAGE/bundle/$WEIGHTS_FILE" ]
}

device_env() {
  if ! unpacked; then
    echo "gpu_run: $SITE or $STAGE/bundle is missing: the machine was given back since the parts were received." >&2
    echo "gpu_run: send the parts again (call K carries .gpuK: experiments/gpu_run.sh receive)." >&2
    exit 3
  fi
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1 \
    XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 \
    JAX_COMPILATION_CACHE_DIR=$WORK/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=1
  mkdir -p "$WORK"
  out_env
}

out_env() {  # device: $OUT made and absolute, and the tables' name (BENCH_NAME: the GPU's kind) in it
  OUT=${OUT:-$WORK/out}
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)  # absolute: archives are written from inside other folders
  BENCH_NAME=${BENCH_NAME:-$(gpu_kind)}
  echo "$BENCH_NAME" > "$OUT/bench_name"  # for collect: the tables' and the log's names
}

complete() {  # $1: a results.json: did every planned model finish, this call's plan included
  # (AT_ONCE=1 / CONTROLS=1 on results committed without those models: not complete)?
  [ -f "$1" ] && grep -q '"complete": true' "$1" \
    && { [ "$AT_ONCE" != 1 ] || grep -q '"FCN-8s at-once"' "$1"; } \
    && { [ "$CONTROLS" != 1 ] || grep -q '"FCN-32s trained as FCN-8s"' "$1"; }
}

seed_experiment() {  # a fresh machine: start from the committed results of $RUN, if any
  # The committed folder holds each finished stage's summary, config and evaluation (no model
  # files): the driver reuses those stages without retraining or re-evaluating them and trains
  # only what this call's plan adds (AT_ONCE=1: the at-once FCN-8s). FCN-32s's budget and the
  # log come along, so the settings match and experiment.log goes on from the earlier call's.
  local dir="$WORK/experiments/$RUN" committed="experiments/results/$RUN"
  if [ -d "$dir" ] || [ ! -f "$committed/results.json" ] || [ -n "${RERUN:-}" ]; then return 0; fi
  mkdir -p "$dir"
  cp -a "$committed/." "$dir/"
  rm -f "$dir/experiment.log"
  [ -f "$committed/experiment.log" ] && [ ! -f "$OUT/experiment.log" ] && cp "$committed/experiment.log" "$OUT/experiment.log"
  if [ -z "${STAGE_SECONDS:-}" ] && [ ! -f "$WORK/stage_seconds" ]; then
    python3 -c 'import json, sys; b = json.load(open(sys.argv[1])).get("budget"); print("%g" % b["stage_seconds"] if b else "")' \
      "$committed/results.json" > "$WORK/stage_seconds.tmp"
    if [ -s "$WORK/stage_seconds.tmp" ]; then mv "$WORK/stage_seconds.tmp" "$WORK/stage_seconds"; else rm -f "$WORK/stage_seconds.tmp"; fi
  fi
  echo "gpu_run: seeded $dir from $committed (finished stages are reused, not retrained)"
}

too_short() {  # $1: seconds left, $2: what for. timeout 0 would mean no limit at all.
  if [ "$1" -lt 30 ]; then echo "gpu_run: only $(( $1 > 0 ? $1 : 0 )) s left of LIMIT_S=$LIMIT_S: $2 not started"; return 0; fi
  return 1
}

stage_seconds() {  # $1: seconds the experiment may take from now -> FCN-32s's budget (see above)
  if [ -n "${STAGE_SECONDS:-}" ]; then echo "$STAGE_SECONDS"; return; fi
  if [ ! -f "$WORK/stage_seconds" ]; then
    local seconds=$(( ($1 - 30 - 60 * EVALS) / UNITS ))
    echo $(( seconds < 10 ? 10 : seconds )) > "$WORK/stage_seconds"
  fi
  cat "$WORK/stage_seconds"
}

pack_experiment() {  # what the experiment has written so far -> $OUT/$RUN.tar.gz (atomically)
  local dir="$WORK/experiments/$RUN" status=0 tmp="$OUT/.$RUN.tar.gz.$BASHPID.tmp"  # one per packing shell
  [ -d "$dir" ] || return 0
  # results, figures, logs, configs, summaries, metrics: no model files. GNU tar's status 1 means
  # a file (a log.csv) grew while it was read: the archive is still whole.
  (cd "$dir" && find . -maxdepth 3 \( -name 'results.*' -o -name '*.png' -o -name summary.json -o -name config.json \
    -o -name log.csv -o -name 'metrics.*' -o -name figure_labels.npz \) -not -path './records/*' -not -path './cache/*' -print0 \
    | tar -czf "$tmp" --warning=no-file-changed --null -T -) || status=$?
  if [ "$status" -le 1 ]; then mv "$tmp" "$OUT/$RUN.tar.gz"; else rm -f "$tmp"; fi
}

run_experiment() {  # $1: seconds it may take from now
  local dir="$WORK/experiments/$RUN" status=0 at_once controls stage_s packer
  if too_short "$1" experiment; then return 1; fi
  seed_experiment
  stage_s=$(stage_seconds "$1")
  echo "gpu_run: experiment for at most $1 s, FCN-32s's budget --stage_seconds=$stage_s"
  at_once=$([ "$AT_ONCE" = 1 ] && echo --at_once || echo --noat_once)
  controls=$([ "$CONTROLS" = 1 ] && echo --controls || echo --nocontrols)
  # Packed every 30 s meanwhile: if the device tool ends the call first, what was written comes back.
  # Its output goes nowhere: a `sleep` left behind by the kill below must not hold the call's
  # stdout open (the call would only return when it ends).
  ( while sleep 30; do pack_experiment || true; done ) </dev/null >/dev/null 2>&1 &
  packer=$!
  # shellcheck disable=SC2086  # EXTRA_FLAGS is a list of flags
  timeout "$1" python3 -m experiments.skip_experiment --data="$STAGE/bundle/voc2012_records" \
    --weights="$STAGE/bundle/$WEIGHTS_FILE" --output_dir="$dir" $at_once $controls \
    --geometry="$GEOMETRY" --crop_size="$CROP" --batch_size="$BATCH" --epochs="$EPOCHS" \
    --steps_per_epoch="$STEPS" --stage_seconds="$stage_s" --optimizer=adam --learning_rates=1e-4,3e-5,1e-5 --at_once_learning_rate=1e-4 \
    --mixed_precision=bf16 --jit_compile=true --val_steps=0 --backup_freq=0 \
    --checkpoint_freq="$CHECKPOINT_FREQ" --eval_batch_size=16 --eval_canvas="$EVAL_CANVAS" --figure_images=4 --verbose=2 \
    $EXTRA_FLAGS 2>&1 \
    | tee -a "$OUT/experiment.log" || status=$?
  kill "$packer" 2>/dev/null; wait "$packer" 2>/dev/null || true
  pack_experiment
  if [ "$status" = 0 ] && complete "$dir/results.json"; then echo "experiment complete"; return 0; fi
  echo "experiment stopped (status $status) after $(elapsed) s: run it again to continue"
  return 1
}

bench_run() {  # $1: seconds the benchmark may take from BENCH_START, $2: what (for the message), then the
  # script's flags; the script is $bench_script (default benchmarks/throughput.py, which also gets
  # EXTRA_BENCH_FLAGS; benchmarks/deconvolution.py gets EXTRA_DECONV_FLAGS, pipeline.py EXTRA_PIPELINE_FLAGS,
  # fc6.py EXTRA_FC6_FLAGS, conv_layers.py EXTRA_LAYERS_FLAGS, train_step.py EXTRA_STEP_FLAGS)
  local budget=$1 what=$2 left
  shift 2
  left=$(( budget - ($(elapsed) - BENCH_START) ))
  if [ "$left" -le 30 ]; then echo "gpu_run: no time left for $what"; return 124; fi  # as a timeout: nothing after it runs
  # shellcheck disable=SC2086  # EXTRA_BENCH_FLAGS is a list of flags
  local script=${bench_script:-benchmarks/throughput.py} extra
  case "$script" in
    benchmarks/deconvolution.py) extra=$EXTRA_DECONV_FLAGS ;;
    benchmarks/pipeline.py) extra=$EXTRA_PIPELINE_FLAGS ;;
    benchmarks/fc6.py) extra=$EXTRA_FC6_FLAGS ;;
    benchmarks/conv_layers.py) extra=$EXTRA_LAYERS_FLAGS ;;
    benchmarks/train_step.py) extra=$EXTRA_STEP_FLAGS ;;
    *) extra=$EXTRA_BENCH_FLAGS ;;
  esac
  timeout "$left" python3 "$script" "$@" $extra 2>&1 | tee -a "$OUT/bench.log"
}

committed_table() {  # $1: a table's suffix: is benchmarks/results/${BENCH_NAME}_$1 committed whole? (then not measured again)
  local table="benchmarks/results/${BENCH_NAME}_$1"
  [ -f "$table" ] || return 1
  if grep -q '^\*\*Partial\*\*' "$table"; then echo "gpu_run: $table is partial: measured again"; return 1; fi
  echo "gpu_run: $table is committed: not measured again (delete it to measure again)"
}

pack_bench() {  # the tables written so far -> $OUT/bench.tar.gz (atomically)
  local tmp="$OUT/.bench.tar.gz.$BASHPID.tmp"
  tar -czf "$tmp" -C "$WORK/bench" . && mv "$tmp" "$OUT/bench.tar.gz" || rm -f "$tmp"
}

run_bench() {  # $1: seconds it may take from BENCH_START
  local status=0 packer
  # A step that fails (status other than a timeout's) is reported and the next one runs: one
  # script's crash (e.g. jax.profiler's on a new GPU) must not cost the call's other tables.
  going() { [ "$status" != 124 ] && [ "$status" != 137 ]; }
  if too_short "$1" benchmark; then return 1; fi
  mkdir -p "$WORK/bench"
  # Packed every 30 s meanwhile: if the device tool ends the call first, the tables come back.
  ( while sleep 30; do pack_bench || true; done ) </dev/null >/dev/null 2>&1 &
  packer=$!
  # Configurations measured by an earlier session (committed) are kept, not measured again.
  for done in benchmarks/results/"$BENCH_NAME"*.jsonl; do
    [ -f "$done" ] && [ ! -f "$WORK/bench/$(basename "$done")" ] && cp "$done" "$WORK/bench/"
  done
  # The PyTorch reference's setting (8s, 'same', 512, batch 8, bf16) with the TFRecord pipeline
  # beside it, the models as build_fcn makes them by default (-> $BENCH_NAME.md), then the paper's
  # reference geometry at 500x500 with batch-1 latency, then which blocks take the time (FCN-8s
  # at 512 'same', the first batch size: the configurations already in the same .jsonl are
  # skipped, only the profile runs). Before them, the tables that are not committed yet (each
  # step below is skipped once its table is): what is being investigated comes first.
  # Configurations are saved one by one (<name>.jsonl) and skipped when the call is repeated.
  local issue_setting=(--sizes=512 --batch_sizes="$BENCH_BATCHES" --geometry=same --precision=bf16
    --input_pipeline=tfrecord --data="$STAGE/bundle/voc2012_records" --output="$WORK/bench/$BENCH_NAME.md")
  # The training step part by part (forward, backward, optimizer, Keras' step) per fc6 / pooling
  # implementation, each pooling and the loss alone first.
  if ! committed_table train_step.md; then
    bench_script=benchmarks/train_step.py bench_run "$1" "the training step's parts" \
      --output="$WORK/bench/${BENCH_NAME}_train_step.md" || status=$?
  fi
  # FCN-8s with fc6 as im2col and the poolings as reshape + max: the issue's setting, the profile.
  if going && ! committed_table reshape_pool.md; then
    bench_run "$1" "im2col fc6 and reshape poolings" --variants=8s \
      "${issue_setting[@]/--output=*/--output=$WORK/bench/${BENCH_NAME}_reshape_pool.md}" \
      --fc6_implementation=im2col --pool_implementation=reshape --profile || status=$?
  fi
  if going; then
    bench_run "$1" "the issue's setting" --variants="$BENCH_VARIANTS" "${issue_setting[@]}" || status=$?
  fi
  # fc6 and fc7 alone (40 % of FCN-8s's forward time in the first H200 profile): the model's
  # convolution against im2col + matmul and shifted matmuls.
  if going && ! committed_table fc6.md; then
    bench_script=benchmarks/fc6.py bench_run "$1" "fc6 and fc7" --output="$WORK/bench/${BENCH_NAME}_fc6.md" || status=$?
  fi
  # FCN-8s with fc6 as one im2col matmul (build_fcn(fc6_implementation="im2col"), the default
  # since 2026-12-04): the issue's setting and the block profile, beside the Conv2D model's table.
  if going && ! committed_table im2col.md; then
    bench_run "$1" "fc6 as im2col" --variants=8s "${issue_setting[@]/--output=*/--output=$WORK/bench/${BENCH_NAME}_im2col.md}" \
      --fc6_implementation=im2col --profile || status=$?
  fi
  # Every convolution alone, forward and forward+backward: where the training step's time goes.
  if going && ! committed_table layers.md; then
    bench_script=benchmarks/conv_layers.py bench_run "$1" "the convolutions one by one" \
      --output="$WORK/bench/${BENCH_NAME}_layers.md" || status=$?
  fi
  # fit from TFRecords once the pipeline runs (the issue's table times one fresh fit call, which
  # starts the pipeline anew): FCN-8s, the larger batch, cold and steady columns side by side.
  if going && ! committed_table steady.md; then
    bench_run "$1" "fit from TFRecords, steady" --variants=8s --sizes=512 --batch_sizes="${BENCH_BATCHES##*,}" \
      --geometry=same --precision=bf16 --input_pipeline=tfrecord --data="$STAGE/bundle/voc2012_records" \
      --output="$WORK/bench/${BENCH_NAME}_steady.md" || status=$?
  fi
  # The upsampling layers alone: Keras' Conv2DTranspose (dilated input) against Deconvolution.
  if going && ! committed_table deconvolution.md; then
    bench_script=benchmarks/deconvolution.py bench_run "$1" "the upsampling layers" \
      --output="$WORK/bench/${BENCH_NAME}_deconvolution.md" || status=$?
  fi
  # The input pipeline alone on this host's cores: can it feed what fit from TFRecords asks for?
  if going && ! committed_table pipeline.txt; then
    local train_glob
    if train_glob=$(python3 -c 'import sys; from fcn_keras.data.convert import split_glob; print(split_glob(sys.argv[1], "train"))' \
      "$STAGE/bundle/voc2012_records"); then
      bench_script=benchmarks/pipeline.py bench_run "$1" "the input pipeline" --data="$train_glob" --crop_size=512 \
        --batch_size=16 --seconds=5 --warmup_seconds=2 --rows=+decode,modern \
        | tee "$WORK/bench/${BENCH_NAME}_pipeline.txt" || status=$?
    else
      status=1; echo "gpu_run: the input pipeline not measured: no train split found in $STAGE/bundle/voc2012_records"
    fi
  fi
  # conv1_1 (3 input channels: 2.4 % of peak) and conv1_2 also as im2col matmuls, beside the convolutions.
  if going && ! committed_table layers_im2col.md; then
    bench_script=benchmarks/conv_layers.py bench_run "$1" "block1 as im2col" --also_im2col=block1_conv1,block1_conv2 \
      --output="$WORK/bench/${BENCH_NAME}_layers_im2col.md" || status=$?
  fi
  if going && [ "$BENCH_REFERENCE" = 1 ]; then
    bench_run "$1" "the reference geometry" --variants=8s,32s --sizes=500 --batch_sizes=1,8 \
      --geometry=reference --precision=bf16 --output="$WORK/bench/${BENCH_NAME}_reference.md" || status=$?
  fi
  if going && [ "$BENCH_PROFILE" = 1 ]; then
    bench_run "$1" "the block profile" --variants=8s "${issue_setting[@]}" --profile || status=$?
  fi
  kill "$packer" 2>/dev/null; wait "$packer" 2>/dev/null || true
  pack_bench
  if [ "$status" = 0 ]; then echo "bench complete"; return 0; fi
  echo "bench stopped (status $status) after $(elapsed) s: run it again to continue"
  return 1
}

download_wheels() {  # $1: folder, then requirements: their wheels for the device's Python and platform
  local folder=$1
  shift
  python -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$folder" "$@"
}

ignore_here() {  # $1: a staged folder of the tree: git-ignored (never committed by mistake)
  if [ -d .git/info ]; then grep -qsx "/$1/" .git/info/exclude || echo "/$1/" >> .git/info/exclude; fi
}

do_stage() {  # --- here, on the CPU machine ---
  . .venv/bin/activate
  rm -rf "$STAGE_BUILD" && mkdir -p "$STAGE_BUILD/bundle" "$STAGE_BUILD/wheels" "$STAGE_BUILD/site"
  # shellcheck disable=SC2086  # lists of requirements
  download_wheels "$STAGE_BUILD/wheels" $PACKAGES $([ "$MATPLOTLIB" = 1 ] && echo "$MATPLOTLIB_PACKAGES")
  for wheel in "$STAGE_BUILD"/wheels/*.whl; do unzip -q -o "$wheel" -d "$STAGE_BUILD/site"; done
  rm -rf "$STAGE_BUILD/site/tensorflow/include"  # C++ headers (287 MB): never read at run time
  echo "compressing $(du -sh "$STAGE_BUILD/site" | cut -f1) of packages (xz -9, a few minutes)"
  tar -C "$STAGE_BUILD/site" -cf - . | xz -9 -T0 > "$STAGE_BUILD/bundle/site.tar.xz"
  python -m fcn_keras.data.convert --voc_root=../shared/voc2012/VOCdevkit \
    --output_dir="$STAGE_BUILD/bundle/voc2012_records" --splits=train,val
  cp ../shared/weights/$WEIGHTS_FILE "$STAGE_BUILD/bundle/"
  (cd "$STAGE_BUILD/wheels" && ls) > "$STAGE_BUILD/bundle/wheels.txt"
  do_pack "$STAGE_BUILD/bundle"
  rm -rf "$STAGE_BUILD"
}

do_pack() {  # --- here: a folder named bundle -> .gpu1 .. .gpuN (git-ignored), PART_SIZE each ---
  local bundle=$1 tmp sum parts i k
  [ "$(basename "$bundle")" = bundle ] || { echo "gpu_run: pack needs a folder named bundle. Received: $bundle" >&2; exit 2; }
  tmp=$(mktemp -d)
  tar -C "$(dirname "$bundle")" -cf "$tmp/bundle.tar" bundle
  sum=$(sha256sum "$tmp/bundle.tar" | cut -d' ' -f1)
  (cd "$tmp" && split -b "$PART_SIZE" -d -a 2 bundle.tar part && rm bundle.tar)
  parts=("$tmp"/part*)
  rm -rf .gpu[1-9]*  # the parts of an earlier staging (not .gpu0, stage_step's wheels)
  for i in "${!parts[@]}"; do
    k=$((i + 1)); mkdir -p ".gpu$k"
    mv "${parts[$i]}" ".gpu$k/part-$k-of-${#parts[@]}"
    echo "$sum" > ".gpu$k/bundle.sha256"
    ignore_here ".gpu$k"
  done
  rm -rf "$tmp"
  echo "staged ${#parts[@]} parts of at most $PART_SIZE (bundle sha256 $sum): $(ls -d .gpu[1-9]* | tr '\n' ' ')"
}

do_stage_step() {  # --- here: what `step` needs besides the device's own packages -> .gpu0 (git-ignored) ---
  . .venv/bin/activate
  rm -rf .gpu0 && mkdir -p .gpu0
  # shellcheck disable=SC2086  # a list of requirements
  download_wheels .gpu0 $STEP_PACKAGES
  ignore_here .gpu0
  echo "staged .gpu0 ($(du -sh .gpu0 | cut -f1)): $(cd .gpu0 && ls | tr '\n' ' ')"
}

do_step() {  # --- device: benchmarks/train_step.py alone: Keras from .gpu0's wheels on the device's JAX ---
  local site=${STEP_SITE:-/tmp/site_step} status=0 left report
  if ! ls .gpu0/*.whl >/dev/null 2>&1; then
    echo "gpu_run: step: no wheels in .gpu0: run experiments/gpu_run.sh stage_step here, and carry [\".gpu0\"]" >&2
    exit 4
  fi
  rm -rf "$site" && mkdir -p "$site"
  for wheel in .gpu0/*.whl; do  # (no unzip needed)
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$site"
  done
  # No persistent compilation cache: one call, nothing to continue.
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1 \
    XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
  out_env
  report="$OUT/${BENCH_NAME}_train_step.md"
  { python3 -c 'import keras, jax; print("keras", keras.__version__, "| jax", jax.__version__, "|", jax.devices())'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } 2>&1 | tee -a "$OUT/step.log"
  left=$(( LIMIT_S - $(elapsed) ))
  if too_short "$left" "the training step"; then return 1; fi
  # shellcheck disable=SC2086  # EXTRA_STEP_FLAGS is a list of flags
  timeout "$left" python3 benchmarks/train_step.py --output="$report" $EXTRA_STEP_FLAGS 2>&1 | tee -a "$OUT/step.log" \
    || status=$?
  if [ "$status" = 0 ]; then echo "step complete: $report"; return 0; fi
  echo "step stopped (status $status) after $(elapsed) s: what it measured is in $report"
  return 1
}

do_receive() {  # --- device, every part call: keep the carried part; after the last, unpack ---
  if unpacked; then echo "bundle already unpacked"; return 0; fi  # a repeated `receive all`: go on with `all`
  mkdir -p "$STAGE"
  # Every part in the tree: the one carried now and, where the machine keeps ignored folders
  # between calls, the earlier ones. The carried part is the highest; parts of another staging
  # (another sha256) are caught below.
  carried=
  while IFS= read -r found; do
    cp "$found" "$(dirname "$found")/bundle.sha256" "$STAGE/"
    k=${found##*/part-}; k=${k%-of-*}
    if [ -z "$carried" ] || [ "$k" -gt "$carried" ]; then carried=$k; fi
  done < <(find . -maxdepth 2 -path './.gpu*/part-*-of-*')
  total=$(find "$STAGE" -maxdepth 1 -name 'part-*-of-*' | head -1 | sed 's/.*-of-//')
  if [ -z "$total" ]; then echo "gpu_run: no part carried and none received: carry .gpuK" >&2; exit 4; fi
  missing=$(for k in $(seq 1 "$total"); do [ -f "$STAGE/part-$k-of-$total" ] || printf '%s ' "$k"; done)
  if [ -n "$missing" ]; then
    echo "received part ${carried:-none} of $total; missing: $missing"
    # Only later parts missing: the normal progression. An earlier one missing: this is a new
    # machine (the last was given back), so `all` must not run; start again from part 1.
    for k in $missing; do
      if [ -z "$carried" ] || [ "$k" -lt "$carried" ]; then
        echo "gpu_run: part $k was received on a machine that has been given back since: send every part again" >&2
        exit 4
      fi
    done
    return 0
  fi
  parts=$(for k in $(seq 1 "$total"); do printf '%s ' "$STAGE/part-$k-of-$total"; done)
  # shellcheck disable=SC2086
  sum=$(cat $parts | sha256sum | cut -d' ' -f1)
  if [ "$sum" != "$(cat "$STAGE/bundle.sha256")" ]; then
    echo "gpu_run: the $total parts do not make the staged bundle (sha256 $sum, expected $(cat "$STAGE/bundle.sha256")):" \
      "parts of two stagings mixed? rm -rf $STAGE and send them again" >&2
    exit 5
  fi
  # shellcheck disable=SC2086
  cat $parts | tar -x -C "$STAGE" && rm -f $parts
  mkdir -p "$SITE"
  if command -v xz >/dev/null; then xz -d -T0 < "$STAGE/bundle/site.tar.xz" | tar -x -C "$SITE"
  else python3 -c "import sys, tarfile; tarfile.open(sys.argv[1], 'r:xz').extractall(sys.argv[2])" "$STAGE/bundle/site.tar.xz" "$SITE"
  fi
  rm -f "$STAGE/bundle/site.tar.xz"
  device_env
  # matplotlib (the experiment's figures) is the device image's: reported, not required (the benchmark needs none).
  python3 -c "
import tensorflow as tf; tf.config.set_visible_devices([], 'GPU')
import keras, jax
try:
    import matplotlib; figures = 'matplotlib ' + matplotlib.__version__
except ImportError:
    figures = 'NO matplotlib: the experiment writes no figures'
print('tensorflow', tf.__version__, tf.__file__, '| keras', keras.__version__, '|', figures, '|', jax.devices())"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "bundle unpacked in $(elapsed) s"
}

do_all() {  # --- device: the experiment, then the benchmark with the rest of the call's time ---
  device_env
  exp_status=0
  if complete "experiments/results/$RUN/results.json" && [ -z "${RERUN:-}" ]; then
    echo "experiments/results/$RUN holds complete results: experiment skipped (RERUN=1 repeats it)"
  else
    run_experiment $(( LIMIT_S - BENCH_RESERVE_S - $(elapsed) )) || exp_status=$?
  fi
  BENCH_START=$(elapsed)
  run_bench $(( LIMIT_S - BENCH_START )) || true
  [ "$exp_status" = 0 ] || echo "experiment incomplete: call 'all' again while the machine is warm"
}

do_experiment() {  # --- device: issue 6's protocol alone ---
  device_env
  run_experiment $(( LIMIT_S - $(elapsed) ))
}

do_bench() {  # --- device: issue 7's tables alone ---
  device_env
  BENCH_START=$(elapsed)
  run_bench $(( LIMIT_S - BENCH_START ))
}

append_log() {  # $1: a device call's log -> appended to benchmarks/results/$BENCH_NAME.log (each table names its command)
  { [ -s "benchmarks/results/$BENCH_NAME.log" ] && printf '\n===== gpu_run.sh collect %s =====\n' "$(date -u '+%F %H:%M UTC')"
    cat "$1"; } >> "benchmarks/results/$BENCH_NAME.log"
}

do_collect() {  # --- here: FILES_AT of the last device call -> the repo's results folders ---
  local files_at=$1 tmp found=0 table
  [ -d "$files_at" ] || { echo "gpu_run: collect: no folder $files_at" >&2; exit 2; }
  # The tables' names: the device's GPU kind, as the call wrote it (BENCH_NAME if it did not).
  if [ -s "$files_at/bench_name" ]; then BENCH_NAME=$(cat "$files_at/bench_name"); fi
  BENCH_NAME=${BENCH_NAME:-h200}
  mkdir -p benchmarks/results
  # `step`: the training step's report (partial if the call was cut short) and its log.
  for table in "$files_at"/*_train_step.md; do
    [ -f "$table" ] || continue
    found=1; cp "$table" "benchmarks/results/.$(basename "$table").tmp" && mv "benchmarks/results/.$(basename "$table").tmp" "benchmarks/results/$(basename "$table")"
    if grep -q '^\*\*Partial\*\*' "$table"; then echo "benchmarks/results/$(basename "$table"): PARTIAL ($(grep '^\*\*Partial\*\*' "$table"))"
    else echo "benchmarks/results/$(basename "$table"): complete"; fi
  done
  if [ -f "$files_at/step.log" ]; then append_log "$files_at/step.log"; fi
  # Each archive is unpacked into a temporary folder beside its target, checked, then swapped in:
  # a truncated archive changes nothing, and no file of an earlier collect stays mixed in.
  if [ -f "$files_at/bench.tar.gz" ]; then
    found=1; tmp=$(mktemp -d benchmarks/.collect-XXXXXX)
    tar -xzf "$files_at/bench.tar.gz" -C "$tmp" || { rm -rf "$tmp"; echo "gpu_run: bench.tar.gz is damaged" >&2; exit 1; }
    cp -a "$tmp"/. benchmarks/results/ && rm -rf "$tmp"  # other devices' tables stay
    echo "benchmarks/results: $(ls benchmarks/results | tr '\n' ' ')"
  fi
  # The call's log, also when no archive came back (the call was cut before its first packing).
  if [ -f "$files_at/bench.log" ]; then
    found=1; append_log "$files_at/bench.log"
    [ -f "$files_at/bench.tar.gz" ] || echo "gpu_run: collect: no bench.tar.gz, only bench.log (appended to benchmarks/results/$BENCH_NAME.log)"
  fi
  if [ -f "$files_at/$RUN.tar.gz" ]; then
    found=1; mkdir -p experiments/results; tmp=$(mktemp -d "experiments/results/.collect-$RUN-XXXXXX")
    tar -xzf "$files_at/$RUN.tar.gz" -C "$tmp" || { rm -rf "$tmp"; echo "gpu_run: $RUN.tar.gz is damaged" >&2; exit 1; }
    [ -f "$files_at/experiment.log" ] && cp "$files_at/experiment.log" "$tmp/experiment.log"
    rm -rf "experiments/results/$RUN" && mv "$tmp" "experiments/results/$RUN"
    echo "experiments/results/$RUN: $(ls "experiments/results/$RUN" | tr '\n' ' ')"
    if complete "experiments/results/$RUN/results.json"; then echo "experiment: complete"
    elif [ -f "experiments/results/$RUN/results.json" ]; then echo "experiment: PARTIAL (results.md says which models)"
    else echo "experiment: no results.json (no stage finished): see experiment.log"; fi
  fi
  if [ "$found" = 0 ]; then
    echo "gpu_run: collect: no *_train_step.md, bench.tar.gz, bench.log or $RUN.tar.gz in $files_at (RUN=$RUN?): $(ls -A "$files_at" | tr '\n' ' ')" >&2
    exit 1
  fi
}

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 2; }

# Verbs run in order in one process, so that `receive all` shares one clock (LIMIT_S counts from
# the start of the call, unpacking included).
[ $# -gt 0 ] || usage
while [ $# -gt 0 ]; do
  verb=$1; shift
  case "$verb" in
    stage|stage_step|receive|all|experiment|bench|step) "do_$verb" ;;
    collect|pack) [ $# -gt 0 ] || usage; "do_$verb" "$1"; shift ;;
    *) usage ;;
  esac
done
