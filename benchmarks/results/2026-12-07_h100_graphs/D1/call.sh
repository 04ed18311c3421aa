# The D1 call as it ran (sourcing the ignored .gpu/common.sh: environment, step, pack); the diagnostics script then lay at .gpu/diag1.py
CALL=D1; source .gpu/common.sh
mkdir -p /tmp/whl && cp .whlq/* /tmp/whl/ && echo whl1 copied
cat $R/environment.txt
step nanogpt 290 python benchmarks/nanogpt_recipe.py --out $R/nanogpt --seeds 0 --deadline 280
cat $R/nanogpt/nanogpt_recipe.md
export TORCH_LOGS=recompiles,graph_breaks
step after_cold 70 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic1 python benchmarks/results/2026-12-07_h100_graphs/D1/diag.py $R prof_after training.max_steps=300
step blocks_cold 60 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic4 python benchmarks/results/2026-12-07_h100_graphs/D1/diag.py $R blocks training.max_steps=300 system.compile_scope=blocks
step trace 50 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic1 python benchmarks/results/2026-12-07_h100_graphs/D1/diag.py $R trace training.max_steps=120 profile.enabled=true profile.wait=100 profile.warmup=3 profile.active=5 logging.eval_interval=0
step cudagraphs 60 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic2 python benchmarks/results/2026-12-07_h100_graphs/D1/diag.py $R cudagraphs training.max_steps=300 system.compile_mode=reduce-overhead
find $R -name 'trace.json*' -size +20M -delete
pack
for f in $R/*.log; do echo "#### $f"; grep -E "RC |ended|time:|Recompil|graph break|ProfilerStep|step (10|20|300)/|steady window" $f | head -14; done
