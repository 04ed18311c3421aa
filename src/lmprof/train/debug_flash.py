"""`debug_flash`: time one training step with each attention kernel before training (the seed
printed this table to show which SDPA backend its run would get)."""

from __future__ import annotations

import logging
import time

import torch

from lmprof import attention_kernels
from lmprof.model import CausalSelfAttention

log = logging.getLogger("lmprof")

# The table's kernels, plus SDPA's math fallback (no config choice, but worth a row here);
# not auto, which is one of the others once the model is built.
_MATH = "math"
KERNELS = (
    *attention_kernels.names_where(
        lambda k: k.sdpa_backend is None and k.name != attention_kernels.AUTO
    ),
    _MATH,
) + (attention_kernels.names_where(lambda k: k.sdpa_backend is not None))


def _set_attention(model: torch.nn.Module, attention: str) -> list[tuple]:
    """Switch every attention layer to `attention`; returns what to restore."""
    from torch.nn.attention import SDPBackend

    name = "MATH" if attention == _MATH else attention_kernels.kernel(attention).sdpa_backend
    backend = None if name is None else getattr(SDPBackend, name)
    saved = []
    for m in model.modules():
        if isinstance(m, CausalSelfAttention):
            saved.append((m, m.attention, m.backend))
            # A forced backend runs under plain sdpa's mask rule; the others keep their own.
            m.attention = attention if backend is None else "sdpa"
            m.backend = backend
    return saved


def time_attention_kernels(trainer) -> list[tuple[str, str]]:
    """(kernel, result) for each kernel: milliseconds of one forward + backward, or why not."""
    model, device = trainer.raw_model, trainer.device
    batch = next(trainer.data.train_batches(trainer.cfg.training.batch_size, seed=0)).to(device)
    results = []
    model.train()
    for kernel in KERNELS:
        saved = _set_attention(model, kernel)
        try:
            times = []
            for _ in range(2):  # the first call pays for kernel selection and caches
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                with trainer.autocast():
                    loss, _ = model(batch.input_ids, batch.targets, batch.attention_mask)
                loss.backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append((time.perf_counter() - t0) * 1e3)
            results.append((kernel, f"{times[-1]:.1f} ms"))
        except (RuntimeError, NotImplementedError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            results.append((kernel, f"not available: {first[:90]}"))
        finally:
            model.zero_grad(set_to_none=True)
            for m, attention, backend in saved:
                m.attention, m.backend = attention, backend
    return results


def log_attention_table(trainer) -> None:
    rows = time_attention_kernels(trainer)
    width = max(len(k) for k, _ in rows)
    lines = [
        f"debug_flash: one forward + backward per attention kernel "
        f"(batch {trainer.cfg.training.batch_size} x {trainer.cfg.seq_len}, "
        f"{trainer.cfg.system.precision}; this run uses '{trainer.cfg.model.attention}')"
    ]
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    log.info("\n".join(lines))
