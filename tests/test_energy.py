"""Energy accounting with a fake NVML and a fake RAPL sysfs; the roofline on a synthetic trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmprof.ops.catalog import AdamW
from lmprof.profiling import energy as en
from lmprof.profiling import power
from lmprof.profiling import roofline as rl


class FakeNvml:
    """A GPU drawing a constant 500 W whose counter advances with an injected clock."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, clock: list[float], watts: float = 500.0, reasons: int = 0x4):
        self.clock, self.watts, self.reasons = clock, watts, reasons

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # mJ
        return int(self.clock[0] * self.watts * 1e3)

    def nvmlDeviceGetPowerUsage(self, h):  # mW
        return int(self.watts * 1e3)

    def nvmlDeviceGetClockInfo(self, h, kind):
        return 1500 if kind == 1 else 3200

    def nvmlDeviceGetTemperature(self, h, kind):
        return 60

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self.reasons


def _window(watts: float = 500.0, seconds: int = 10, reasons: int = 0x4):
    t = [0.0]
    source = power.NvmlSource(FakeNvml(t, watts, reasons), handle=None)
    sampler = en.EnergySampler(source, clock=lambda: t[0])
    t[0] = 2.0  # warm-up before the window
    sampler.start(thread=False)
    for _ in range(seconds):
        t[0] += 1.0
        sampler.sample_once()
    return sampler, sampler.stop()


def test_counter_and_sampled_power_agree_and_give_joules_per_token():
    sampler, w = _window(watts=500.0, seconds=10)
    assert w.seconds == pytest.approx(10.0)
    assert w.counter_j == pytest.approx(5000.0, rel=1e-6)
    assert w.sampled_j == pytest.approx(5000.0, rel=1e-6)
    assert sampler.run_j == pytest.approx(6000.0, rel=1e-6)  # the run includes warm-up
    row = en.energy_columns(w, "nvml", sampler.run_j, window_tokens=1e6)
    assert row["avg_power_w"] == pytest.approx(500.0)
    assert row["joules_per_token"] == pytest.approx(5e-3)
    assert row["tokens_per_kwh"] == pytest.approx(1e6 / 5000.0 * 3.6e6)
    assert row["clock_throttled"] is True and "sw_power_cap" in row["clock_reasons"]
    assert row["sm_clock_mhz_avg"] == 1500 and row["gpu_temp_c_max"] == 60


def test_ranks_are_summed_through_the_reduce():
    sampler, w = _window(watts=400.0, seconds=5)
    # Two identical ranks: the reduce doubles every entry.
    row = en.energy_columns(w, "nvml", sampler.run_j, 1000.0, reduce=lambda xs: [2 * x for x in xs])
    assert row["energy_steady_j_total"] == pytest.approx(4000.0)
    assert row["joules_per_token"] == pytest.approx(2.0)  # 4000 J over 2000 tokens


def test_idle_reason_is_not_throttling():
    _, w = _window(reasons=0x1)
    row = en.energy_columns(w, "nvml", None, 10.0)
    assert row["clock_throttled"] is False and row["clock_reasons"] == "none"


def test_no_source_leaves_columns_empty():
    assert en.energy_columns(None, "nvml", None, 10.0) == {"energy_source": ""}


def _zone(root: Path, name: str, energy: int, max_range: int) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    return z


def test_rapl_unwinds_wraparound(tmp_path: Path):
    z = _zone(tmp_path, "intel-rapl:0", energy=900, max_range=999)
    _zone(tmp_path, "intel-rapl:0:0", energy=0, max_range=999)  # a sub-zone is not counted
    zones, why = power.rapl_zones(tmp_path)
    assert zones == [z] and why == ""
    src = power.RaplSource(zones)
    (z / "energy_uj").write_text("100\n")  # wrapped: 900 -> 999 -> 0 -> 100 is 200 uJ
    assert src.energy_j() == pytest.approx(200e-6)


def test_rapl_missing_says_why(tmp_path: Path):
    zones, why = power.rapl_zones(tmp_path)
    assert zones == [] and "no RAPL" in why


def test_cost_columns():
    row = en.cost_columns(3.6, n_gpus=2, tokens_per_sec=1e6, run_seconds=3600)
    assert row["usd_per_run"] == pytest.approx(7.2)
    assert row["usd_per_million_tokens"] == pytest.approx(7.2 / 3600)  # 2 GPU-s per 1e6 tokens
    assert en.cost_columns(None, 1, 1e6, 10) == {}
    assert en.resolve_gpu_hour_usd("", "NVIDIA H200") is None
    assert en.resolve_gpu_hour_usd("2.5", "NVIDIA H200") == 2.5


def _trace() -> dict:
    """One step: a [1024,768] x [768,3072] matmul (100 us), a 40 us gap, a 20 us pointwise."""
    ev = [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "ts": 0, "dur": 500},
        {
            "ph": "X",
            "cat": "cpu_op",
            "name": "aten::mm",
            "ts": 1,
            "dur": 5,
            "args": {
                "External id": 7,
                "Input Dims": [[1024, 768], [768, 3072]],
                "Input type": ["c10::BFloat16", "c10::BFloat16"],
            },
        },
        {
            "ph": "X",
            "cat": "kernel",
            "name": "sm90_xmma_gemm_bf16bf16_bf16f32",
            "ts": 10,
            "dur": 100,
            "args": {"External id": 7, "stream": 7, "device": 0},
        },
        {
            "ph": "X",
            "cat": "kernel",
            "name": "vectorized_elementwise_kernel",
            "ts": 150,
            "dur": 20,
            "args": {"stream": 7, "device": 0},
        },
    ]
    return {"traceEvents": ev}


def test_roofline_work_idle_and_headroom():
    lim = rl.Limits(matmul_flops=1e15, bandwidth=4e12)
    r = rl.analyze(_trace(), lim)
    rows = {row["group"]: row for row in r.table()}
    assert rows["matmul"]["gflop_per_step"] == pytest.approx(2 * 1024 * 768 * 3072 / 1e9)
    assert rows["idle"]["ms_per_step"] == pytest.approx(0.04)
    assert rows["pointwise"]["ms_per_step"] == pytest.approx(0.02)
    # The matmul at 1 PFLOP/s takes 4.83 us; the pointwise kernel's work is unknown (kept as is);
    # idle goes to zero.
    assert r.step_at_limit_ms() == pytest.approx((4.832 + 20) / 1e3, rel=1e-3)
    assert r.most_to_gain()[0] == "matmul"


def test_roofline_counts_the_fused_optimizers_tensor_lists():
    # AdamW over two fp32 tensors of 1000 and 24 elements: reads params, grads, exp_avg,
    # exp_avg_sq (4 lists), writes params, exp_avg, exp_avg_sq (3): 7 x 4 B x 1024.
    lists = [[[1000], [24]]] * 4 + [[]] + [[[], []]]
    ev = [
        {
            "ph": "X",
            "cat": "cpu_op",
            "name": "aten::_fused_adamw_",
            "ts": 1,
            "dur": 5,
            "args": {
                "External id": 9,
                "Input Dims": lists + [[], []],
                "Input type": ["TensorList"] * 6 + ["Scalar", "Scalar"],
            },
        },
        {
            "ph": "X",
            "cat": "kernel",
            "name": "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<adam>",
            "ts": 10,
            "dur": 7,
            "args": {"External id": 9, "stream": 7, "device": 0},
        },
    ]
    r = rl.analyze({"traceEvents": ev}, rl.Limits(matmul_flops=1e15, bandwidth=4e12))
    rows = {row["group"]: row for row in r.table()}
    assert rows["optimizer"]["gb_per_step"] == pytest.approx(7 * 4 * 1024 / 1e9, rel=1e-3)


def test_power_prefers_nvmls_instantaneous_field_and_falls_back_to_the_average():
    from types import SimpleNamespace

    class Instant(FakeNvml):
        def nvmlDeviceGetFieldValues(self, h, ids):
            assert ids == [power.NVML_FI_DEV_POWER_INSTANT]
            return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(uiVal=640_000))]

    clock = [0.0]
    assert power.NvmlSource(Instant(clock), None).sample()["power_w"] == pytest.approx(640.0)
    # A driver without the field (FakeNvml has no nvmlDeviceGetFieldValues): the average.
    assert power.NvmlSource(FakeNvml(clock), None).sample()["power_w"] == pytest.approx(500.0)


def test_roofline_takes_the_optimizers_bytes_from_the_parameter_count():
    # What the H200 trace records for the fused AdamW: its tensor lists with no shapes.
    ev = [
        {
            "ph": "X",
            "cat": "cpu_op",
            "name": "aten::_fused_adamw_",
            "ts": 1,
            "dur": 5,
            "args": {"External id": 9, "Input Dims": [[]] * 6, "Input type": ["TensorList"] * 6},
        },
        {
            "ph": "X",
            "cat": "kernel",
            "name": "multi_tensor_apply_kernel<adam>",
            "ts": 10,
            "dur": 100,
            "args": {"External id": 9, "stream": 7, "device": 0},
        },
    ]
    lim = rl.Limits(matmul_flops=1e15, bandwidth=4e12)
    unknown = rl.analyze({"traceEvents": ev}, lim)
    assert unknown.at_limit_us(unknown.rows["optimizer"]) == 100  # no work: no gain claimed
    nbytes = AdamW.bytes_per_step(10_000_000, clipping=True)
    assert nbytes == 10_000_000 * 4 * 10
    known = rl.analyze({"traceEvents": ev}, lim, optimizer_bytes_per_step=nbytes)
    # 400 MB at 4 TB/s: 100 us, the kernel's own time: at its limit, nothing to gain.
    assert known.at_limit_us(known.rows["optimizer"]) == pytest.approx(100)


def test_roofline_counts_the_fused_losss_logits_and_splits_a_fused_ops_work_by_group():
    n, v, d = 1024, 4096, 256
    op = {
        "ph": "X",
        "cat": "cpu_op",
        "name": "lmprof::linear_cross_entropy",
        "ts": 1,
        "dur": 50,
        "args": {
            "External id": 3,
            "Input Dims": [[n, d], [v, d], [n], [], []],
            "Input type": ["c10::BFloat16", "c10::BFloat16", "long int", "Scalar", "Scalar"],
        },
    }
    # The op launches a matmul (the LM head) and the loss kernel; only the latter is `loss`.
    gemm = {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16", "ts": 10, "dur": 30}
    rows = {"ph": "X", "cat": "kernel", "name": "_cross_entropy_rows_kernel", "ts": 45, "dur": 70}
    for k in (gemm, rows):
        k["args"] = {"External id": 3, "stream": 7, "device": 0}
    r = rl.analyze({"traceEvents": [op, gemm, rows]}, rl.Limits(1e15, 4e12))
    table = {row["group"]: row for row in r.table()}
    # Logits read and their gradient written, bf16: 2 x N x V x 2 bytes, all to the loss kernel.
    assert table["loss"]["gb_per_step"] == pytest.approx(2 * n * v * 2 / 1e9, rel=1e-3)
