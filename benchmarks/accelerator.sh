#!/bin/bash
# The accelerator checks in one run (about 10 minutes on one H100/H200), in order of value:
#   1. precision_sweep:reference_gpt2  the paper's 32-bit effect at V = 50,257, N up to 10^4
#   2. sampler_speed:owt               FHS vs cached ancestral at owt_mdm_small's full shape (L=1024,
#                                      GPT-2 vocabulary, batch 1, N = 1024 and 10^4): the 20x claim
#   2b. the same with exact (float64) draws, both vocabularies and the ARM's KV cache at L=256/1024
#   3. python -m mdm_jax.numerics      the numerics report (Gumbel caps, tail law, token ids, the
#                                      network's arithmetic per matmul precision) and its comparison
#                                      with docs/numerics/cpu_report.json, written straight into
#                                      docs/numerics/<device>_report.json and cpu_vs_<device>.md:
#                                      commit both (notebook 05 picks the report up)
#   4. benchmarks/train_throughput.py  owt_mdm_small, bf16, batch 32: tokens/s and MFU (median step), 5
#                                      slots interleaved with an 8192^3 bf16 matmul reference
# Usage: benchmarks/accelerator.sh OUT_DIR   (PYTHON=... to pick the interpreter; default python3;
#        PARTS="sweep speed speed64 numerics throughput" to run a subset)
# Each part has its own time limit, so one that overruns costs only itself. Everything lands in
# OUT_DIR: one log per part and results.tar.gz with the experiments' workdirs.
set -u
OUT=${1:?usage: benchmarks/accelerator.sh OUT_DIR}
PY=${PYTHON:-python3}
W=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

PARTS=${PARTS:-sweep speed speed64 numerics throughput}
want() { [[ " $PARTS " == *" $1 "* ]]; }
pack() { tar czf "$OUT/results.tar.gz" -C "$W" . 2>/dev/null; }

$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1 | tee "$OUT/env.log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null | tee -a "$OUT/env.log"

want sweep && { timeout ${T_SWEEP:-220} $PY -m mdm_jax.main --mode=experiment \
  --config=configs/experiments/precision_sweep.py:reference_gpt2 --workdir="$W/precision_sweep_reference_gpt2" \
  > "$OUT/precision_sweep.log" 2>&1; echo "precision_sweep rc=$?" | tee -a "$OUT/env.log"; pack; }

want speed && { timeout ${T_SPEED:-150} $PY -m mdm_jax.main --mode=experiment \
  --config=configs/experiments/sampler_speed.py:owt --workdir="$W/sampler_speed_owt" \
  --config.experiment.vocab_sizes=50257 --config.experiment.steps=1024,10000 \
  --config.sampling.batch_size=1 --config.experiment.repeats=1 --config.experiment.arm_lengths='()' \
  > "$OUT/sampler_speed.log" 2>&1; echo "sampler_speed rc=$?" | tee -a "$OUT/env.log"; pack; }

want speed64 && { timeout ${T_SPEED64:-330} $PY -m mdm_jax.main --mode=experiment \
  --config=configs/experiments/sampler_speed.py:owt --workdir="$W/sampler_speed_owt_float64" \
  --config.sampling.precision=float64 --config.experiment.vocab_sizes=256,50257 \
  --config.experiment.steps=1024,10000 --config.sampling.batch_size=1 \
  --config.experiment.repeats=1 --config.experiment.arm_lengths=256,1024 \
  > "$OUT/sampler_speed_float64.log" 2>&1; echo "sampler_speed_float64 rc=$?" | tee -a "$OUT/env.log"; pack; }

want numerics && { timeout ${T_NUMERICS:-300} $PY -m mdm_jax.numerics report --scale=6 \
  --out="$OUT/numerics_report.json" > "$OUT/numerics.log" 2>&1; echo "numerics rc=$?" | tee -a "$OUT/env.log"
  DEV=$($PY -c 'import json, re, sys; r = json.load(open(sys.argv[1]))["rows"]["env/device_kind"]["value"]
print(re.sub("[^a-z0-9]+", "-", r.lower()).strip("-"))' "$OUT/numerics_report.json") && {
    cp "$OUT/numerics_report.json" "docs/numerics/${DEV}_report.json"
    $PY -m mdm_jax.numerics compare docs/numerics/cpu_report.json "docs/numerics/${DEV}_report.json" \
      --out="docs/numerics/cpu_vs_${DEV}.md" > "$OUT/numerics_compare.log" 2>&1
    echo "numerics compare rc=$? -> docs/numerics/${DEV}_report.json, docs/numerics/cpu_vs_${DEV}.md" | tee -a "$OUT/env.log"; }
  pack; }

want throughput && { timeout ${T_THROUGHPUT:-180} $PY benchmarks/train_throughput.py --config=configs/owt_mdm_small.py \
  --config.train.batch_size=32 --slots=5 --min_seconds=1.5 --json="$OUT/train_throughput.json" \
  > "$OUT/train_throughput.log" 2>&1; echo "train_throughput rc=$?" | tee -a "$OUT/env.log"; pack; }
exit 0  # a skipped last part must not read as a failure
