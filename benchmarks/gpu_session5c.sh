#!/usr/bin/env bash
# Session 5, last H200 call: torch.compile modes on the GPT-2-small step (about 7 minutes).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
timeout 400 python3 benchmarks/step_throughput.py --out "$OUT" --only small_cudnn_bf16_compile \
  small_cudnn_bf16_compile_cudagraphs small_cudnn_bf16_compile_autotune 2>&1 | grep -v '^{' | tail -8
cat "$OUT/step_throughput.md" | tail -4
