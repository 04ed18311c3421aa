"""lmprof's Llama-style training step against Hugging Face transformers' LlamaForCausalLM.

Both at a preset's shape (configs/<preset>.yaml), from the same initial weights (lmprof's, loaded
into HF through the state-dict mapping below: q/k/v and gate/up split out of lmprof's fused
projections; both rotate q and k in the rotate-half layout, so no permutation), on the same
batches:

1. equivalence on one batch: logits and loss equal in fp32 (TF32 off) to a tight tolerance, and
   in bf16 autocast the two differ by no more than each differs from the fp32 logits;
2. training: both `torch.compile`d (default mode), HF with attn_implementation="sdpa", bf16
   autocast over fp32 weights on both, fused AdamW with lmprof's parameter groups, schedule and
   clipping (lmprof's Trainer for lmprof, the same steps written out for HF). tokens/s is
   B*T over the median step time from CUDA events after --warmup steps (p10-p90 given), peak
   memory is torch.cuda.max_memory_allocated over the run, and the loss of every step is kept;
3. the loss curves: the largest gap between lmprof's and HF's smoothed curves against the gap
   between two lmprof runs from two seeds' initial weights (the seed-to-seed spread).

Data: a seeded first-order Markov chain over the preset's vocabulary (each token has 64
successors with Zipf weights), so the loss falls towards the chain's entropy; generated on the
host, the same for every run, no tokenizer or file needed.

    python benchmarks/hf_llama_peer.py --out $OUT           # GPU: smollm_135m, B8 x T2048
    python benchmarks/hf_llama_peer.py --quick              # CPU smoke test: tiny shape, fp32

Writes <out>/hf_llama_peer.json, hf_llama_peer.csv (one row per run) and
hf_llama_peer_curves.csv (the loss per step); prints the table last. Exit 0 when both
equivalence checks pass (the speed goal, lmprof >= 1.2x HF's tokens/s at no more peak memory,
is reported, not asserted), 1 when one fails, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import inspect
import io
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from lmprof.attention_kernels import kernel as attention_kernel
from lmprof.attention_kernels import runs_in
from lmprof.config import build_config, load_yaml
from lmprof.data.batching import Batch
from lmprof.errors import UserError
from lmprof.io import atomic_write_text
from lmprof.model import IGNORE_INDEX, NORM_EPS, ModelArgs, Transformer
from lmprof.train.distributed import DistInfo
from lmprof.train.loop import Trainer
from lmprof.train.optim import build_optimizer, build_scheduler

GIB = 1024**3
SUCCESSORS = 64
# --quick: the preset's widths, heads and vocabulary kept for the equivalence check (its layers
# cut to two), and a tiny model for the training loop, so the CPU finishes in about a minute.
QUICK_EQUIV_LAYERS = 2
QUICK_TRAIN = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 0}
QUICK_VOCAB = 512


# ---- the data -------------------------------------------------------------------------------


def markov_rows(vocab: int, rows: int, length: int, seed: int) -> tuple[torch.Tensor, float]:
    """`rows` sequences of `length` tokens from a random first-order Markov chain, and the
    chain's entropy rate in nats (the loss a perfect model reaches)."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, SUCCESSORS), generator=g)
    weights = 1.0 / torch.arange(1, SUCCESSORS + 1, dtype=torch.float64)
    p = weights / weights.sum()
    choice = torch.multinomial(p, rows * (length - 1), replacement=True, generator=g)
    choice = choice.view(rows, length - 1)
    out = torch.empty(rows, length, dtype=torch.long)
    out[:, 0] = torch.randint(0, vocab, (rows,), generator=g)
    for t in range(1, length):  # length steps over `rows` tokens each
        out[:, t] = successors[out[:, t - 1], choice[:, t - 1]]
    return out, float(-(p * p.log()).sum())


def batches_of(rows: torch.Tensor, batch: int, device: torch.device) -> list[Batch]:
    """lmprof batches whose last target is IGNORE_INDEX: HF shifts its labels inside and drops
    the last position, so both average the loss over the same B * (T - 1) targets."""
    out = []
    for i in range(0, rows.size(0), batch):
        r = rows[i : i + batch]
        x, y = r[:, :-1].contiguous(), r[:, 1:].clone()
        y[:, -1] = IGNORE_INDEX
        out.append(Batch(x.to(device), y.to(device), None, x.size(0) * (x.size(1) - 1), x.numel()))
    return out


# ---- the two models -------------------------------------------------------------------------


def lmprof_trainer(layers: list[dict], seed: int, device: torch.device) -> Trainer:
    cfg = build_config(*layers, {"seed": seed})
    return Trainer(cfg, DistInfo(device=device), outputs=None)


def check_llama_shaped(args: ModelArgs) -> None:
    want = {
        "norm_type": "rmsnorm",
        "pos_encoding": "rope",
        "activation": "swiglu",
        "norm": "pre",
        "bias": False,
    }
    wrong = {k: getattr(args, k) for k, v in want.items() if getattr(args, k) != v}
    if wrong or args.dropout:
        raise UserError(
            f"the preset is not Llama-shaped ({wrong or {'dropout': args.dropout}}): "
            f"LlamaForCausalLM needs {want} and dropout 0"
        )


def hf_model(args: ModelArgs, device: torch.device):
    """LlamaForCausalLM at args' shape, SDPA attention, fp32 weights, no KV cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = {
        "vocab_size": args.padded_vocab_size,
        "hidden_size": args.d_model,
        "intermediate_size": args.d_ff,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.d_head,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": NORM_EPS,
        "tie_word_embeddings": args.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "use_cache": False,  # training: no KV cache kept per layer
        "attn_implementation": "sdpa",
    }
    # transformers 5 takes RoPE's base in rope_parameters, 4.x as rope_theta.
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": args.rope_theta}
    else:
        kw["rope_theta"] = args.rope_theta
    config = LlamaConfig(**kw)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


def hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """lmprof's Transformer state dict in LlamaForCausalLM's names and splits."""
    H, Hkv, D, f = args.n_heads, args.kv_heads, args.d_head, args.d_ff
    out = {
        "model.embed_tokens.weight": state["tok_emb.weight"],
        "model.norm.weight": state["ln_f.weight"],
    }
    out["lm_head.weight"] = state["lm_head.weight"]  # the embedding itself when tied
    for i in range(args.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[src + "attn.qkv.weight"].split((H * D, Hkv * D, Hkv * D))
        gate, up = state[src + "mlp.fc.weight"].split((f, f))
        out |= {
            dst + "input_layernorm.weight": state[src + "ln1.weight"],
            dst + "self_attn.q_proj.weight": q,
            dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": state[src + "attn.proj.weight"],
            dst + "post_attention_layernorm.weight": state[src + "ln2.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "mlp.proj.weight"],
        }
    return out


def load_into_hf(hf, state: dict[str, torch.Tensor], args: ModelArgs) -> None:
    mapped = hf_state_dict(state, args)
    missing, unexpected = hf.load_state_dict(mapped, strict=False)
    tied = {"lm_head.weight"} if args.tie_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"state-dict mapping: missing {missing}, unexpected {unexpected}")
    if (
        args.tie_embeddings
        and hf.lm_head.weight.data_ptr() != hf.model.embed_tokens.weight.data_ptr()
    ):
        raise RuntimeError("HF's lm_head is not tied to its embedding")


# ---- 1. equivalence -------------------------------------------------------------------------


def _outputs(lm, hf, b: Batch, autocast: torch.dtype | None):
    ctx = (
        torch.autocast(b.input_ids.device.type, dtype=autocast)
        if autocast
        else torch.autocast(b.input_ids.device.type, enabled=False)
    )
    with torch.no_grad(), ctx:
        logits_lm = lm(b.input_ids).float()
        loss_sum_lm, _ = lm(b.input_ids, b.targets)  # lmprof's loss is the sum: the mean here
        out = hf(input_ids=b.input_ids, labels=b.input_ids)
    return logits_lm, float(loss_sum_lm) / b.n_real_tokens, out.logits.float(), float(out.loss)


def fp32_twin(lm: Transformer, args: ModelArgs) -> Transformer:
    """`lm` itself when its attention kernel runs fp32; else the same weights with `sdpa`
    attention (flash, cudnn and fa4 have no fp32 kernel), for the fp32 check."""
    if runs_in(attention_kernel(args.attention), "fp32"):
        return lm
    device = next(lm.parameters()).device
    twin = Transformer(dataclasses.replace(args, attention="sdpa")).to(device).eval()
    twin.load_state_dict(lm.state_dict())
    return twin


def equivalence(lm, hf, b: Batch, bf16: bool) -> dict:
    """fp32: logits within 1e-4 (absolute, on logits of order 1) and losses within 1e-5
    relative; bf16: lmprof and HF no further apart than the farther of them is from fp32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref_lm, loss_ref_lm, ref_hf, loss_ref_hf = _outputs(fp32_twin(lm, lm.args), hf, b, None)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    fp32_dlogits = float((ref_lm - ref_hf).abs().max())
    fp32_dloss = abs(loss_ref_lm - loss_ref_hf)
    res = {
        "fp32_max_abs_dlogits": fp32_dlogits,
        "fp32_abs_dloss": fp32_dloss,
        "fp32_loss": loss_ref_lm,
        "fp32_ok": fp32_dlogits <= 1e-4 and fp32_dloss <= 1e-5 * abs(loss_ref_lm),
    }
    if bf16:
        lm16, loss_lm16, hf16, loss_hf16 = _outputs(lm, hf, b, torch.bfloat16)
        err_lm = float((lm16 - ref_lm).abs().max())
        err_hf = float((hf16 - ref_lm).abs().max())
        gap = float((lm16 - hf16).abs().max())
        loss_err = max(abs(loss_lm16 - loss_ref_lm), abs(loss_hf16 - loss_ref_lm))
        res |= {
            "bf16_max_abs_dlogits": gap,
            "bf16_lmprof_vs_fp32": err_lm,
            "bf16_hf_vs_fp32": err_hf,
            "bf16_abs_dloss": abs(loss_lm16 - loss_hf16),
            "bf16_loss_vs_fp32": loss_err,
            "bf16_ok": gap <= 2 * max(err_lm, err_hf)
            and abs(loss_lm16 - loss_hf16) <= 2 * loss_err + 1e-3,
        }
    return res


# ---- 2. training ----------------------------------------------------------------------------


def timed(step, batches: list[Batch], warmup: int, device: torch.device) -> dict:
    """Run `step` over every batch; per-step times (CUDA events on a GPU), peak memory, losses."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in batches
        ]
    losses, wall = [], []
    try:
        for i, b in enumerate(batches):
            t0 = time.perf_counter()
            if cuda:
                events[i][0].record()
            losses.append(step(b).detach())
            if cuda:
                events[i][1].record()
            else:
                wall.append((time.perf_counter() - t0) * 1e3)
    except torch.OutOfMemoryError as exc:
        # Recorded, not raised: the other runs and the equivalence still get written.
        del losses
        return {"oom": (str(exc).strip().splitlines() or ["out of memory"])[0][:200]}
    if cuda:
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        times = wall
    steady = times[warmup:] or times
    tokens = batches[0].n_tokens
    p10, _, p90 = _deciles(steady)
    med = statistics.median(steady)
    return {
        "tokens_per_sec": tokens / (med / 1e3),
        "step_ms_p50": med,
        "step_ms_p10": p10,
        "step_ms_p90": p90,
        "first_step_s": times[0] / 1e3,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None,
        "losses": torch.stack(losses).float().tolist(),  # one host sync, after the run
    }


def _deciles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=10, method="inclusive")
    return q[0], q[4], q[-1]


def run_lmprof(layers, seed, batches, warmup, device) -> tuple[dict, dict]:
    """Train lmprof from `seed`'s initial weights; returns the timing and the initial weights."""
    trainer = lmprof_trainer(layers, seed, device)
    init = {k: v.detach().to("cpu", copy=True) for k, v in trainer.raw_model.state_dict().items()}
    trainer.model.train()
    # train_step returns the summed loss (the trainer divides its gradient by the real tokens)
    res = timed(
        lambda b: trainer.train_step(iter((b,)))[0] / b.n_real_tokens, batches, warmup, device
    )
    res["params"] = trainer.n_params
    return res, init


def run_hf(trainer_cfg_layers, args, init, batches, warmup, device, compile_) -> dict:
    cfg = build_config(*trainer_cfg_layers)
    hf = hf_model(args, device)
    load_into_hf(hf, init, args)
    hf.train()
    opt = build_optimizer(hf, cfg.training, device)
    sched = build_scheduler(opt, cfg.training)
    model = torch.compile(hf) if compile_ else hf
    dtype = torch.bfloat16 if cfg.system.precision == "bf16" else None
    clip = cfg.training.max_grad_norm

    def step(b: Batch) -> torch.Tensor:
        ctx = (
            torch.autocast(device.type, dtype=dtype)
            if dtype
            else torch.autocast(device.type, enabled=False)
        )
        with ctx:
            loss = model(input_ids=b.input_ids, labels=b.input_ids).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(hf.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return loss

    res = timed(step, batches, warmup, device)
    res["params"] = sum(p.numel() for p in hf.parameters())
    return res


def release() -> None:
    """Free what the last run left (call after its objects went out of scope), so the next
    run's peak memory is its own."""
    torch._dynamo.reset()  # compiled graphs hold their model's memory
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- 3. the curves --------------------------------------------------------------------------


def smooth(xs: list[float], window: int) -> list[float]:
    """Trailing mean over `window` steps (running sum: linear in the steps)."""
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= window:
            acc -= xs[i - window]
        out.append(acc / min(i + 1, window))
    return out


def curve_check(ref: list[float], other: list[float], noise: list[float], window: int) -> dict:
    s_ref, s_other, s_noise = (smooth(c, window) for c in (ref, other, noise))
    gap = max(abs(a - b) for a, b in zip(s_ref, s_other, strict=True))
    spread = max(abs(a - b) for a, b in zip(s_ref, s_noise, strict=True))
    return {
        "window": window,
        "max_gap_hf": gap,
        "max_gap_seed": spread,
        "within_noise": gap <= spread,
    }


# ---- SDPA's grouped-query backends on this GPU -------------------------------------------------


def gqa_probe(args: ModelArgs, device: torch.device) -> dict[str, str]:
    """Which SDPA backends run enable_gqa (forward and backward, bf16, causal) at the preset's
    heads, and FA4 with fewer K/V heads when it is installed: "ok" or the error's first line."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from lmprof.ops import flash_attn4

    B, T, H, Hkv, D = 2, 512, args.n_heads, args.kv_heads, args.d_head
    g = torch.Generator(device).manual_seed(0)

    def qkv(layout_bhtd: bool):
        shapes = [(B, H, T, D), (B, Hkv, T, D), (B, Hkv, T, D)]
        if not layout_bhtd:
            shapes = [(B, T, h, D) for _, h, _, _ in shapes]
        return [
            torch.randn(s, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
            for s in shapes
        ]

    out = {}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        q, k, v = qkv(True)
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=True
                ).sum().backward()
            torch.cuda.synchronize()
            out[name.lower()] = "ok"
        except RuntimeError as exc:
            out[name.lower()] = (str(exc).strip().splitlines() or ["error"])[0][:120]
    why = flash_attn4.unavailable_reason()
    if why:
        out["fa4"] = why[:120]
    else:
        q, k, v = qkv(False)
        try:
            o = flash_attn4.fa4_attention(q, k, v, 1 / math.sqrt(D), causal=True)
            o.float().sum().backward()
            ref = F.scaled_dot_product_attention(
                *(t.detach().transpose(1, 2).float() for t in (q, k, v)),
                is_causal=True,
                enable_gqa=True,
            ).transpose(1, 2)
            out["fa4"] = f"ok (max |O - fp32 SDPA| {float((o.float() - ref).abs().max()):.2e})"
        except RuntimeError as exc:
            out["fa4"] = (str(exc).strip().splitlines() or ["error"])[0][:120]
    return out


# ---- the command ----------------------------------------------------------------------------


def preset_path(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        return p
    return Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="smollm_135m", help="a configs/ preset name or a YAML path")
    # B8 x T2048: 16384 tokens a step, so every matmul has 16k rows (enough to fill an H100's
    # 132 SMs even at SmolLM's width 576) and a compiled step takes tens of milliseconds, far
    # above the launch overhead; HF's fp32 copy of the logits (B*T*V*4 bytes, 3.2 GB at V 49152)
    # and both models' activations stay well under 80 GB.
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    ap.add_argument("--seq", type=int, default=2048, help="tokens per sequence (default 2048)")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each run")
    ap.add_argument("--warmup", type=int, default=20, help="first steps left out of the timing")
    ap.add_argument("--kernel", default="cudnn", help="lmprof's model.attention (default cudnn)")
    ap.add_argument("--seed", type=int, default=0, help="lmprof's initial weights (and HF's)")
    ap.add_argument("--window", type=int, default=10, help="steps of the curves' trailing mean")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny shape, fp32")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default $OUT)")
    a = ap.parse_args(argv)
    if not a.out:
        raise UserError("give --out DIR (or set OUT) for the results")
    for name in ("batch", "seq", "steps", "window"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(a, name)}")
    if a.seq < 2:
        raise UserError(f"--seq must be at least 2 (a next token to predict), got {a.seq}")
    if not 0 <= a.warmup < a.steps:
        raise UserError(f"--warmup must be in [0, --steps={a.steps}), got {a.warmup}")
    if a.quick:
        a.batch, a.seq, a.steps, a.warmup = (
            min(a.batch, 2),
            min(a.seq, 32),
            min(a.steps, 30),
            min(a.warmup, 5),
        )
        a.kernel = "sdpa"
    if not preset_path(a.preset).is_file():
        raise UserError(f"--preset {a.preset}: no file {preset_path(a.preset)}")
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        a = parse(argv)
        import transformers  # noqa: F401  (one line below if it is missing)
    except UserError as exc:
        print(f"hf_llama_peer: {exc}", file=sys.stderr)
        return 2
    except ImportError:
        print("hf_llama_peer: needs transformers (pip install transformers)", file=sys.stderr)
        return 2
    device = torch.device("cpu" if a.quick or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not a.quick:
        print("hf_llama_peer: no CUDA GPU here; --quick runs the CPU smoke test", file=sys.stderr)
        return 2
    preset = load_yaml(preset_path(a.preset))
    vocab = int(preset.get("data", {}).get("vocab_size", QUICK_VOCAB))
    run = {
        "data.source": "synthetic",
        "data.vocab_size": QUICK_VOCAB if a.quick else vocab,
        "batch_size": a.batch,
        "sequence_length": a.seq,
        "attention": a.kernel,
        "precision": "fp32" if a.quick else "bf16",
        "compile": not a.quick,
        "max_steps": a.steps,
        "logging_steps": 10**6,
        "progress": False,
        "run_name": "hf_llama_peer",
        "device": device.type,
    }
    train_layers = [preset, run, QUICK_TRAIN if a.quick else {}]
    try:
        cfg = build_config(*train_layers)
    except UserError as exc:
        print(f"hf_llama_peer: {exc}", file=sys.stderr)
        return 2
    args = ModelArgs.from_config(cfg, cfg.data.vocab_size)
    try:
        check_llama_shaped(args)
    except UserError as exc:
        print(f"hf_llama_peer: {exc}", file=sys.stderr)
        return 2

    # 1. equivalence at the preset's shape (--quick: its first layers, its full vocabulary)
    eq_layers = [preset, {**run, "data.vocab_size": vocab, "compile": False}]
    if a.quick:
        eq_layers.append({"n_layers": QUICK_EQUIV_LAYERS})
    eq_trainer = lmprof_trainer(eq_layers, a.seed, device)
    eq_args = eq_trainer.args
    lm = eq_trainer.raw_model.eval()
    hf = hf_model(eq_args, device)
    load_into_hf(hf, lm.state_dict(), eq_args)
    hf.eval()
    eq_rows, _ = markov_rows(eq_args.padded_vocab_size, 2, min(a.seq, 256) + 1, a.seed + 100)
    eq = equivalence(lm, hf, batches_of(eq_rows, 2, device)[0], bf16=device.type == "cuda")
    eq["params_lmprof"] = eq_trainer.n_params
    eq["params_hf"] = sum(p.numel() for p in hf.parameters())
    del lm, hf, eq_trainer
    release()
    probe = gqa_probe(eq_args, device) if device.type == "cuda" else {}

    # 2. training: lmprof from seed s, HF from the same weights, lmprof from seed s + 1
    rows, entropy = markov_rows(args.padded_vocab_size, a.steps * a.batch, a.seq + 1, a.seed + 1)
    batches = batches_of(rows, a.batch, device)
    lm_res, init = run_lmprof(train_layers, a.seed, batches, a.warmup, device)
    release()
    hf_res = run_hf(train_layers, args, init, batches, a.warmup, device, compile_=not a.quick)
    release()
    lm2_res, _ = run_lmprof(train_layers, a.seed + 1, batches, a.warmup, device)
    release()
    ran = not any("oom" in r for r in (lm_res, hf_res, lm2_res))
    curves = (
        curve_check(lm_res["losses"], hf_res["losses"], lm2_res["losses"], a.window)
        if ran
        else {"window": a.window, "max_gap_hf": None, "max_gap_seed": None, "within_noise": None}
    )

    meta = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": sys.modules["transformers"].__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(
            ["benchmarks/hf_llama_peer.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "preset": a.preset,
        "shape": {
            k: getattr(args, k)
            for k in (
                "n_layers",
                "d_model",
                "n_heads",
                "n_kv_heads",
                "d_ff",
                "padded_vocab_size",
                "tie_embeddings",
            )
        },
        "batch": a.batch,
        "seq": a.seq,
        "steps": a.steps,
        "warmup": a.warmup,
        "kernel": a.kernel,
        "precision": cfg.system.precision
        + (" autocast over fp32 weights, both" if not a.quick else ""),
        "compile": cfg.system.compile,
        "data": f"Markov chain, {SUCCESSORS} Zipf successors a token; entropy {entropy:.3f} nats",
    }
    runs = {"lmprof": lm_res, "hf": hf_res, "lmprof_seed+1": lm2_res}
    summary = {
        "speedup_tokens_per_sec": lm_res["tokens_per_sec"] / hf_res["tokens_per_sec"]
        if ran
        else None,
        "peak_mem_ratio": (lm_res["peak_mem_gib"] / hf_res["peak_mem_gib"])
        if ran and hf_res["peak_mem_gib"]
        else None,
    }
    write(Path(a.out), meta, eq, probe, runs, curves, summary)
    print(table(meta, eq, probe, runs, curves, summary))
    ok = eq["fp32_ok"] and eq.get("bf16_ok", True)
    return 0 if ok else 1


def write(out: Path, meta, eq, probe, runs, curves, summary) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "meta": meta,
        "equivalence": eq,
        "gqa_probe": probe,
        "runs": runs,
        "curves": curves,
        "summary": summary,
    }
    atomic_write_text(out / "hf_llama_peer.json", json.dumps(doc, indent=1))
    cols = [
        "run",
        "tokens_per_sec",
        "step_ms_p10",
        "step_ms_p50",
        "step_ms_p90",
        "peak_mem_gib",
        "first_step_s",
        "params",
        "final_loss",
        "oom",
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for name, r in runs.items():
        final = _final(r["losses"]) if "losses" in r else None
        w.writerow([name, *(r.get(c) for c in cols[1:-2]), final, r.get("oom", "")])
    atomic_write_text(out / "hf_llama_peer.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    # A run that ran out of memory has no curve: the file then has the steps of the others.
    curves = {name: r["losses"] for name, r in runs.items() if "losses" in r}
    w.writerow(["step", *curves])
    for i, losses in enumerate(zip(*curves.values(), strict=True), 1):
        w.writerow([i, *(f"{x:.6f}" for x in losses)])
    atomic_write_text(out / "hf_llama_peer_curves.csv", buf.getvalue())


def _final(losses: list[float], n: int = 20) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail)


def table(meta, eq, probe, runs, curves, summary) -> str:
    s = meta["shape"]
    lines = [
        f"{meta['preset']} (L{s['n_layers']} d{s['d_model']} {s['n_heads']}/{s['n_kv_heads']} heads "
        f"ffn {s['d_ff']} V{s['padded_vocab_size']}), B{meta['batch']} x T{meta['seq']}, "
        f"{meta['precision']}, compile={meta['compile']}, lmprof attention={meta['kernel']}, HF sdpa; "
        f"{meta['device']}, torch {meta['torch']}, transformers {meta['transformers']}",
        "",
        "| run | params | tokens/s | step ms p50 [p10, p90] | peak GiB | first step s | final loss |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in runs.items():
        if "oom" in r:
            lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | OOM: {r['oom']} | | | | |")
            continue
        peak = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f}M | {r['tokens_per_sec']:,.0f} | {r['step_ms_p50']:.1f} "
            f"[{r['step_ms_p10']:.1f}, {r['step_ms_p90']:.1f}] | {peak} | {r['first_step_s']:.1f} | "
            f"{_final(r['losses']):.4f} |"
        )
    mem, speedup = summary["peak_mem_ratio"], summary["speedup_tokens_per_sec"]
    lines.append("")
    if speedup is None:
        lines.append("a run ran out of memory: no speed, memory or curve comparison (try --batch)")
    else:
        lines += [
            f"lmprof / HF tokens/s: {speedup:.2f}x (goal >= 1.2x); peak memory "
            f"lmprof / HF: {f'{mem:.2f}x' if mem else '-'} (goal <= 1)",
            f"loss curves ({curves['window']}-step mean): max |lmprof - HF| "
            f"{curves['max_gap_hf']:.4f} vs seed-to-seed {curves['max_gap_seed']:.4f}: "
            f"{'within' if curves['within_noise'] else 'NOT within'} noise",
        ]
    lines += [
        f"equivalence fp32: max |dlogits| {eq['fp32_max_abs_dlogits']:.2e}, |dloss| {eq['fp32_abs_dloss']:.2e}: "
        f"{'ok' if eq['fp32_ok'] else 'FAILED'} (params {eq['params_lmprof']:,} lmprof, {eq['params_hf']:,} HF)",
    ]
    if "bf16_ok" in eq:
        lines.append(
            f"equivalence bf16: max |dlogits| {eq['bf16_max_abs_dlogits']:.3f} (each vs fp32: lmprof "
            f"{eq['bf16_lmprof_vs_fp32']:.3f}, HF {eq['bf16_hf_vs_fp32']:.3f}), |dloss| "
            f"{eq['bf16_abs_dloss']:.2e}: {'ok' if eq['bf16_ok'] else 'FAILED'}"
        )
    if probe:
        lines.append(
            "SDPA enable_gqa / FA4 GQA, fwd+bwd bf16: "
            + "; ".join(f"{k} {v}" for k, v in probe.items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
