#!/usr/bin/env bash
# Session 5, after the fused cross-entropy and the seed's explicit-mask attention (sdpa_mask).
#   bash benchmarks/gpu_session5b.sh matrix   # Triton CE check + step matrix          (~7 min)
#   bash benchmarks/gpu_session5b.sh calib    # in-run kernel table + memory calibration (~6 min)
#   bash benchmarks/gpu_session5b.sh curves   # loss curves + end to end on real tokens  (~6 min)
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=$PWD
case "$1" in
matrix)
  timeout 120 python3 benchmarks/ops_check.py --out "$OUT" 2>&1 | tee "$OUT/ops_check.log"
  timeout 440 python3 benchmarks/step_throughput.py --out "$OUT" --only small_seed_module_fp16 \
    small_seed_equiv_fp16 small_vanilla_fp16 small_cudnn_bf16 small_cudnn_bf16_compile \
    small_cudnn_bf16_compile_nobias small_cudnn_bf16_compile_b64 medium_cudnn_bf16_compile \
    small_long_131k 2>&1 | grep -v '^{' ;;
calib)
  W=/tmp/wp; mkdir -p $W; cd $W
  timeout 150 python3 -m lmprof run $R/configs/gpt2_small.yaml attention=cudnn compile=true \
    data.source=synthetic max_steps=14 logging_steps=14 eval_max_batches=2 profile.enabled=true \
    profile.wait=8 profile.warmup=2 profile.active=3 run_name=compiled_fused_ce 2>&1 | tail -2
  cp results/tables/compiled_fused_ce_profile_ops.md "$OUT/"
  python3 $R/benchmarks/trace_kernels.py results/traces/compiled_fused_ce/trace.json > "$OUT/compiled_fused_ce_kernels.md"
  tail -9 "$OUT/compiled_fused_ce_profile_ops.md"; head -14 "$OUT/compiled_fused_ce_kernels.md"
  cd $R
  timeout 380 python3 benchmarks/memory_calibration.py --out "$OUT/memory_calibration.json" 2>&1 \
    | tee "$OUT/memory_calibration.log" ;;
curves)
  W=/tmp/wq; mkdir -p $W; cd $W
  timeout 330 python3 -m lmprof sweep $R/benchmarks/h200_curves.yaml 2>&1 | tail -4
  timeout 190 python3 -m lmprof run $R/configs/gpt2_small.yaml attention=cudnn compile=true \
    max_steps=300 logging_steps=25 run_name=e2e_cudnn_compile 2>&1 | tail -3
  python3 - <<'PY'
import csv
for r in csv.DictReader(open("results.csv")):
    print(r["run_name"], r["status"], r.get("steady_tokens_per_sec"), r.get("throughput"),
          r.get("step_time_p50_ms"), r.get("peak_gpu_mem_gb"), r.get("eval_loss"))
PY
  tar czf "$OUT/curves.tar.gz" results.csv results/details logs ;;
esac
