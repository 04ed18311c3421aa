"""The Llama-style choices (RoPE, RMSNorm, SwiGLU, grouped-query attention, untied embeddings):
each runs forward and backward, each equals its formula or a plain reference, every CPU kernel
runs grouped-query attention, the config refuses the shapes that cannot work in one line, and
the presets have their published parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmprof import attention_kernels
from lmprof.config import build_config, describe_keys, load_config
from lmprof.errors import ConfigError
from lmprof.model import IGNORE_INDEX, ModelArgs, RotaryEmbedding, Transformer
from lmprof.ops import flash_attn4

CPU_ATTENTIONS = ("vanilla", "sdpa_mask", "sdpa")
LLAMA = {
    "norm_type": "rmsnorm",
    "pos_encoding": "rope",
    "activation": "swiglu",
    "bias": False,
    "tie_embeddings": False,
}


def make(attention="sdpa", **kw) -> Transformer:
    torch.manual_seed(0)
    fields = {
        "vocab_size": 97,
        "d_model": 32,
        "n_heads": 4,
        "n_layers": 2,
        "d_ff": 0,
        "dropout": 0.0,
        "max_seq_len": 24,
        "attention": attention,
        **kw,
    }
    return Transformer(ModelArgs(**fields)).double()


@pytest.fixture
def fa4_reference():
    with flash_attn4.use_kernels(flash_attn4.REFERENCE):
        yield


# ---- every option trains --------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"norm_type": "rmsnorm"},
        {"pos_encoding": "rope"},
        {"activation": "swiglu"},
        {"n_kv_heads": 2},
        {"n_kv_heads": 1},
        {"tie_embeddings": False},
        {**LLAMA, "n_kv_heads": 2},
        {**LLAMA, "n_kv_heads": 2, "norm": "post"},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
def test_each_option_runs_forward_and_backward(options, attention):
    model = make(attention, **options).train()
    x = torch.randint(0, 97, (2, 24))
    loss, _ = model(x, torch.randint(0, 97, (2, 24)))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
def test_the_llama_model_is_causal(attention):
    model = make(attention, n_kv_heads=2, **LLAMA).eval()
    x = torch.randint(0, 97, (2, 24))
    y = x.clone()
    y[:, 14] = (y[:, 14] + 1) % 97
    a, b = model(x), model(y)
    assert torch.equal(a[:, :14], b[:, :14])
    assert not torch.allclose(a[:, 14:], b[:, 14:])


@pytest.mark.parametrize("attention", CPU_ATTENTIONS)
def test_padding_leaves_real_tokens_unchanged_with_rope_and_gqa(attention):
    """Right padding: the mask paths (K/V repeated for the masked kernels) see the real tokens
    exactly as the row alone does."""
    model = make(attention, n_kv_heads=2, **LLAMA).eval()
    real = torch.randint(1, 97, (1, 10))
    padded = torch.cat([real, torch.zeros(1, 14, dtype=torch.long)], dim=1)
    other = torch.randint(1, 97, (1, 24))
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, 10:] = False
    out = model(torch.cat([padded, other]), attention_mask=mask)
    torch.testing.assert_close(out[0, :10], model(real)[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[1], model(other)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_changes_nothing_for_the_llama_block(mode):
    x, targets = torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24))
    results = []
    for ckpt in ("none", mode):
        model = make(n_kv_heads=2, checkpointing=ckpt, **LLAMA).train()
        loss, _ = model(x, targets)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---- RoPE -----------------------------------------------------------------------------------


def _rope_reference(x_BTHD: torch.Tensor, theta: float) -> torch.Tensor:
    """Each pair (i, i + D/2) of a head as a complex number times e^(i t theta^(-2i/D)): the
    rotate-half layout of Hugging Face's Llama, written out with complex arithmetic."""
    _, T, _, D = x_BTHD.shape
    half = D // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freq  # (T, D/2)
    z = torch.complex(x_BTHD[..., :half], x_BTHD[..., half:])
    rotated = z * torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
    return torch.cat([rotated.real, rotated.imag], dim=-1)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_matches_the_complex_rotation_of_hf_llama(theta):
    x = torch.randn(2, 20, 3, 16, dtype=torch.float64)
    rope = RotaryEmbedding(16, 32, theta).double()
    # The tables are fp32 (as HF computes them), so fp32 closeness.
    torch.testing.assert_close(rope(x), _rope_reference(x, theta), rtol=1e-6, atol=1e-6)


def test_rope_scores_depend_only_on_the_distance():
    """<R(m) q, R(n) k> is a function of m - n: the point of rotary positions."""
    rope = RotaryEmbedding(8, 64, 10000.0).double()
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(m, n):
        qs = rope(q.expand(1, 64, 1, 8))[0, m, 0]
        ks = rope(k.expand(1, 64, 1, 8))[0, n, 0]
        return float(qs @ ks)

    assert score(10, 3) == pytest.approx(score(40, 33), rel=1e-6)
    assert score(10, 3) != pytest.approx(score(10, 4), rel=1e-3)


def test_rope_model_has_no_position_parameters():
    model = make(pos_encoding="rope")
    assert not hasattr(model, "pos_emb") and not hasattr(model, "pos_table")
    assert model.num_params() == make(pos_encoding="sinusoidal").num_params()
    assert all(block.attn.rope is model.rope for block in model.blocks)  # one table
    assert not any("rope" in k for k in model.state_dict())  # recomputed, never saved


# ---- grouped-query attention ------------------------------------------------------------------


def _as_mha(gqa: Transformer) -> Transformer:
    """The multi-head model with the GQA model's weights, each K/V head's rows copied to the
    query heads it serves: what grouped-query attention computes, spelled out."""
    a = gqa.args
    mha = Transformer(ModelArgs(**{**_fields(a), "n_kv_heads": 0})).double()
    H, Hkv, D = a.n_heads, a.kv_heads, a.d_head
    state = dict(gqa.state_dict())
    for i in range(a.n_layers):
        key = f"blocks.{i}.attn.qkv.weight"
        q, k, v = state[key].split((H * D, Hkv * D, Hkv * D))
        k, v = (
            t.view(Hkv, D, -1).repeat_interleave(H // Hkv, dim=0).reshape(H * D, -1) for t in (k, v)
        )
        state[key] = torch.cat([q, k, v])
    mha.load_state_dict(state)
    return mha


def _fields(args: ModelArgs) -> dict:
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}


@pytest.mark.parametrize("n_kv_heads", [1, 2])
@pytest.mark.parametrize("attention", [*CPU_ATTENTIONS, "fa4"])
def test_gqa_computes_mha_over_repeated_kv_heads(attention, n_kv_heads, fa4_reference):
    gqa = make(attention, n_kv_heads=n_kv_heads, **LLAMA).train()
    mha = _as_mha(gqa).train()
    x, targets = torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24))
    targets[1, 20:] = IGNORE_INDEX
    (l_gqa, _), (l_mha, _) = gqa(x, targets), mha(x, targets)
    torch.testing.assert_close(l_gqa, l_mha, rtol=1e-12, atol=1e-12)
    l_gqa.backward()
    l_mha.backward()
    # The K/V rows' gradient is the sum over the query heads each serves.
    g_mha = _as_mha_grad(mha, gqa.args)
    # FA4's stand-in computes in fp32 (as the kernels accumulate), so fp32 closeness for it.
    tol = {"rtol": 1e-5, "atol": 1e-7} if attention == "fa4" else {"rtol": 1e-9, "atol": 1e-12}
    for name, p in gqa.named_parameters():
        torch.testing.assert_close(p.grad, g_mha[name], **tol, msg=name)


def _as_mha_grad(mha: Transformer, a: ModelArgs) -> dict[str, torch.Tensor]:
    H, Hkv, D = a.n_heads, a.kv_heads, a.d_head
    grads = {n: p.grad for n, p in mha.named_parameters()}
    for i in range(a.n_layers):
        key = f"blocks.{i}.attn.qkv.weight"
        q, k, v = grads[key].split(H * D)
        k, v = (t.view(Hkv, H // Hkv, D, -1).sum(1).reshape(Hkv * D, -1) for t in (k, v))
        grads[key] = torch.cat([q, k, v])
    return grads


@pytest.mark.parametrize("attention", [*CPU_ATTENTIONS, "fa4"])
def test_n_kv_heads_equal_to_n_heads_is_multi_head_attention_exactly(attention, fa4_reference):
    x = torch.randint(0, 97, (2, 24))
    a, b = make(attention, **LLAMA), make(attention, n_kv_heads=4, **LLAMA)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))


def test_sdpa_enable_gqa_path_matches_the_repeated_heads():
    """The native path (SDPA's enable_gqa, what flash and cudnn get on CUDA) on the CPU, where
    SDPA's CPU kernel takes it, against the repeat path sdpa itself takes."""
    model = make("sdpa", n_kv_heads=2, **LLAMA).eval()
    x = torch.randint(0, 97, (2, 24))
    repeated = model(x)
    for block in model.blocks:
        assert block.attn.kv_repeat == 2 and not block.attn.enable_gqa
        block.attn.kv_repeat, block.attn.enable_gqa = 1, True
    torch.testing.assert_close(model(x), repeated, rtol=1e-12, atol=1e-12)


def test_each_kernel_row_says_how_it_runs_gqa():
    for k in attention_kernels.KERNELS.values():
        assert k.gqa in ("native", "repeat"), k.name
    native = attention_kernels.names_where(lambda k: k.gqa == "native")
    assert set(native) == {"flash", "cudnn", "fa4"}
    for name in attention_kernels.NAMES:
        blocks = make(name if name != "auto" else "sdpa", n_kv_heads=2).blocks
        assert blocks[0].attn.enable_gqa == (name in native)


# ---- RMSNorm, SwiGLU, untied embeddings -------------------------------------------------------


def test_rmsnorm_is_its_formula():
    model = make(norm_type="rmsnorm")
    norm = model.blocks[0].ln1
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), want, rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in norm.parameters()) == 32  # a gain, no bias


def test_swiglu_is_its_formula():
    mlp = make(activation="swiglu").blocks[0].mlp
    f = mlp.proj.in_features
    w_gate, w_up = mlp.fc.weight[:f], mlp.fc.weight[f:]
    x = torch.randn(4, 32, dtype=torch.float64)
    want = mlp.proj(F.silu(x @ w_gate.T + mlp.fc.bias[:f]) * (x @ w_up.T + mlp.fc.bias[f:]))
    torch.testing.assert_close(mlp(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "d_model,hidden", [(576, 1536), (960, 2560), (2048, 5632), (4096, 11008), (64, 256)]
)
def test_swiglu_hidden_width_is_llamas(d_model, hidden):
    """d_ff=0: 8/3 d_model rounded up to a multiple of 256 (Llama's multiple_of): SmolLM's,
    TinyLlama's and Llama-2-7B's published widths."""
    cfg = build_config(
        {"model": {"d_model": d_model, "n_heads": 4, "d_ff": 0}}, {"activation": "swiglu"}
    )
    assert cfg.model.d_ff == hidden
    assert ModelArgs(vocab_size=8, d_model=d_model, d_ff=0, activation="swiglu").d_ff == hidden


def test_d_ff_zero_and_multiple_of():
    assert build_config({"d_ff": 0}).model.d_ff == 4 * 256  # gelu: GPT-2's 4 d_model
    cfg = build_config({"d_ff": 0, "activation": "swiglu", "ffn_multiple_of": 64})
    assert cfg.model.d_ff == 704  # 8/3 * 256 = 682 -> 704
    assert build_config({"d_ff": 1000, "activation": "swiglu"}).model.d_ff == 1000  # given wins
    same = build_config({"d_ff": 768, "activation": "swiglu", "d_model": 288, "n_heads": 4})
    derived = build_config({"d_ff": 0, "activation": "swiglu", "d_model": 288, "n_heads": 4})
    assert same.hash() == derived.hash()  # one experiment, however its width was written


def test_untied_embeddings_are_separate_parameters():
    model = make(tie_embeddings=False).train()
    assert model.lm_head.weight is not model.tok_emb.weight
    names = {n for n, _ in model.named_parameters()}
    assert {"tok_emb.weight", "lm_head.weight"} <= names
    tied = make()
    assert model.num_params() - tied.num_params() == 128 * 32  # V_padded x d
    loss, _ = model(torch.randint(0, 97, (2, 24)), torch.randint(0, 97, (2, 24)))
    loss.backward()
    assert not torch.allclose(model.lm_head.weight.grad, model.tok_emb.weight.grad)


# ---- presets --------------------------------------------------------------------------------

# Published parameter counts (the models' own vocabularies: SmolLM 49152 tied, TinyLlama 32000
# untied), which each preset's BPE vocabulary reproduces exactly (49152 and 32000 rows are
# already multiples of model.vocab_multiple).
PRESETS = {
    "configs/smollm_135m.yaml": 134_515_008,
    "configs/smollm_360m.yaml": 361_821_120,
    "configs/tinyllama_1b.yaml": 1_100_048_384,
}


@pytest.mark.parametrize("path", PRESETS)
def test_presets_have_their_published_parameter_counts(path):
    cfg = load_config(path)
    args = ModelArgs.from_config(cfg, cfg.data.vocab_size)
    assert args.padded_vocab_size == cfg.data.vocab_size
    with torch.device("meta"):
        model = Transformer(args)
    assert model.num_params() == PRESETS[path]
    m = cfg.model
    assert (m.norm_type, m.pos_encoding, m.activation, m.bias) == (
        "rmsnorm",
        "rope",
        "swiglu",
        False,
    )
    assert m.n_kv_heads < m.n_heads


def test_the_default_config_keeps_its_identity():
    """The new fields at their defaults stay out of the hash (config.IDENTITY_ADDED), so the
    results of every run before them still resume. Pinned again after this session's merge
    changed the identity once (lmprof.identity leaves name, seed and repeat out; new data and
    evaluation keys); the Llama fields and model.loss at their defaults do not move it."""
    assert build_config().hash() == "8af5d19ade9e88f7"
    assert load_config("configs/gpt2_small.yaml").hash() == "15e1727e7c31b056"
    assert build_config({"n_kv_heads": 2}).hash() != build_config().hash()


# ---- the config refuses what cannot work, in one line -----------------------------------------


@pytest.mark.parametrize(
    "layer,key,words",
    [
        ({"n_heads": 4, "n_kv_heads": 3}, "model.n_kv_heads", "must divide model.n_heads=4"),
        ({"n_heads": 4, "n_kv_heads": 8}, "model.n_kv_heads", "must divide model.n_heads=4"),
        (
            {"d_model": 36, "n_heads": 4, "pos_encoding": "rope"},
            "model.pos_encoding",
            "9 must be even",
        ),
        ({"norm_type": "batchnorm"}, "model.norm_type", "layernorm, rmsnorm"),
        ({"activation": "geglu"}, "model.activation", "swiglu"),
        ({"rope_theta": 0}, "model.rope_theta", "positive"),
        ({"n_kv_heads": -1}, "model.n_kv_heads", "zero or positive"),
    ],
)
def test_bad_llama_shapes_are_one_line(layer, key, words):
    with pytest.raises(ConfigError) as exc:
        build_config(layer)
    text = str(exc.value)
    assert key in text and words in text and "\n" not in text


def test_a_kernel_without_gqa_is_refused_by_its_row(monkeypatch):
    import dataclasses

    row = dataclasses.replace(attention_kernels.KERNELS["vanilla"], gqa=None)
    monkeypatch.setitem(attention_kernels.KERNELS, "vanilla", row)
    with pytest.raises(ConfigError, match="grouped-query attention") as exc:
        build_config({"attention": "vanilla", "n_kv_heads": 2})
    assert "\n" not in str(exc.value)
    build_config({"attention": "vanilla", "n_kv_heads": 4})  # = n_heads: plain MHA, allowed


def test_help_config_lists_the_llama_keys():
    text = describe_keys()
    for key in ("model.n_kv_heads", "model.norm_type", "model.rope_theta", "model.ffn_multiple_of"):
        assert key in text
    assert "rmsnorm" in text and "swiglu" in text and "rope" in text


def test_rope_tables_cover_the_context():
    model = make(pos_encoding="rope", max_seq_len=24)
    assert model.rope.cos_TD.shape == (24, 8)
    assert math.isclose(float(model.rope.cos_TD[0, 0]), 1.0)


@pytest.mark.parametrize("path", PRESETS)
def test_estimate_and_find_max_cover_the_presets(path):
    # No per-op code in the memory model or find-max: the presets' ops come from their
    # descriptions, and what the model says responds to the options it should.
    from lmprof.profiling.memory_model import estimate_memory
    from lmprof.sweep.find_max import model_seed

    cfg = load_config(path)
    V = cfg.data.vocab_size

    def peak(*overrides: str) -> int:
        c = build_config(cfg.to_dict(), overrides=["training.batch_size=1", *overrides])
        return estimate_memory(c, V).predicted_peak_bytes

    est = estimate_memory(cfg, V)
    assert est.n_params == PRESETS[path]
    assert est.parameters >= 4 * PRESETS[path] and est.optimizer_states == 8 * PRESETS[path]
    long = "data.sequence_length=8192"
    none, sel, full = (
        peak(long, f"system.gradient_checkpointing={m}") for m in ("none", "selective", "full")
    )
    assert full < sel < none
    # grouped-query attention keeps less than multi-head attention at the same shape
    assert peak(long, "attention=cudnn") < peak(long, "attention=cudnn", "model.n_kv_heads=0")
    # find-max's seed: the batch the model says fits an 80 GB card at 2k tokens
    assert model_seed(cfg, "batch_size", V, 79.0, 1024) >= 1
