"""The fused cross-entropy computes what F.cross_entropy on fp32 logits computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmprof.ops import IGNORE_INDEX
from lmprof.ops import cross_entropy as ce


def _case(n, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=g) * 4).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::3] = IGNORE_INDEX
    targets[1] = int(logits[1].float().argmax())  # at least one correct prediction
    return logits, targets


def _reference(logits, targets):
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
    correct = ((logits.detach().float().argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), correct, grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("rows", [4, 1024])  # several row blocks, and one
def test_loss_accuracy_and_gradient_match_fp32_cross_entropy(dtype, tol, rows, monkeypatch):
    monkeypatch.setattr(ce, "ROWS", rows)
    logits, targets = _case(50, 1003, dtype)
    loss, correct = ce.cross_entropy(logits, targets)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_loss, ref_correct, ref_grad = _reference(logits, targets)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)  # fp32 math either way
    assert correct.item() == ref_correct.item() >= 1
    err = (grad.float() - ref_grad.float()).norm() / ref_grad.float().norm()
    assert err < tol
    assert grad[targets == IGNORE_INDEX].abs().max() == 0


def test_the_loss_scale_reaches_the_gradient():
    logits, targets = _case(8, 64, torch.float32)
    loss, _ = ce.cross_entropy(logits, targets)
    (g1,) = torch.autograd.grad(loss, logits)
    loss, _ = ce.cross_entropy(logits, targets)
    (g2,) = torch.autograd.grad(loss * 1024.0, logits)  # what GradScaler does under fp16
    torch.testing.assert_close(g2, g1 * 1024.0)


def test_a_batch_of_padding_only_has_loss_zero_not_nan():
    logits = torch.randn(6, 10, requires_grad=True)
    loss, correct = ce.cross_entropy(logits, torch.full((6,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and correct.item() == 0
    assert torch.all(logits.grad == 0)


def test_ties_go_to_the_first_column_as_in_argmax():
    logits = torch.zeros(2, 7)
    logits[:, 2] = logits[:, 5] = 1.0
    _, correct = ce.cross_entropy(logits, torch.tensor([2, 5]))
    assert correct.item() == 1
