"""The training step's per-step host work, on the CPU: what must not come back once removed
(events made anew each step, NVTX calls nobody asked for, a mask per layer, batches pinned in
the training thread). Fakes stand in for the CUDA calls, which is what the test counts."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lmprof.config import build_config
from lmprof.train import timing
from lmprof.train.distributed import DistInfo
from lmprof.train.instruments import Instruments
from lmprof.train.state import LossMeter


class _FakeEvent:
    made = 0

    def __init__(self, enable_timing: bool = False):
        type(self).made += 1
        self.t = 0.0

    def record(self) -> None:
        self.t += 1.0

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: _FakeEvent) -> float:
        return 2.0


def _cfg(**profile):
    return build_config(
        {"data": {"source": "synthetic", "vocab_size": 64}},
        {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 32, "sequence_length": 8},
        {"max_steps": 10, "run_name": "hot", "progress": False},
        {"profile": profile},
    )


def test_step_timer_creates_no_event_after_the_first_log_interval(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    _FakeEvent.made = 0
    timer = timing.StepTimer(torch.device("cuda", 0))
    for _ in range(5):  # the first interval: two events a step, as before
        timer.start()
        timer.stop()
    assert timer.collect() == [2.0] * 5
    made = _FakeEvent.made
    assert made == 10
    for _ in range(3):  # later intervals of at most that many steps take events from the pool
        for _ in range(5):
            timer.start()
            timer.stop()
        timer.collect()
    assert _FakeEvent.made == made
    assert len(timer.step_ms) == 20


def _phases(ins: Instruments) -> None:
    for name in ("data", "forward", "backward", "optimizer"):
        with ins.phase(name):
            pass


def test_nvtx_ranges_only_when_profile_nvtx_asks(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: calls.append(name))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: calls.append("pop"))
    for nvtx, expected in ((False, 0), (True, 8)):
        ins = Instruments(_cfg(nvtx=nvtx), torch.device("cpu"), is_main=True)
        # The phases' CUDA branch, without a GPU: what a CUDA run of this config would call.
        ins.cuda, ins.nvtx = True, nvtx
        calls.clear()
        _phases(ins)
        assert len(calls) == expected, (nvtx, calls)
        ins.close()


def test_breakdown_events_are_reused_after_collect(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    ins = Instruments(_cfg(breakdown=True), torch.device("cpu"), is_main=True)
    ins.cuda = ins.breakdown = True
    _FakeEvent.made = 0
    _phases(ins)
    ins.collect()
    made = _FakeEvent.made
    for _ in range(3):
        _phases(ins)
        ins.collect()
    assert made == 8 and _FakeEvent.made == made
    assert ins.phase_ms["forward"] == [2.0] * 4
    ins.close()


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_meter_add_runs_no_op_a_step_and_take_sums_the_interval():
    meter = LossMeter(torch.device("cpu"))
    losses = [torch.tensor(float(i)) for i in range(1, 5)]
    corrects = [torch.tensor(i, dtype=torch.long) for i in range(4)]
    with _CountOps() as mode:
        for loss, correct in zip(losses, corrects, strict=True):
            meter.add(loss, correct, real=10)
    assert mode.ops == []  # the device work waits for the log point
    one = DistInfo()
    assert meter.take(one) == (10.0 / 40, 6 / 40, 4, 40)
    meter.add(torch.tensor(7.0), None, real=5)  # a new interval starts empty; no accuracy asked
    loss, accuracy, steps, real = meter.take(one)
    assert (loss, steps, real) == (7.0 / 5, 1, 5) and accuracy != accuracy


def _loader_batches(n: int):
    from lmprof.data.batching import packed_batch

    rows = torch.arange(n * 2 * 9).reshape(n, 2, 9).numpy()
    return (packed_batch(r) for r in rows)


def test_pinned_ahead_yields_the_loaders_batches_in_order_prepared_off_thread():
    import threading

    from lmprof.data.prefetch import PinnedAhead

    threads = []

    def prepare(batch):  # pin_batch needs a GPU; the test records where the work ran
        threads.append(threading.current_thread().name)
        return batch

    plain = list(_loader_batches(7))
    ahead = PinnedAhead(_loader_batches(7), depth=2, prepare=prepare)
    got = list(ahead)
    ahead.close()
    assert len(got) == 7
    for a, b in zip(plain, got, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
        assert (a.n_real_tokens, a.n_tokens) == (b.n_real_tokens, b.n_tokens)
    assert threads == ["lmprof-batches"] * 7


def test_pinned_ahead_raises_the_loaders_error_and_close_stops_an_endless_loader():
    import itertools

    import pytest

    from lmprof.data.prefetch import PinnedAhead
    from lmprof.errors import UserError

    def failing():
        yield from _loader_batches(2)
        raise UserError("data.path: the memmap shrank")

    ahead = PinnedAhead(failing(), prepare=lambda b: b)
    assert next(ahead).n_tokens == 16 and next(ahead).n_tokens == 16
    with pytest.raises(UserError, match="shrank"):
        next(ahead)
    endless = PinnedAhead(itertools.cycle(list(_loader_batches(1))), depth=1, prepare=lambda b: b)
    next(endless)
    endless.close()
    assert not endless._thread.is_alive()


def test_pin_batch_pins_each_tensor_once_and_keeps_the_counts(monkeypatch):
    from lmprof.data.prefetch import pin_batch

    pinned: list[tuple] = []

    def fake_pin(self):  # no GPU here: record the call, hand back a copy
        pinned.append(tuple(self.shape))
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    batch = next(_loader_batches(1))
    out = pin_batch(batch)
    assert pinned == [(2, 8), (2, 8)]  # inputs and targets; no mask without padding
    assert out.attention_mask is None and (out.n_real_tokens, out.n_tokens) == (16, 16)
    assert torch.equal(out.input_ids, batch.input_ids)
