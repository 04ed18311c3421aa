CALL=F1; source .gpu/common.sh
mkdir -p /tmp/whl && cp .whlq/* /tmp/whl/ && echo whl1 copied
cat $R/environment.txt
for s in 1 2; do
  step recipe_s$s 200 python benchmarks/nanogpt_recipe.py --out $R/recipe_s$s --seeds $s --deadline 190 --lmprof-set system.compile_mode=reduce-overhead system.compile_scope=region
  cat $R/recipe_s$s/nanogpt_recipe.md | head -6; grep -E "time:|steady window" $R/recipe_s$s/logs/lmprof_seed$s.log
done
step trace_small 120 python -m lmprof run data.source=synthetic vocab_size=50257 model.n_layers=12 model.d_model=768 model.n_heads=12 model.d_ff=3072 model.dropout=0 model.bias=false sequence_length=1024 batch_size=16 system.precision=bf16 model.attention=cudnn system.compile=true training.max_steps=40 logging.eval_interval=0 profile.enabled=true profile.wait=30 profile.warmup=3 profile.active=3 system.device=cuda logging.output_dir=$R/trace_small progress=false
t=$(find $R/trace_small -name 'trace.json*' | head -1); echo trace $t
python benchmarks/trace_kernels.py $t > $R/trace_small_kernels.md; head -60 $R/trace_small_kernels.md
python .gpu/busy.py $t
find $R -name 'trace.json*' -size +20M -delete
pack
