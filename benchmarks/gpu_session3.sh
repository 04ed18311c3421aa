#!/usr/bin/env bash
# Third H200 call: the seq_len + bs_fp16 sweep (one run chosen to run out of memory), find-max
# on batch size, FSDP2 vs single-GPU throughput.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=$PWD; W=/tmp/w3; mkdir -p $W; cd $W
timeout 250 python3 -m lmprof sweep $R/benchmarks/h200_sweep.yaml 2>&1 | tail -16
timeout 130 python3 -m lmprof find-max $R/configs/gpt2_small.yaml run_name=findmax_gpt2_small \
  --vary batch_size --steps 2 --max-probes 6 2>&1 | tail -9
tar czf "$OUT/session3.tar.gz" results.csv results logs 2>/dev/null
cd $R
timeout 100 python3 benchmarks/distributed_check.py --out "$OUT/dist" --only throughput --steps 25 2>&1 | tail -8
