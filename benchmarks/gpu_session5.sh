#!/usr/bin/env bash
# Session 5, first H200 call: close the profiling checks (gpu_next.sh), then a kernel table of
# the compiled GPT-2-small step (cudnn, bf16, batch 16) to see where the compiled step's time goes.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
bash benchmarks/gpu_next.sh 2>&1 | tee "$OUT/next.log"
W=/tmp/wc; mkdir -p $W; cd $W
for b in true false; do
  timeout 200 python3 -m lmprof run $R/configs/gpt2_small.yaml attention=cudnn compile=true bias=$b \
    data.source=synthetic max_steps=14 logging_steps=14 eval_max_batches=2 profile.enabled=true \
    profile.wait=8 profile.warmup=2 profile.active=3 run_name=compiled_bias_$b 2>&1 | tail -2
  python3 $R/benchmarks/trace_kernels.py results/traces/compiled_bias_$b/*.json* > "$OUT/compiled_bias_${b}_kernels.md"
  tail -12 "$OUT/compiled_bias_${b}_kernels.md"
  head -30 "$OUT/compiled_bias_${b}_kernels.md" | tail -26
done
python3 - <<'PY'
import csv
for r in csv.DictReader(open("results.csv")):
    print(r["run_name"], r["status"], r.get("steady_tokens_per_sec"), r.get("step_time_p50_ms"), r.get("peak_gpu_mem_gb"))
PY
