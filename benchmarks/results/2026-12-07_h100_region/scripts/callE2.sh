CALL=E2; source .gpu/common.sh
ls /tmp/whl | head; cat /tmp/whl/cu13.part_aa .whl2/cu13.part_ab > /tmp/whl/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl && rm /tmp/whl/cu13.part_aa
pip install --no-index --no-deps --target /tmp/x/lib/python3.12/site-packages /tmp/whl/*.whl > $R/pip.log 2>&1; echo pip rc=$?; tail -2 $R/pip.log
mksc; export PYTHONPATH=$PYTHONPATH:/tmp/sc
python -c "import quack; print('quack', quack.__file__)"
step ops_check 200 python benchmarks/ops_check.py --losses-only --out $R
step losses 330 python benchmarks/step_throughput.py --only losses --out $R
pack
