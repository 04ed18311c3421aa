"""The loss as a choice (`model.loss`, ops/losses.py): every loss returns the SUM over real
targets and the argmax's right count only when asked; the trainer divides by the real-token
count the batches carry, weighting micro-batches by their real tokens."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

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


def _inputs(n=40, d=16, v=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[::4] = IGNORE_INDEX
    return h, w, t


@pytest.mark.parametrize("chunk", [0, 7])
def test_every_loss_sums_what_the_pytorch_reference_sums_with_the_same_gradients(chunk):
    h, w, t = _inputs()
    ref = torch.nn.functional.cross_entropy(h @ w.T, t, ignore_index=IGNORE_INDEX, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (h, w))
    for name in losses.NAMES:
        args = SimpleNamespace(loss_chunk_size=chunk if losses.LOSSES[name].chunks else 0)
        out = losses.loss(name, args).build(args)(h, w, t)
        assert out.correct is None  # not asked: no accuracy
        torch.testing.assert_close(out.sum, ref.float(), rtol=1e-6, atol=1e-6)
        for g, g0 in zip(torch.autograd.grad(out.sum, (h, w)), ref_grads, strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-5, atol=1e-6)


def test_accuracy_when_asked_counts_real_targets_only():
    h, w, t = _inputs()
    pred = (h @ w.T).argmax(-1)
    t = pred.clone()
    t[::4] = IGNORE_INDEX
    t[1] = (pred[1] + 1) % 50  # one wrong
    real_right = int((t != IGNORE_INDEX).sum()) - 1
    for name in losses.NAMES:
        out = losses.loss(name).build(None)(h, w, t, accuracy=True)
        assert int(out.correct) == real_right, name


def test_the_models_losses_agree_under_each_choice():
    torch.manual_seed(0)
    x = torch.randint(0, 97, (2, 16))
    t = torch.randint(0, 97, (2, 16))
    t[1, 10:] = IGNORE_INDEX
    base = dict(vocab_size=97, d_model=32, n_heads=4, n_layers=1, d_ff=64, dropout=0.0)
    fused = Transformer(ModelArgs(**base, max_seq_len=16)).double()
    plain = Transformer(ModelArgs(**base, max_seq_len=16, loss="pytorch")).double()
    plain.load_state_dict(fused.state_dict())
    a, b = fused(x, t, accuracy=True), plain(x, t, accuracy=True)
    torch.testing.assert_close(a.sum, b.sum)
    assert int(a.correct) == int(b.correct)


def test_a_loss_that_does_not_chunk_refuses_a_chunk_size():
    cfg = RunConfig()
    cfg.model.loss, cfg.model.loss_chunk_size = "pytorch", 128
    with pytest.raises(ConfigError, match="loss_chunk_size"):
        validate(cfg)
    with pytest.raises(KeyError, match="known: fused, pytorch"):
        losses.loss("quack")


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
