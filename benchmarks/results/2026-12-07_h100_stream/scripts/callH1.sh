CALL=H1; source .gpu/common.sh
mkdir -p /tmp/whl && cp .whlA/* /tmp/whl/ && cp -r ext /tmp/ext && echo whlA and ext copied; ls /tmp/whl | wc -l
step optim 60 python benchmarks/optimizer_step.py --out $R
step calib 90 python benchmarks/memory_calibration.py --grid stream --out $R/calib_stream.json
step stream 400 python benchmarks/step_throughput.py --only stream --out $R
grep "^|" $R/stream.log
cat $R/optimizer_step_small.md
pack
