"""The fused LM head + cross-entropy computes what lm_head + F.cross_entropy on fp32 logits do."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from lmprof.ops import IGNORE_INDEX
from lmprof.ops.cross_entropy import _rows_torch, linear_cross_entropy


def _case(n=50, d=24, v=1003, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::3] = IGNORE_INDEX
    targets[1] = int((h[1].float() @ w.float().t()).argmax())  # one correct prediction at least
    return h, w, targets


def _reference(h, w, targets):
    logits = h @ w.t()
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    correct = ((logits.detach().float().argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
    return (loss.detach(), correct, *torch.autograd.grad(loss, (h, w)))


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk", [0, 7, 50, 64])  # all at once, several blocks, exact, larger
def test_loss_accuracy_and_gradients_match_fp32_cross_entropy(dtype, tol, chunk):
    h, w, targets = _case(dtype=dtype)
    loss, correct = linear_cross_entropy(h, w, targets, chunk)
    gh, gw = torch.autograd.grad(loss, (h, w))
    ref_loss, ref_correct, ref_gh, ref_gw = _reference(h, w, targets)
    assert loss.dtype == torch.float32 and gh.dtype == gw.dtype == dtype
    # bf16: the logits themselves are rounded to bf16 in both
    assert loss.item() == pytest.approx(
        ref_loss.item(), rel=1e-6 if dtype == torch.float32 else 1e-3
    )
    assert correct.item() == ref_correct.item() >= 1
    assert _rel(gh, ref_gh) < tol and _rel(gw, ref_gw) < tol


def test_the_incoming_gradient_scales_both_gradients():
    h, w, targets = _case()
    g1 = torch.autograd.grad(linear_cross_entropy(h, w, targets)[0], (h, w))
    g2 = torch.autograd.grad(
        linear_cross_entropy(h, w, targets, 16)[0] * 1024.0, (h, w)
    )  # GradScaler
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(b, a * 1024.0, rtol=1e-5, atol=1e-6)


def test_a_batch_of_padding_only_has_loss_zero_and_no_gradient():
    h, w, _ = _case(n=6)
    loss, correct = linear_cross_entropy(h, w, torch.full((6,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and correct.item() == 0
    assert torch.all(h.grad == 0) and torch.all(w.grad == 0)


def test_no_tokens_at_all_is_loss_zero_with_gradients_of_the_right_shape():
    h = torch.zeros(0, 8, requires_grad=True)
    w = torch.randn(16, 8, requires_grad=True)
    loss, correct = linear_cross_entropy(h, w, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and correct.item() == 0
    assert h.grad.shape == h.shape and w.grad.shape == w.shape and torch.all(w.grad == 0)


def test_rows_write_softmax_minus_onehot_over_the_logits_and_ties_go_left():
    logits = torch.zeros(3, 7)
    logits[:, 2] = logits[:, 5] = 1.0
    targets = torch.tensor([2, 5, IGNORE_INDEX])
    want = torch.softmax(logits, -1) - F.one_hot(targets.clamp(min=0), 7)
    want[2] = 0.0
    losses, correct = _rows_torch(logits, targets, need_grad=True)
    torch.testing.assert_close(logits, want)
    assert correct.tolist() == [True, False, False]  # argmax is column 2: the first of the tie
    assert losses[2] == 0 and losses[0] == losses[1] > 0


def test_evaluation_computes_no_gradient_and_flops_are_counted():
    h, w, targets = _case(n=32, d=16, v=64)
    with FlopCounterMode(display=False) as train:
        loss, _ = linear_cross_entropy(h, w, targets)
        loss.backward()
    with torch.no_grad(), FlopCounterMode(display=False) as evaluation:
        eval_loss, _ = linear_cross_entropy(h, w, targets)
    assert train.get_total_flops() == 3 * 2 * 32 * 16 * 64
    assert evaluation.get_total_flops() == 2 * 32 * 16 * 64
    assert eval_loss.item() == pytest.approx(loss.item())
