"""The loss as a choice (`model.loss`, ops/losses.py): every loss returns the SUM over real
targets and the argmax's right count only when asked; the trainer divides by the real-token
count the batches carry, weighting micro-batches by their real tokens."""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from lmprof.config import RunConfig, validate
from lmprof.data.batching import Batch
from lmprof.errors import ConfigError
from lmprof.model import IGNORE_INDEX, ModelArgs, Transformer
from lmprof.ops import losses
from lmprof.train.distributed import DistInfo
from lmprof.train.loop import Trainer
from lmprof.train.state import LossMeter, TrainState


@pytest.fixture
def fake_quack(monkeypatch):
    """quack's three functions that ops/quack_loss.py calls, as quack 0.6.5 documents them, in
    plain PyTorch (quack needs CUDA): the losses' wrapper arithmetic runs on the CPU. Returns
    the keyword arguments chunked_linear_cross_entropy was called with."""
    F = torch.nn.functional
    calls = []

    def cross_entropy_fwd(x, target, ignore_index=-100, return_lse=False):
        # quack/cross_entropy.py: fp32 loss per row, 0 for an ignored row; fp32 lse per row.
        assert return_lse
        lse = torch.logsumexp(x, -1)
        picked = x.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
        loss = torch.where(target != ignore_index, lse - picked, 0.0)
        return loss.float(), lse.float()

    def cross_entropy_bwd(x, target, dloss, lse, weight=None, ignore_index=-100):
        # dloss is read per row and zeroed for an ignored one; dx is a new buffer.
        keep = torch.where(target != ignore_index, dloss, 0.0).to(x.dtype)
        g = (x - lse.to(x.dtype)[:, None]).exp()
        g[torch.arange(x.shape[0]), target.clamp(min=0)] -= 1.0
        return g * keep[:, None]

    def chunked_linear_cross_entropy(
        x, weight, target, chunk_size=4096, ignore_index=-100, reduction="mean"
    ):
        calls.append(dict(chunk_size=chunk_size, ignore_index=ignore_index, reduction=reduction))
        assert chunk_size % 8 == 0 and x.shape[0] % 8 == 0  # its GEMMs' alignment
        assert reduction in ("mean", "sum") and x.dtype == weight.dtype
        # fp32 loss per row (0 where ignored), summed; "mean" divides by the real rows.
        rows = F.cross_entropy(
            F.linear(x, weight), target, ignore_index=ignore_index, reduction="none"
        ).float()
        real = (target != ignore_index).sum()
        return rows.sum() if reduction == "sum" else rows.sum() / real

    from lmprof.ops import quack_loss

    quack = ModuleType("quack")
    ce = ModuleType("quack.cross_entropy")
    ce.cross_entropy_fwd, ce.cross_entropy_bwd = cross_entropy_fwd, cross_entropy_bwd
    lce = ModuleType("quack.linear_cross_entropy")
    lce.chunked_linear_cross_entropy = chunked_linear_cross_entropy
    quack.cross_entropy, quack.linear_cross_entropy = ce, lce
    for name, mod in (("quack", quack), (ce.__name__, ce), (lce.__name__, lce)):
        monkeypatch.setitem(sys.modules, name, mod)
    quack_loss._import_error.cache_clear()
    yield calls
    quack_loss._import_error.cache_clear()


def _inputs(n=40, d=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = IGNORE_INDEX
    return h, w, t


@pytest.mark.parametrize("chunk", [0, 7, 16])
@pytest.mark.parametrize("n", [40, 37])
def test_every_loss_sums_what_the_pytorch_reference_sums_with_the_same_gradients(
    chunk, n, fake_quack
):
    """Every loss, quack's through the fake: 37 tokens are padded to 40 for quack_chunked."""
    h, w, t = _inputs(n)
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, ignore_index=IGNORE_INDEX, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (h, w))
    for name, cls in losses.LOSSES.items():
        size = chunk if cls.chunks else 0
        if size % cls.chunk_multiple:
            continue  # refused by the config (test_a_chunk_size_off_the_multiple_is_refused)
        args = SimpleNamespace(loss_chunk_size=size)
        out = losses.loss(name, args).build(args)(h, w, t)
        # Not asked: a loss whose count is free may return it anyway; then it is the right one.
        assert out.correct is None or int(out.correct) == int(((h @ w.T).argmax(-1) == t).sum())
        torch.testing.assert_close(out.sum, ref.float(), rtol=1e-6, atol=1e-6)
        for g, g0 in zip(torch.autograd.grad(out.sum, (h, w)), ref_grads, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-5, atol=1e-6)


def test_accuracy_when_asked_counts_real_targets_only(fake_quack):
    h, w, t = _inputs()
    pred = (h @ w.T).argmax(-1)
    t = pred.clone()
    t[::4] = IGNORE_INDEX
    t[1] = (pred[1] + 1) % 50  # one wrong
    real_right = int((t != IGNORE_INDEX).sum()) - 1
    for name in losses.NAMES:
        out = losses.loss(name).build(None)(h, w, t, accuracy=True)
        assert int(out.correct) == real_right, name
    # quack_chunked counts block by block: blocks of 8 over 40 tokens count the same
    chunked = losses.loss("quack_chunked").build(SimpleNamespace(loss_chunk_size=8))
    assert int(chunked(h, w, t, accuracy=True).correct) == real_right


@pytest.mark.parametrize("name", [n for n in losses.NAMES if n != "pytorch"])
def test_the_models_losses_agree_under_each_choice(name, fake_quack):
    torch.manual_seed(0)
    x = torch.randint(0, 97, (2, 16))
    t = torch.randint(0, 97, (2, 16))
    t[1, 10:] = IGNORE_INDEX
    base = dict(vocab_size=97, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0)
    chosen = Transformer(ModelArgs(**base, max_seq_len=16, loss=name)).double()
    plain = Transformer(ModelArgs(**base, max_seq_len=16, loss="pytorch")).double()
    plain.load_state_dict(chosen.state_dict())
    a, b = chosen(x, t, accuracy=True), plain(x, t, accuracy=True)
    torch.testing.assert_close(a.sum, b.sum)
    assert int(a.correct) == int(b.correct)


def test_a_loss_that_does_not_chunk_refuses_a_chunk_size():
    cfg = RunConfig()
    cfg.model.loss, cfg.model.loss_chunk_size = "pytorch", 128
    with pytest.raises(ConfigError, match="loss_chunk_size"):
        validate(cfg)
    with pytest.raises(KeyError, match="known: fused, pytorch, quack, quack_chunked"):
        losses.loss("quake")


def _batch(ids, targets):
    real = int((targets != IGNORE_INDEX).sum())
    mask = None if real == targets.numel() else targets != IGNORE_INDEX
    return Batch(ids, targets, mask, real, targets.numel())


def _trainer(model, accum):
    """Just what train_step reads: an SGD step of lr 1, so the update is minus the gradient."""
    tr = object.__new__(Trainer)
    tr.cfg = SimpleNamespace(training=SimpleNamespace(grad_accum_steps=accum, max_grad_norm=0))
    tr.state, tr.dist, tr.fsdp, tr.cudagraphs, tr.autocast_dtype = (
        TrainState(),
        DistInfo(),
        False,
        False,
        None,
    )
    tr.model = tr.raw_model = model
    tr.instruments = SimpleNamespace(phase=lambda name: contextlib.nullcontext())
    tr.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    tr.scheduler = torch.optim.lr_scheduler.LambdaLR(tr.optimizer, lambda s: 1.0)
    tr.scaler = torch.amp.GradScaler("cpu", enabled=False)
    return tr


def test_grad_accumulation_weights_micro_batches_by_their_real_tokens():
    """Two micro-batches, 32 and 16 real targets: the same update as one batch of both, the
    loss per real token of the whole step (a mean of the two means would differ)."""
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=97, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0)
    x = torch.randint(1, 97, (4, 16))
    t = torch.randint(0, 97, (4, 16))
    t[2, 6:] = IGNORE_INDEX
    t[3, 10:] = IGNORE_INDEX
    one, two = Transformer(args).double(), Transformer(args).double()
    two.load_state_dict(one.state_dict())
    before = [p.detach().clone() for p in one.parameters()]
    whole = _trainer(one, 1)
    loss_one, _ = whole.train_step(iter([_batch(x, t)]))
    split = _trainer(two, 2)
    loss_two, correct = split.train_step(iter([_batch(x[:2], t[:2]), _batch(x[2:], t[2:])]))
    assert correct is None and split.state.real_tokens == whole.state.real_tokens == 48
    torch.testing.assert_close(loss_two, loss_one)  # the step's summed loss
    for p1, p2 in zip(one.parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p2, p1, rtol=1e-9, atol=1e-12)
    pairs = zip(before, one.parameters(), strict=True)
    assert sum(float((p1.detach() - p0).abs().sum()) for p0, p1 in pairs) > 0


def test_the_meter_reports_the_loss_per_real_token_and_accuracy_of_the_steps_that_asked():
    meter = LossMeter(torch.device("cpu"))
    meter.add(torch.tensor(30.0), None, 10)
    meter.add(torch.tensor(10.0), torch.tensor(4), 30)
    loss, accuracy, steps, real = meter.take(DistInfo())
    assert (loss, accuracy, steps, real) == (1.0, 4 / 30, 2, 40)
    loss, accuracy, steps, real = meter.take(DistInfo())
    assert steps == 0 and real == 0 and accuracy != accuracy  # nan: no step asked


def test_the_memory_model_reads_the_chosen_loss():
    """GPT-2's vocabulary at 8 x 1024 tokens: the reference loss keeps an fp32 log-softmax of
    the whole logits (1.6 GB), the fused one keeps d loss/dh and d loss/dW; peaks follow."""
    from lmprof.config import build_config
    from lmprof.profiling.memory_model import estimate_memory

    over = ["d_model=768", "nhead=12", "num_layers=12", "dim_feedforward=3072", "bf16=true"]
    over += ["dropout=0.0", "sequence_length=1024", "batch_size=8"]
    fused = estimate_memory(build_config(overrides=over), 50258)
    plain = estimate_memory(build_config(overrides=[*over, "loss=pytorch"]), 50258)
    log_softmax = 8 * 1024 * 50304 * 4
    assert plain.saved_after_forward - fused.saved_after_forward > log_softmax // 2
    assert plain.predicted_peak_bytes > fused.predicted_peak_bytes + log_softmax // 2


# ---- quack's losses: refused in one line where they cannot run, described honestly ------------


def test_quack_chunked_passes_the_chunk_pad_and_sum_to_quack(fake_quack):
    h, w, t = _inputs(37)
    for size, expect in ((0, 4096), (16, 16)):
        args = SimpleNamespace(loss_chunk_size=size)
        losses.loss("quack_chunked", args).build(args)(h, w, t)
        assert fake_quack[-1] == dict(chunk_size=expect, ignore_index=IGNORE_INDEX, reduction="sum")


def test_quack_missing_is_refused_in_one_line_before_any_work(monkeypatch, capsys, tmp_path):
    from lmprof.cli import main
    from lmprof.config import build_config
    from lmprof.environment import check_environment
    from lmprof.ops import quack_loss

    monkeypatch.setitem(sys.modules, "quack", None)  # `import quack` raises ImportError
    quack_loss._import_error.cache_clear()
    monkeypatch.chdir(tmp_path)
    try:
        reason = quack_loss.unavailable_reason()
        assert "\n" not in reason and "pip install 'lmprof[quack]'" in reason
        assert "quack-kernels" in reason and "fused or pytorch" in reason
        for name in ("quack", "quack_chunked"):
            assert losses.loss(name).unavailable() == reason
            # A CUDA machine without the package: the preflight says the same line.
            with monkeypatch.context() as m:
                m.setattr(torch.cuda, "is_available", lambda: True)
                m.setattr(torch.cuda, "device_count", lambda: 1)
                cfg = build_config(overrides=[f"loss={name}", "precision=bf16", "device=cuda"])
                assert check_environment(cfg) == reason
            assert main(["run", f"loss={name}"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "lmprof[quack]" in err[0], err
        assert not (tmp_path / "results.csv").exists()
    finally:
        quack_loss._import_error.cache_clear()


def test_quack_on_a_cpu_is_refused_in_one_line(fake_quack, monkeypatch):
    from lmprof.config import build_config
    from lmprof.environment import check_environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = check_environment(build_config(overrides=["loss=quack"]))
    assert reason is not None and "\n" not in reason and "need a CUDA GPU" in reason
    # quack imports and a GPU is there, but the run asks for the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    reason = check_environment(build_config(overrides=["loss=quack_chunked", "device=cpu"]))
    assert reason == "loss 'quack_chunked' needs a CUDA GPU (use fused or pytorch on a CPU)"
    assert check_environment(build_config(overrides=["loss=quack", "device=cuda"])) is None


def test_a_chunk_size_off_the_multiple_is_refused():
    cfg = RunConfig()
    cfg.model.loss, cfg.model.loss_chunk_size = "quack_chunked", 100
    with pytest.raises(ConfigError, match="multiple of 8"):
        validate(cfg)
    cfg.model.loss_chunk_size = 2048
    validate(cfg)


def test_the_quack_losses_are_choices_of_the_config():
    from lmprof.config import describe_keys, spec

    assert {"quack", "quack_chunked"} <= set(spec("model.loss").choices)
    assert "fused, pytorch, quack, quack_chunked" in describe_keys()


def _gpt2_site(precision="bf16", chunk=0):
    from lmprof.ops.spec import Site

    args = SimpleNamespace(
        d_model=768, vocab_size=50257, vocab_multiple=64, dropout=0.0, loss_chunk_size=chunk
    )
    return args, Site(args, 16, 1024, precision)


def test_quack_keeps_the_logits_and_an_fp32_lse_and_makes_their_gradient_anew():
    args, s = _gpt2_site()
    N, d, V = 16384, 768, 50304
    x = SimpleNamespace(itemsize=4)  # the final norm's fp32 output: the head casts it
    cost = losses.loss("quack", args).cost(s, x)
    saved = {t.name: t.nbytes for t in cost.tensors if t.saved}
    assert saved == {
        "head_in": N * d * 2,
        "head_weight": V * d * 2,
        "quack_logits": N * V * 2,  # bf16, no fp32 copy, no log-softmax
        "quack_lse": N * 4,
    }
    assert cost.backward_transient == N * V * 2 + N * 4  # d loss/d logits, a new buffer
    assert cost.forward_flops == 2 * N * d * V and cost.backward_flops == 4 * N * d * V
    q = losses.LOSSES["quack"]()
    row = q.trace_work("lmprof::quack_cross_entropy", [[N, V], [N]], ["c10::BFloat16"], "loss")
    back = q.trace_work(
        "lmprof::quack_cross_entropy_backward", [[N, V], [N], [N], [N]], ["c10::BFloat16"], "loss"
    )
    assert (row, back) == (N * V * 2, 2 * N * V * 2)


def test_quack_chunked_keeps_dh_and_an_fp32_dw_and_one_block_of_scratch():
    N, d, V = 16384, 768, 50304
    for chunk, c in ((0, 4096), (2048, 2048)):
        args, s = _gpt2_site(chunk=chunk)
        cost = losses.loss("quack_chunked", args).cost(s, None)
        saved = {t.name: t.nbytes for t in cost.tensors if t.saved}
        assert saved == {"head_grad_h": N * d * 2, "head_grad_w": V * d * 4}
        # E, two fp32 partials per 192-column tile, the (V/64, c) strip, xs, the rows' loss
        scratch = c * V * 2 + 2 * c * (V // 192) * 4 + (V // 64) * c * 2 + c * d * 2 + N * 4
        assert cost.forward_transient == scratch
        assert cost.backward_transient == 0  # dx and dw scaled in place, dw fp32 as the weight
        assert cost.forward_flops + cost.backward_flops == 6 * N * d * V


def test_the_memory_model_reads_the_quack_losses():
    """At GPT-2 small, 8 x 1024 tokens: quack keeps the bf16 logits (0.8 GB) that fused and
    quack_chunked never keep, and no fp32 log-softmax (pytorch's, 1.6 GB)."""
    from lmprof.config import build_config
    from lmprof.profiling.memory_model import estimate_memory

    over = ["d_model=768", "nhead=12", "num_layers=12", "dim_feedforward=3072", "bf16=true"]
    over += ["dropout=0.0", "sequence_length=1024", "batch_size=8"]
    est = {
        n: estimate_memory(build_config(overrides=[*over, f"loss={n}"]), 50258)
        for n in losses.NAMES
    }
    logits = 8 * 1024 * 50304 * 2
    kept = {n: e.saved_after_forward for n, e in est.items()}
    assert kept["quack"] - kept["fused"] > logits * 0.9
    assert kept["pytorch"] - kept["quack"] > logits * 0.9  # the fp32 log-softmax
    assert abs(kept["quack_chunked"] - kept["fused"]) < logits // 4


def test_quack_compiles_to_one_graph_with_its_ops_opaque(fake_quack):
    """torch.compile keeps one graph through forward and backward: lmprof's two custom ops
    around quack's kernels are opaque to Dynamo (aot_eager: their fakes trace both graphs)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    loss = losses.loss("quack").build(None)

    def f(h, w, t):
        out = loss(h, w, t, accuracy=True)
        return out.sum, out.correct

    counter = CompileCounterWithBackend("aot_eager")
    h, w, t = _inputs()
    got, right = torch.compile(f, backend=counter, fullgraph=True)(h, w, t)
    grads = torch.autograd.grad(got, (h, w))
    want, want_right = f(h, w, t)
    torch.testing.assert_close(got, want)
    assert counter.frame_count == 1 and int(right) == int(want_right)
    for g, g0 in zip(grads, torch.autograd.grad(want, (h, w)), strict=True):
        torch.testing.assert_close(g, g0)
