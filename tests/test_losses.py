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

    def chunked_linear_cross_entropy(x, weight, target, chunk_size=4096, ignore_index=-100,
                                     reduction="mean"):  # fmt: skip
        calls.append(dict(chunk_size=chunk_size, ignore_index=ignore_index, reduction=reduction))
        assert chunk_size % 8 == 0 and x.shape[0] % 8 == 0  # its GEMMs' alignment
        assert reduction in ("mean", "sum") and x.dtype == weight.dtype
        # fp32 loss per row (0 where ignored), summed; "mean" divides by the real rows.
        rows = F.cross_entropy(F.linear(x, weight), target, ignore_index=ignore_index,
                               reduction="none").float()  # fmt: skip
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
        assert out.correct is None  # not asked: no accuracy
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
