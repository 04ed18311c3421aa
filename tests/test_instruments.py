"""The in-run kernel table: what it counts and how it names the share of each kind of work."""

from __future__ import annotations

from types import SimpleNamespace

from torch.autograd import DeviceType

from lmprof.train.instruments import categorize, op_rows


def _evt(key, device_type, self_device_us, annotation=False, cpu_us=0.0):
    return SimpleNamespace(
        key=key,
        count=3,
        device_type=device_type,
        is_user_annotation=annotation,
        self_device_time_total=self_device_us,
        self_cpu_time_total=cpu_us,
    )


def test_gpu_table_counts_kernels_once_and_never_the_annotated_ranges_around_them():
    events = [
        _evt("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", DeviceType.CUDA, 1000.0),
        _evt("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", DeviceType.CUDA, 500.0),
        _evt("aten::mm", DeviceType.CPU, 1000.0),  # an operator: its kernel is already counted
        _evt("ProfilerStep*", DeviceType.CUDA, 9000.0),  # the step range on the GPU timeline
        _evt("Optimizer.step#AdamW.step", DeviceType.CUDA, 300.0),
        _evt("my_range", DeviceType.CUDA, 800.0, annotation=True),
        _evt("idle_kernel", DeviceType.CUDA, 0.0),
    ]
    rows = op_rows(events, use_device=True)
    assert [r[0] for r in rows] == [events[0].key, events[1].key]
    assert [r[2] for r in rows] == [1.0, 0.5]  # microseconds to milliseconds
    assert [categorize(r[0]) for r in rows] == ["matmul", "attention"]


def test_cpu_table_counts_operators_by_self_cpu_time():
    events = [
        _evt("aten::mm", DeviceType.CPU, 0.0, cpu_us=2000.0),
        _evt("aten::add", DeviceType.CPU, 0.0),
    ]
    assert op_rows(events, use_device=False) == [("aten::mm", 3, 2.0)]
