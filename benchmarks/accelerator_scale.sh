#!/bin/bash
# The scaling options on one GPU, for the next session that has one (about 12 minutes on an H100/H200),
# in order of value (each part has its own time limit and log; a failed part costs only itself):
#   mfu       owt_mdm_small (bf16, batch 32) MFU for model.remat none/dots/full x model.scan_layers
#             False/True, then batch 64 with remat=dots: which setting reaches >= 45% MFU
#   flags     the same step with XLA GPU flags from the JAX/XLA GPU performance guides (latency
#             hiding scheduler; Triton GEMM off; command buffers off): default vs each
#   large     24 layers x 1024 (16 heads, GELU 4096), L=1024, bf16, batch 16, remat none and dots
#   long      owt_mdm_small_8k: one micro-batch of 8 x 8,192 tokens with the selected attention
#             kernel (run_metadata-equivalent line printed: which kernel, fallback or not)
#   compile   train-step compile time at 12 and 48 layers, scanned and unscanned
#   memory    remat memory analysis at owt_mdm_small's shape (compiles only)
# Usage: benchmarks/accelerator_scale.sh OUT_DIR   (PYTHON=... interpreter, default python3;
#        PARTS="mfu flags large long compile memory" to run a subset)
# Read: grep -h "MFU\|step (diffusion" OUT_DIR/*.log; the best configuration goes into the docstring
# of configs/owt_mdm_small.py, the figures into benchmarks/RESULTS.md ("Scaling options").
set -u
OUT=${1:?usage: benchmarks/accelerator_scale.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

PARTS=${PARTS:-mfu flags large long compile memory}
want() { [[ " $PARTS " == *" $1 "* ]]; }
TP="benchmarks/train_throughput.py --config=configs/owt_mdm_small.py --steps=5 --matmul_steps=3 --train_only"
run() {  # run NAME SECONDS ENV... -- ARGS...: one timed train_throughput call, its log in OUT/NAME.log
  # (callers pass at least one ENV, X=1 when none matters: an empty array trips `set -u` in old bash)
  local name=$1 limit=$2; shift 2
  local envs=(); while [[ $1 != -- ]]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout "$limit" $PY $TP "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(grep -h 'train step' "$OUT/$name.log" | head -1)" | tee -a "$OUT/summary.log"
}

$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$OUT/env.log"

if want mfu; then
  for scan in False True; do for remat in none dots full; do
    run "mfu_scan${scan}_remat${remat}" 90 X=1 -- --config.train.batch_size=32 \
      --config.model.scan_layers=$scan --config.model.remat=$remat
  done; done
  run mfu_batch64_dots 90 X=1 -- --config.train.batch_size=64 --config.model.remat=dots
fi

if want flags; then
  run flags_default 90 X=1 -- --config.train.batch_size=32
  run flags_lhs 90 XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true -- --config.train.batch_size=32
  run flags_no_triton_gemm 90 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false -- --config.train.batch_size=32
  run flags_no_command_buffer 90 XLA_FLAGS=--xla_gpu_enable_command_buffer= -- --config.train.batch_size=32
fi

if want large; then
  for remat in none dots; do
    run "large_24x1024_remat${remat}" 150 X=1 -- --config.train.batch_size=16 --config.model.num_layers=24 \
      --config.model.emb_dim=1024 --config.model.num_heads=16 --config.model.mlp_dim=4096 \
      --config.model.scan_layers=True --config.model.remat=$remat
  done
fi

if want long; then
  timeout 60 $PY -c "
from mdm_jax import config as c, models
cfg = c.load_file('configs/owt_mdm_small_8k.py'); print('attention:', models.attention_choice(cfg))" \
    2>&1 | tee "$OUT/long_attention.log" | tail -1 | tee -a "$OUT/summary.log"
  TP="benchmarks/train_throughput.py --config=configs/owt_mdm_small_8k.py --steps=3 --matmul_steps=3 --train_only" \
    run long_8k_batch8 180 X=1 -- --config.train.batch_size=8 --config.train.grad_accum_steps=1
fi

if want compile; then
  timeout 300 $PY benchmarks/compile_time.py --config=configs/owt_mdm_small.py --config.train.batch_size=32 \
    --layers=12,48 > "$OUT/compile_time.log" 2>&1; echo "compile rc=$?" | tee -a "$OUT/summary.log"
fi

if want memory; then
  timeout 240 $PY benchmarks/remat_memory.py --batch=32 --time_rounds=0 > "$OUT/remat_memory.log" 2>&1
  echo "memory rc=$?" | tee -a "$OUT/summary.log"
fi
exit 0  # a skipped last part must not read as a failure
