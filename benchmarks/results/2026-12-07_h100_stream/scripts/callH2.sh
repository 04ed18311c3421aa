CALL=H2; source .gpu/common.sh
[ -e ext ] || ln -s /tmp/ext ext
cp .whlB/*.whl /tmp/whl/ && cat /tmp/whl/cu13.part_aa .whlB/cu13.part_ab > /tmp/whl/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl && rm /tmp/whl/cu13.part_aa
pip install --no-index --no-deps --target /tmp/x/lib/python3.12/site-packages /tmp/whl/*.whl > $R/pip.log 2>&1; echo pip rc=$?
mksc; export PYTHONPATH=$PYTHONPATH:/tmp/sc
python -c "import flash_attn.cute, quack; print('fa4 + quack import')" 2>&1 | tail -1
step fa4_stream 480 python benchmarks/step_throughput.py --only fa4_stream --out $R
grep "^|" $R/fa4_stream.log
pack
