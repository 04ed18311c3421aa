#!/usr/bin/env bash
# Second H200 call: more of the step matrix, FLOPs vs FlopCounterMode, end-to-end `lmprof run`
# on real tokens against the isolated step, step time against CUDA events, a profiler trace.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT/s2"; S=$OUT/s2
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
python3 benchmarks/step_throughput.py --out "$S" --only small_seed_equiv_fp16 small_seed_equiv_mem_efficient_fp16 \
  small_cudnn_bf16_compile small_cudnn_bf16_compile_nobias small_cudnn_bf16_compile_b64 \
  medium_cudnn_bf16_compile small_long_131k 2>&1 | grep -v '^{' | tee "$S/bench.log"
python3 benchmarks/flops_check.py 2>&1 | tee "$S/flops_check.md"
W=/tmp/w; mkdir -p $W; cd $W
COMMON="logging_steps=25 eval_max_batches=10 attention=cudnn compile=true max_steps=100 warmup_steps=10"
timeout 240 python3 -m lmprof run /work/main/configs/gpt2_small.yaml $COMMON run_name=e2e_real_cudnn_compile 2>&1 | tail -7
timeout 150 python3 -m lmprof run /work/main/configs/gpt2_small.yaml $COMMON data.source=synthetic run_name=e2e_synth_cudnn_compile 2>&1 | tail -3
timeout 120 python3 -m lmprof run /work/main/configs/gpt2_small.yaml attention=cudnn max_steps=12 logging_steps=12 \
  eval_max_batches=2 profile.enabled=true profile.wait=5 profile.warmup=2 profile.active=3 \
  profile.memory_snapshot=true profile.breakdown=true run_name=trace_gpt2_small 2>&1 | tail -3
cd - >/dev/null
tar czf "$OUT/session2.tar.gz" -C "$S" . -C $W results.csv results logs 2>/dev/null
ls -la $W/results/traces/* 2>/dev/null
python3 - <<'PY'
import csv
rows = list(csv.DictReader(open("/tmp/w/results.csv")))
keys = ["run_name","status","steady_tokens_per_sec","throughput","step_time_p50_ms","mfu","hfu","peak_gpu_mem_gb","predicted_peak_mem_gb","eval_perplexity","compile_time_sec","status_detail"]
for r in rows: print({k: r.get(k) for k in keys})
PY
cat "$S/step_throughput.md"
