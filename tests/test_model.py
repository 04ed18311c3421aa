"""The model's contracts: causality, padding invariance, implementations agree, checkpointing
and the chunked loss change nothing but memory."""

from __future__ import annotations

import pytest
import torch

from lmprof.model import IGNORE_INDEX, ModelArgs, Transformer

CPU_ATTENTIONS = ("vanilla", "sdpa_mask", "sdpa")


def make(attention="sdpa", norm="pre", pos="learned", **kw) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(
        vocab_size=97,
        d_model=32,
        n_heads=4,
        n_layers=2,
        d_ff=64,
        dropout=0.0,
        max_seq_len=24,
        attention=attention,
        norm=norm,
        pos_encoding=pos,
        **kw,
    )
    return Transformer(args).double().eval()


@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("pos", ["learned", "sinusoidal"])
def test_causality(attention, norm, pos):
    model = make(attention, norm, pos)
    x = torch.randint(0, 97, (2, 24))
    t = 13
    y = x.clone()
    y[:, t + 1] = (y[:, t + 1] + 1) % 97
    a, b = model(x), model(y)
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
def test_padding_leaves_real_tokens_unchanged(attention):
    model = make(attention)
    real = torch.randint(1, 97, (1, 10))
    alone = model(real)
    padded = torch.cat([real, torch.zeros(1, 14, dtype=torch.long)], dim=1)
    other = torch.randint(1, 97, (1, 24))
    batch = torch.cat([padded, other])
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, 10:] = False
    out = model(batch, attention_mask=mask)
    torch.testing.assert_close(out[0, :10], alone[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], model(other)[0], rtol=1e-10, atol=1e-10)


def test_attention_implementations_agree_fp32():
    torch.manual_seed(0)
    x = torch.randint(0, 97, (3, 24))
    targets = torch.randint(0, 97, (3, 24))
    targets[0, 20:] = IGNORE_INDEX
    mask = torch.ones(3, 24, dtype=torch.bool)
    mask[0, 20:] = False
    losses, grads = [], []
    for attention in CPU_ATTENTIONS:
        model = make(attention).float().train()
        loss, _ = model(x, targets, mask)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters()])
    for loss, grad in zip(losses[1:], grads[1:], strict=True):
        torch.testing.assert_close(loss, losses[0], rtol=1e-5, atol=1e-6)
        for g, g0 in zip(grad, grads[0], strict=True):
            torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-6)


def _loss_and_grads(model, x, targets):
    model.zero_grad(set_to_none=True)
    loss, correct = model(x, targets, accuracy=True)
    loss.backward()
    return loss.detach(), correct, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_gives_same_loss_and_grads(mode):
    x = torch.randint(0, 97, (2, 24))
    targets = torch.randint(0, 97, (2, 24))
    ref = make().train()
    ckpt = make(checkpointing=mode).train()
    ckpt.load_state_dict(ref.state_dict())
    l0, c0, g0 = _loss_and_grads(ref, x, targets)
    l1, c1, g1 = _loss_and_grads(ckpt, x, targets)
    assert torch.equal(c0, c1)
    torch.testing.assert_close(l0, l1, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [7, 16, 1000])
def test_chunked_loss_matches_full_logits(chunk):
    """fp32 weights, loss and gradients within 1e-5 relative of the plain cross-entropy."""
    x = torch.randint(0, 97, (2, 24))
    targets = torch.randint(0, 97, (2, 24))
    targets[1, 5:9] = IGNORE_INDEX
    ref = make().float().train()
    chunked = make(loss_chunk_size=chunk).float().train()
    chunked.load_state_dict(ref.state_dict())
    l0, c0, g0 = _loss_and_grads(ref, x, targets)
    l1, c1, g1 = _loss_and_grads(chunked, x, targets)
    assert int(c0) == int(c1)
    torch.testing.assert_close(l0, l1, rtol=1e-5, atol=1e-6)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_correct_count_ignores_pad_targets():
    model = make()
    x = torch.randint(0, 97, (1, 24))
    with torch.no_grad():
        pred = model(x).argmax(-1)
    targets = pred.clone()
    targets[0, 12:] = IGNORE_INDEX
    _, correct = model(x, targets, accuracy=True)
    assert int(correct) == 12


def test_vocab_is_padded_and_tied():
    model = make()
    assert model.lm_head.weight.shape[0] == 128
    assert model.lm_head.weight is model.tok_emb.weight
    untied = make(tie_embeddings=False)
    assert untied.num_params() > model.num_params()


def test_a_compute_dtype_stream_runs_every_block_in_bf16_and_changes_little():
    """residual_stream=compute under bf16 autocast: every block reads and writes a bf16 stream
    (with the default the embedding's fp32 makes every residual add fp32), and the loss and the
    gradients stay within bf16's rounding of the fp32 stream's."""
    idx = torch.randint(0, 97, (4, 24))
    results = {}
    for stream in ("fp32", "compute"):
        model = make(precision="bf16", residual_stream=stream).float().train()
        dtypes = []
        for block in model.blocks:
            block.register_forward_hook(lambda m, i, o, d=dtypes: d.append((i[0].dtype, o.dtype)))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model(idx, idx)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[stream] = (loss.detach(), grads, set(dtypes))
    assert results["fp32"][2] == {(torch.float32, torch.float32)}
    assert results["compute"][2] == {(torch.bfloat16, torch.bfloat16)}
    (l32, g32, _), (l16, g16, _) = results["fp32"], results["compute"]
    assert l16 != l32  # it did change the arithmetic
    torch.testing.assert_close(l16, l32, rtol=2e-2, atol=0)
    cosine = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cosine > 0.99
