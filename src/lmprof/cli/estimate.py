"""`lmprof estimate [CONFIG.yaml] [key=value ...]`: predicted memory and FLOPs, nothing run.

Fast on purpose: no data is loaded and torch is not imported (importing it alone takes longer
than the whole estimate). The vocabulary size comes from the tokenizer choice and the parameter
count from a closed form that the tests check against the model built on the meta device.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from lmprof.cli.words import add_config_arguments, split_args
from lmprof.errors import UserError
from lmprof.profiling.vocab import BYTE_VOCAB, GPT2_VOCAB, infer_vocab_size

# The vocabulary guesses are part of what this command answers; named here for its callers.
__all__ = ["BYTE_VOCAB", "GPT2_VOCAB", "add_parser", "cmd_estimate", "infer_vocab_size", "main"]

ESTIMATE_HELP = """\
Predict the peak GPU memory of one training step (what torch.cuda.max_memory_allocated reads),
broken down into parameters, gradients, optimizer states, autocast weight copies, activations,
logits and loss buffers; the caching allocator's reserve and the CUDA context (what nvidia-smi
shows); and the step's FLOPs per token and per step. Nothing is run and no data is loaded.

The vocabulary comes from data.tokenizer: byte 258, gpt2 50258 (with lmprof's PAD), bpe and
source=synthetic data.vocab_size; char is only known once built from the text, so an assumption
is printed (give --vocab-size to override any of these).

Given a sweep file, prints one line per run (select groups with --tags).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "estimate",
        help="predicted memory and FLOPs of a config, without running it",
        description=ESTIMATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument("--vocab-size", type=int, help="the vocabulary size, PAD included")
    p.add_argument(
        "--world-size", type=int, help="processes sharing the run (default: system.num_gpus)"
    )
    p.add_argument(
        "--gpu",
        help="a GPU name (e.g. 'NVIDIA H200') to show its peak FLOP/s and "
        "the step time at 100%% MFU",
    )
    p.add_argument("--tags", nargs="+", help="sweep files: only the runs of these groups")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=cmd_estimate)
    return p


def cmd_estimate(args: argparse.Namespace) -> int:
    from lmprof.config import load_config
    from lmprof.profiling.memory_model import estimate_memory
    from lmprof.profiling.memory_report import format_estimate
    from lmprof.profiling.peaks import matmul_precision, peak_flops

    words = split_args(args)
    config, overrides, tags = words.config, words.overrides, words.tags
    if args.vocab_size is not None and args.vocab_size < 2:
        raise UserError(f"--vocab-size must be at least 2, got {args.vocab_size}")
    if args.world_size is not None and args.world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {args.world_size}")
    if config and _is_sweep(config):
        return _estimate_sweep(config, overrides, tags, args)
    if tags:
        raise UserError("--tags selects runs of a sweep file; the config is a single run")
    cfg = load_config(config, overrides)
    vocab, source = _vocab(cfg, args)
    world = args.world_size if args.world_size is not None else cfg.system.num_gpus
    est = estimate_memory(cfg, vocab, world_size=world)
    flops = est.flops
    assert flops is not None
    peak = None
    if args.gpu:
        peak = peak_flops(args.gpu, matmul_precision(cfg.system.precision, allow_tf32=False))
    if args.json:
        out = {
            "config": cfg.logging.run_name,
            "vocab_size": vocab,
            "vocab_source": source,
            "n_params": est.n_params,
            "predicted_peak_bytes": est.predicted_peak_bytes,
            "peak_phase": est.peak_phase,
            "breakdown": est.breakdown(),
            "phases": est.phases,
            "saved_after_forward": est.saved_after_forward,
            "predicted_reserved_bytes": est.predicted_reserved_bytes,
            "cuda_context_bytes": est.cuda_context_bytes,
            "predicted_device_bytes": est.predicted_device_bytes,
            "model_flops_per_token": flops.model_flops_per_token,
            "hardware_flops_per_token": flops.hardware_flops_per_token,
            "tokens_per_step": est.tokens_per_step,
            "model_flops_per_step": flops.per_step(est.tokens_per_step),
            "flops_breakdown": flops.breakdown,
            "flops_convention": flops.convention,
            "peak_flops": peak,
            "notes": est.notes,
        }
        print(json.dumps(out, indent=1))
        return 0
    print(f"config: {cfg.logging.run_name}")
    print(f"vocabulary: {vocab} ({source})")
    print(format_estimate(est))
    if args.gpu:
        if peak is None:
            print(f"{args.gpu}: no peak FLOP/s known for this GPU and precision")
        else:
            step = flops.hardware_per_step(est.tokens_per_step) / peak
            print(
                f"{args.gpu}: peak {peak / 1e12:.1f} TFLOP/s dense; a step takes at least "
                f"{step * 1e3:.2f} ms (100% MFU)"
            )
    return 0


def _vocab(cfg: Any, args: argparse.Namespace) -> tuple[int, str]:
    if args.vocab_size is not None:
        return args.vocab_size, "--vocab-size"
    return infer_vocab_size(cfg)


def _is_sweep(path: str) -> bool:
    from lmprof.config import load_yaml

    return "experiments" in load_yaml(path)


def _estimate_sweep(
    path: str, overrides: list[str], tags: list[str] | None, args: argparse.Namespace
) -> int:
    """One line per run of a sweep file: the predicted peak and where it happens."""
    try:
        from lmprof.sweep.plan import plan_sweep
    except ModuleNotFoundError as exc:
        raise UserError(f"'{path}' is a sweep file, and lmprof.sweep is not installed") from exc
    from lmprof.profiling.memory_model import GiB, estimate_memory

    rows = []
    for plan in plan_sweep(path, tags, overrides, check_env=False):
        cfg = plan.cfg
        vocab, _ = _vocab(cfg, args)
        world = args.world_size if args.world_size is not None else cfg.system.num_gpus
        est = estimate_memory(cfg, vocab, world_size=world)
        assert est.flops is not None
        rows.append(
            {
                "run": plan.name,
                "batch_size": est.batch_size,
                "seq_len": est.seq_len,
                "precision": est.precision,
                "attention": est.attention,
                "checkpointing": est.checkpointing,
                "world_size": world,
                "predicted_peak_bytes": est.predicted_peak_bytes,
                "peak_phase": est.peak_phase,
                "predicted_device_bytes": est.predicted_device_bytes,
                "model_flops_per_token": est.flops.model_flops_per_token,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"{'run':<32} {'B':>4} {'T':>5} {'prec':<5} {'attention':<13} {'ckpt':<9} "
        f"{'peak alloc':>10} {'nvidia-smi':>10}  {'GFLOP/tok':>9}  peak at"
    )
    for r in rows:
        print(
            f"{r['run'][:32]:<32} {r['batch_size']:>4} {r['seq_len']:>5} {r['precision']:<5} "
            f"{r['attention']:<13} {r['checkpointing']:<9} "
            f"{r['predicted_peak_bytes'] / GiB:>6.2f} GiB {r['predicted_device_bytes'] / GiB:>6.2f}"
            f" GiB  {r['model_flops_per_token'] / 1e9:>9.3f}  {r['peak_phase']}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lmprof.cli.estimate CONFIG [key=value]`: the estimate alone."""
    import sys

    from lmprof.cli import main as lmprof_main

    return lmprof_main(["estimate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
