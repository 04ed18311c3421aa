"""The memory model's estimate as a readable table (`lmprof estimate`, the run's log)."""

from __future__ import annotations

from lmprof.profiling.memory_model import GiB, MemoryEstimate, MiB


def _size(n: float) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:8.2f} GiB"
    return f"{n / MiB:8.1f} MiB"


def _flops(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:#.3g}".rstrip(".") + f" {unit}"
    return f"{n:#.3g}".rstrip(".") + " FLOP"


_LABELS = {
    "parameters": "parameters (fp32)",
    "gradients": "gradients (fp32)",
    "optimizer_states": "optimizer states (AdamW, 2 x fp32)",
    "autocast_weights": "autocast weight copies",
    "activations": "activations saved by the blocks",
    "recompute": "one block recomputed (checkpointing)",
    "embedding_and_head": "embedding / final norm / head inputs",
    "logits_and_loss": "logits and loss buffers",
    "transient": "short-lived (loss block, backward)",
    "batch": "batches (current + prefetched)",
    "workspace": "cuBLAS workspaces, allocator rounding",
    "ddp_buckets": "DDP gradient buckets",
}


def format_estimate(est: MemoryEstimate) -> str:
    """A readable table: the breakdown at the peak, the other phases, FLOPs per token/step."""
    lines = [
        f"Predicted memory of one training step: B={est.batch_size} T={est.seq_len} "
        f"{est.precision} attention={est.attention} checkpointing={est.checkpointing}"
        + (f" x{est.world_size} {est.parallelism}" if est.world_size > 1 else ""),
        f"parameters: {est.n_params:,} (vocabulary {est.vocab_size} padded to {est.padded_vocab})",
        "",
        f"At the peak ({est.peak_phase}):",
    ]
    for key, value in est.breakdown().items():
        if value:
            lines.append(f"  {_LABELS[key]:<40} {_size(value)}")
    lines.append(f"  {'= predicted max_memory_allocated':<40} {_size(est.predicted_peak_bytes)}")
    reserve = f"caching allocator reserve (x{est.allocator_factor:.2f})"
    lines.append(f"  {reserve:<40} {_size(est.predicted_reserved_bytes)}")
    lines.append(f"  {'CUDA context (NVML only)':<40} {_size(est.cuda_context_bytes)}")
    lines.append(f"  {'= predicted nvidia-smi usage':<40} {_size(est.predicted_device_bytes)}")
    lines.append("")
    lines.append("Other moments of the step:")
    for name, total in est.phases.items():
        if name != est.peak_phase:
            lines.append(f"  {name:<40} {_size(total)}")
    lines.append(f"  {'activations per block':<40} {_size(est.activations_per_layer)}")
    if est.flops is not None:
        f = est.flops
        lines += [
            "",
            f"FLOPs per token: {_flops(f.model_flops_per_token)} model, "
            f"{_flops(f.hardware_flops_per_token)} hardware "
            f"(exact causal attention: {_flops(f.breakdown['model_causal'])})",
            f"FLOPs per step ({est.tokens_per_step:,} tokens): "
            f"{_flops(f.per_step(est.tokens_per_step))} model, "
            f"{_flops(f.hardware_per_step(est.tokens_per_step))} hardware",
            f"convention: {f.convention}",
        ]
    for note in est.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
