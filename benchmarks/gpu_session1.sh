#!/usr/bin/env bash
# First H200 call: environment, the isolated-step matrix (eager + compiled), the default job.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
{
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c 'import torch,sys;print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.backends.cudnn.version())'
} 2>&1 | tee "$OUT/env.txt"
python3 benchmarks/step_throughput.py --out "$OUT" --only \
  small_seed_module_fp16 small_seed_equiv_fp16 small_vanilla_fp32 small_vanilla_bf16 small_sdpa_bf16 \
  small_flash_bf16 small_mem_efficient_bf16 small_cudnn_bf16 small_cudnn_bf16_chunked \
  small_flash_bf16_compile small_cudnn_bf16_compile small_cudnn_bf16_compile_chunked 2>&1 | tee "$OUT/bench.log" | grep -v '^{'


cat "$OUT/step_throughput.md"
