#!/usr/bin/env bash
# Fourth H200 call: loss curves of each optimisation against the fp32 vanilla reference.
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=$PWD; W=/tmp/w4; mkdir -p $W; cd $W
timeout 215 python3 -m lmprof sweep $R/benchmarks/h200_curves.yaml 2>&1 | tail -12
tar czf "$OUT/session4.tar.gz" results.csv results logs 2>/dev/null
