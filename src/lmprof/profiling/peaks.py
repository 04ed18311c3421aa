"""Peak dense FLOP/s per GPU and per precision the matmuls run in, for MFU.

Numbers are the vendor datasheets' dense figures (never the 2:4-sparsity ones, which NVIDIA
prints as the headline: dense = half of those). "fp32" is plain, non-tensor-core FP32; "tf32",
"bf16" and "fp16" are tensor-core rates with FP32 accumulation, which is what PyTorch's matmuls
use (GeForce parts run fp16/bf16 with FP32 accumulation at half their FP16-accumulate rate).
Sources:
- A100: NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe, 40/80 GB: same peaks).
- H100 SXM / PCIe / NVL: NVIDIA H100 Tensor Core GPU datasheet.
- H200 (SXM) and H200 NVL: NVIDIA H200 Tensor Core GPU datasheet (H200 SXM = H100 SXM rates).
- GH200: NVIDIA GH200 Grace Hopper Superchip datasheet (H100 SXM rates).
- B200: NVIDIA HGX B200 datasheet (per GPU: FP32 75 TF; TF32 2.2 PF, BF16/FP16 4.5 PF sparse).
- L4, L40S: their NVIDIA datasheets.
- A10G: NVIDIA publishes no A10G datasheet (AWS's variant of the A10); the A10 datasheet's
  rates are used.
- RTX 4090: NVIDIA Ada Lovelace architecture whitepaper, appendix table (FP16/BF16 tensor with
  FP32 accumulate 165.2 TF dense, TF32 82.6 TF dense, FP32 82.6 TF).
- RTX 3090: NVIDIA Ampere GA102 architecture whitepaper (FP16/BF16 tensor with FP32 accumulate
  35.6 TF dense, TF32 17.8 TF dense, FP32 35.6 TF).
- V100 (SXM2 / PCIe / V100S), T4: their NVIDIA datasheets. No tf32 or bf16 tensor cores: tf32
  runs at the fp32 rate (the flag has no effect there) and bf16 is None (no hardware bf16).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("lmprof")

T = 1e12

# name -> {precision: FLOP/s}
PEAKS: dict[str, dict[str, float | None]] = {
    "A100": {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T},
    "H100 SXM": {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T},
    "H100 PCIe": {"fp32": 51 * T, "tf32": 378 * T, "bf16": 756.5 * T, "fp16": 756.5 * T},
    "H100 NVL": {"fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T, "fp16": 835.5 * T},
    "H200": {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T},
    "H200 NVL": {"fp32": 60 * T, "tf32": 417.5 * T, "bf16": 835.5 * T, "fp16": 835.5 * T},
    "GH200": {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T, "fp16": 989.5 * T},
    "B200": {"fp32": 75 * T, "tf32": 1100 * T, "bf16": 2250 * T, "fp16": 2250 * T},
    "L4": {"fp32": 30.3 * T, "tf32": 60 * T, "bf16": 121 * T, "fp16": 121 * T},
    "L40S": {"fp32": 91.6 * T, "tf32": 183 * T, "bf16": 362 * T, "fp16": 362 * T},
    "A10G": {"fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T},
    "A10": {"fp32": 31.2 * T, "tf32": 62.5 * T, "bf16": 125 * T, "fp16": 125 * T},
    "RTX 4090": {"fp32": 82.6 * T, "tf32": 82.6 * T, "bf16": 165.2 * T, "fp16": 165.2 * T},
    "RTX 3090": {"fp32": 35.6 * T, "tf32": 17.8 * T, "bf16": 35.6 * T, "fp16": 35.6 * T},
    "V100 SXM2": {"fp32": 15.7 * T, "tf32": 15.7 * T, "bf16": None, "fp16": 125 * T},
    "V100 PCIe": {"fp32": 14 * T, "tf32": 14 * T, "bf16": None, "fp16": 112 * T},
    "V100S PCIe": {"fp32": 16.4 * T, "tf32": 16.4 * T, "bf16": None, "fp16": 130 * T},
    "T4": {"fp32": 8.1 * T, "tf32": 8.1 * T, "bf16": None, "fp16": 65 * T},
}

# Matched in order against the lower-cased name torch.cuda.get_device_name reports, e.g.
# 'NVIDIA H200', 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-80GB', 'NVIDIA GeForce RTX 4090',
# 'Tesla V100-SXM2-16GB'. Specific names come before the names they contain (GH200 before
# H200, H100 NVL before H100); an unlisted relative (RTX 3090 Ti, L40) matches nothing, and so
# does a MIG slice (a fraction of the GPU's SMs, so not the whole GPU's peak).
_PATTERNS: list[tuple[str, str]] = [
    (r"\bgh200\b", "GH200"),
    (r"\bh200\b.*\bnvl\b", "H200 NVL"),
    (r"\bh200\b", "H200"),
    (r"\bh100\b.*\bnvl\b", "H100 NVL"),
    (r"\bh100\b.*\bpcie\b", "H100 PCIe"),
    (r"\bh100\b.*\b(sxm\d?|hbm3e?)\b", "H100 SXM"),
    (r"\bh100\b$", "H100 SXM"),
    (r"\ba100\b", "A100"),
    (r"\bb200\b", "B200"),
    (r"\bl40s\b", "L40S"),
    (r"\bl4\b", "L4"),
    (r"\ba10g\b", "A10G"),
    (r"\ba10\b", "A10"),
    (r"\brtx 4090\b(?!.*\b(ti|laptop|d)\b)", "RTX 4090"),
    (r"\brtx 3090\b(?!.*\b(ti|laptop)\b)", "RTX 3090"),
    (r"\bv100s\b", "V100S PCIe"),
    (r"\bv100\b.*\bpcie\b", "V100 PCIe"),
    (r"\bv100\b", "V100 SXM2"),
    (r"\bt4\b", "T4"),
]

MATMUL_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_warned: set[str] = set()


def gpu_key(device_name: str) -> str | None:
    """The table's name for a device name as torch reports it, or None."""
    name = re.sub(r"[\s_]+", " ", device_name.lower().replace("-", " ")).strip()
    if re.search(r"\bmig\b", name):
        return None
    for pattern, key in _PATTERNS:
        if re.search(pattern, name):
            return key
    return None


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU for matmuls in `precision` (fp32 | tf32 | bf16 | fp16).

    None for the CPU, for a GPU not in the table (one warning per name, never another GPU's
    number), and for a precision the GPU has no hardware for (bf16 on V100/T4).
    """
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    if not device_name or device_name.lower() == "cpu":
        return None
    key = gpu_key(device_name)
    if key is None:
        if device_name not in _warned:
            _warned.add(device_name)
            log.warning(
                "no peak FLOP/s known for GPU '%s': MFU is left empty "
                "(profile.peak=measured times a matmul instead)",
                device_name,
            )
        return None
    return PEAKS[key][precision]


def matmul_precision(cfg_precision: str, allow_tf32: bool | None = None) -> str:
    """The precision the matmuls actually run in for `system.precision`.

    bf16/fp16 autocast runs them in bf16/fp16. fp32 runs them in tf32 when PyTorch allows it
    (torch.backends.cuda.matmul.allow_tf32, or float32_matmul_precision 'high'/'medium'):
    `allow_tf32` None reads that from torch if torch is already imported, else assumes IEEE fp32
    (lmprof's own setting for precision=fp32). tf32 is tf32.
    """
    if cfg_precision in ("bf16", "fp16", "tf32"):
        return cfg_precision
    if cfg_precision != "fp32":
        raise ValueError(f"unknown precision {cfg_precision!r}")
    if allow_tf32 is None:
        allow_tf32 = _torch_allows_tf32()
    return "tf32" if allow_tf32 else "fp32"


def _torch_allows_tf32() -> bool:
    import sys

    torch: Any = sys.modules.get("torch")
    if torch is None:
        return False
    if torch.backends.cuda.matmul.allow_tf32:
        return True
    return torch.get_float32_matmul_precision() in ("high", "medium")


def measure_peak_flops(
    device: Any, dtype: Any, n: int = 8192, iters: int = 10, warmup: int = 3
) -> float:
    """Achieved FLOP/s of an n x n x n matmul: the median of `iters` timings with CUDA events
    after `warmup` products, on random data (zeros run faster than real data on some GPUs)."""
    import statistics

    import torch

    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("measure_peak_flops needs a CUDA device")
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b, out
    return 2.0 * n**3 / statistics.median(times)
