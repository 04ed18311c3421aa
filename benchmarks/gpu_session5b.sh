#!/usr/bin/env bash
# Session 5, after the fused LM head + cross-entropy and the seed's explicit-mask attention.
#   bash benchmarks/gpu_session5b.sh matrix   # op check, step matrix, memory calibration (~9 min)
#   bash benchmarks/gpu_session5b.sh curves   # end to end on real tokens (with the in-run kernel
#                                             # table of the compiled step) + loss curves (~6 min)
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=$PWD
case "$1" in
matrix)
  timeout 100 python3 benchmarks/ops_check.py --out "$OUT" 2>&1 | tee "$OUT/ops_check.log"
  timeout 300 python3 benchmarks/step_throughput.py --out "$OUT" --only small_seed_equiv_fp16 \
    small_cudnn_bf16 small_cudnn_bf16_compile small_cudnn_bf16_compile_chunked \
    small_cudnn_bf16_compile_nobias medium_cudnn_bf16_compile small_long_131k 2>&1 | grep -v '^{'
  timeout 170 python3 benchmarks/memory_calibration.py --out "$OUT/memory_calibration.json" 2>&1 \
    | tee "$OUT/memory_calibration.log" | tail -3 ;;
curves)
  timeout 90 python3 benchmarks/ops_check.py --out "$OUT" 2>&1 | head -8
  W=/tmp/wq; mkdir -p $W; cd $W
  timeout 150 python3 -m lmprof run $R/configs/gpt2_small.yaml attention=cudnn compile=true \
    max_steps=300 logging_steps=25 profile.enabled=true profile.wait=200 profile.warmup=2 \
    profile.active=3 run_name=e2e_cudnn_compile 2>&1 | tail -3
  cp results/tables/e2e_cudnn_compile_profile_ops.md "$OUT/" 2>/dev/null
  timeout 300 python3 -m lmprof sweep $R/benchmarks/h200_curves.yaml 2>&1 | tail -4
  python3 - <<'PY'
import csv
for r in csv.DictReader(open("results.csv")):
    print(r["run_name"], r["status"], r.get("steady_tokens_per_sec"), r.get("throughput"),
          r.get("step_time_p50_ms"), r.get("peak_gpu_mem_gb"), r.get("eval_loss"))
PY
  tail -9 "$OUT/e2e_cudnn_compile_profile_ops.md"
  tar czf "$OUT/curves.tar.gz" results.csv results/details results/tables logs ;;
esac
