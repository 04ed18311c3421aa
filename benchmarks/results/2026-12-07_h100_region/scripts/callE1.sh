CALL=E1; source .gpu/common.sh
mkdir -p /tmp/whl && cp .whlq/* /tmp/whl/ && echo whl1 copied
cat $R/environment.txt
python -c "import sys,os,torch; print('dont_write_bytecode', sys.flags.dont_write_bytecode, 'PYTHONDONTWRITEBYTECODE', os.environ.get('PYTHONDONTWRITEBYTECODE'), 'torch dir writable', os.access(os.path.dirname(torch.__file__), os.W_OK), 'nproc', os.cpu_count())"
step region_check 120 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic_rc python .gpu/region_check.py
cat $R/region_check.log | grep "^|"
step recipe 300 python benchmarks/nanogpt_recipe.py --out $R/recipe --seeds 0 --deadline 290 --lmprof-set system.compile_mode=reduce-overhead system.compile_scope=region
cat $R/recipe/nanogpt_recipe.md
grep -E "time:|steady window|peak" $R/recipe/logs/lmprof_seed0.log
whole() {  # whole NAME OVERRIDES...: lmprof's recipe alone, process start to exit, fresh inductor cache
  local n=$1; shift; local cmd; cmd=$(python .gpu/lmcmd.py $R/$n "$@" | tail -1)
  local s=$(date +%s.%N); env TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$n timeout 120 $cmd > $R/$n.log 2>&1; local rc=$?
  echo "=== whole $n rc=$rc process $(python -c "print(round($(date +%s.%N)-$s,1))") s"; grep -E "time:|steady window|best|eval: loss" $R/$n.log | tail -5
}
whole model_ro system.compile_mode=reduce-overhead
export TORCH_LOGS=recompiles,graph_breaks
step region_d 60 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic_d1 python .gpu/diag1.py $R region training.max_steps=300 system.compile_scope=region
step region_ro_d 60 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic_d2 python .gpu/diag1.py $R region_ro training.max_steps=300 system.compile_scope=region system.compile_mode=reduce-overhead
step model_d 60 env TORCHINDUCTOR_CACHE_DIR=/tmp/ic_d3 python .gpu/diag1.py $R model training.max_steps=300
pack
for f in $R/region_d.log $R/region_ro_d.log $R/model_d.log; do echo "#### $f"; grep -E "RC |time:|Recompil|graph break|steady window|peak|compile_inner|create_aot_dispatcher|fw_compiler_base|bw_compiler" $f | head -14; done
