#!/usr/bin/env bash
# What the first H200 call of the next session should run to close the profiling issue: the
# measured-peak MFU path, the memory snapshot dumped by an out-of-memory run, and the in-run
# kernel table since it keeps kernel events only. About two minutes.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=$PWD; W=/tmp/wn; mkdir -p $W; cd $W
timeout 150 python3 -m lmprof run $R/configs/gpt2_small.yaml attention=cudnn max_steps=12 logging_steps=12 \
  eval_max_batches=2 profile.enabled=true profile.wait=5 profile.warmup=2 profile.active=3 \
  profile.peak=measured run_name=measured_peak 2>&1 | tail -3
timeout 120 python3 -m lmprof run $R/configs/gpt2_small.yaml attention=cudnn batch_size=512 max_steps=2 \
  logging_steps=1 profile.memory_snapshot=true run_name=oom_snapshot 2>&1 | tail -3
ls -la results/traces/*/
python3 - <<'PY'
import csv
for r in csv.DictReader(open("results.csv")):
    print({k: r.get(k) for k in ("run_name", "status", "status_detail", "peak_source", "peak_tflops",
                                 "mfu", "hfu", "peak_gpu_mem_gb", "alloc_ooms")})
PY
cat results/tables/measured_peak_profile_ops.md | tail -12
gzip -9 results/traces/*/*.json results/traces/*/*.pickle 2>/dev/null
tar czf "$OUT/next.tar.gz" results.csv results logs
