"""What lmprof knows about one operation, in one place: the description type, torch-free.

An op's description (a subclass of `Op`, written beside the op's code) answers, at a `Site` (the
model's shape and where it runs):
- `cost(site, x)`: what its forward makes (`Tensor`s, each with the FLOPs and the aten op that
  made it), which of them the backward keeps (so: which selective checkpointing keeps, the
  outputs of the ops in `model_ops.SELECTIVE_SAVES`), its backward's FLOPs and short-lived
  buffers, what its kernels compute again;
- `params(args)`: its parameters;
and, without a site, from a torch.profiler trace:
- `group`, `keys`, `operators`: which kernels and operators of a trace are its (the one
  classifier, `ops.catalog.classify`, reads these);
- `trace_work(operator, dims, types, group)`: the FLOPs (compute groups) or HBM bytes (memory
  groups) of one call of its operator, from the shapes the trace recorded;
- `unavailable(device)`: why this machine cannot run it, or None.
The memory model, the FLOP count, the roofline and the kernel table loop over descriptions and
hold no per-op knowledge of their own.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any

from lmprof.precision import PRECISIONS

# The groups a trace's kernels are reported under, in table order. Compute-bound groups are
# measured in FLOPs, memory-bound ones in HBM bytes; communication has no limit here.
COMPUTE_GROUPS = ("matmul", "attention")
MEMORY_GROUPS = ("normalisation", "pointwise", "loss", "optimizer", "copies")
GROUPS = (
    "matmul",
    "attention",
    "normalisation",
    "pointwise",
    "loss",
    "optimizer",
    "communication",
    "copies",
)


@dataclass(frozen=True)
class Site:
    """Where an op runs: the model's hyper-parameters (a `ModelArgs`, or anything with its
    fields), the micro-batch, the precision and the device ("cuda" or "cpu"); `padded`: a batch
    with padding (the attention masks exist)."""

    args: Any
    B: int
    T: int
    precision: str
    device: str = "cuda"
    padded: bool = False

    @property
    def N(self) -> int:
        return self.B * self.T

    @property
    def d(self) -> int:
        return int(self.args.d_model)

    @property
    def e(self) -> int:
        """Bytes of an activation element: the autocast dtype's, else fp32's."""
        return PRECISIONS[self.precision].bytes

    @property
    def autocast(self) -> bool:
        return PRECISIONS[self.precision].autocast is not None

    @property
    def stream(self) -> int:
        """Bytes of a residual-stream element: the activations' with residual_stream compute,
        else fp32's (the embedding's, to which every residual add promotes)."""
        compute = getattr(self.args, "residual_stream", "fp32") == "compute"
        return self.e if compute else 4

    @property
    def cuda(self) -> bool:
        return self.device != "cpu"

    @property
    def dropout(self) -> float:
        return float(self.args.dropout)

    @property
    def vocab(self) -> int:
        """The embedding's rows: the vocabulary padded to vocab_multiple."""
        v, m = int(self.args.vocab_size), int(getattr(self.args, "vocab_multiple", 1) or 1)
        return (v + m - 1) // m * m


@dataclass
class Tensor:
    """One tensor an op makes in its forward."""

    name: str
    nbytes: int
    itemsize: int  # bytes per element: whether the next matmul under autocast casts it
    saved: bool = False  # kept for the backward (by its op or by one that reads it)
    made_by: str = ""  # the aten op that makes it ("aten.mm.default"): SAC keeps it or not
    flops: int = 0  # FLOPs of making it
    kind: str = "act"  # act | weights (autocast's copies of weights) | loss (the loss's own)
    # Index, in the step list, of the first step that keeps it: it is freed when that step's
    # backward has run (set by `plan.run`).
    kept_from: int | None = None


@dataclass
class Cost:
    """What one op does at one site."""

    tensors: list[Tensor] = field(default_factory=list)  # made by its forward, in order
    output: Tensor | None = None  # what the next op reads; None: its input passes through
    saves_input: bool = False  # it keeps its input (or a view of it) for the backward
    backward_flops: int = 0
    # Computed again inside its own backward kernels (the fused attention's QK^T).
    kernel_recompute_flops: int = 0
    # Forward + backward counted exactly under the causal mask; None: as counted.
    causal_flops: int | None = None
    # The largest short-lived bytes of its backward beyond what it saved (gradient buffers).
    backward_transient: int = 0
    # Its forward's largest moment, re-run under checkpointing, is just before tensors[peak];
    # `alive_at_peak` are alive there though nothing saves them (the raw scores beside the
    # probabilities, the input a view keeps alive). None: no moment worth modelling.
    peak: int | None = None
    alive_at_peak: list[Tensor] = field(default_factory=list)
    # The largest short-lived bytes of its forward under no_grad (the end-of-run evaluation).
    eval_transient: int = 0

    @property
    def forward_flops(self) -> int:
        return sum(t.flops for t in self.tensors)


class Op:
    """The base description; a subclass overrides what its op has."""

    name = "op"
    group = "pointwise"  # the group its kernels are reported under
    keys: tuple[str, ...] = ()  # lower-case substrings of its kernels' or operators' names
    operators: tuple[str, ...] = ()  # the trace's operator names that are its, exactly
    # "module:function" answering why this machine cannot run it (an optional package), or None.
    availability: str | None = None

    def cost(self, site: Site, x: Tensor | None) -> Cost:
        """What the op does at `site` reading `x` (the previous op's output)."""
        return Cost()

    def params(self, args: Any) -> int:
        """Its parameters (a tied weight counts where it is owned)."""
        return 0

    def buffers(self, args: Any) -> int:
        """Bytes of its buffers (not parameters: no gradient, no optimizer state)."""
        return 0

    def claims(self, kernel: str, operator: str) -> bool:
        """A trace's kernel (lower case) launched by `operator` (lower case) is this op's."""
        return operator in self.operators or any(k in kernel or k in operator for k in self.keys)

    def trace_work(self, operator: str, dims: list, types: list, group: str) -> float | None:
        """FLOPs (compute groups) or HBM bytes (memory groups) of one call of `operator` that
        `group`'s kernels do, from the trace's shapes; None when unknown."""
        if group in MEMORY_GROUPS:
            return eager_bytes(operator, dims, types)
        return None

    def unavailable(self, device: Any = None) -> str | None:
        """Why this machine cannot run the op, or None."""
        if not self.availability:
            return None
        module, function = self.availability.split(":")
        return getattr(importlib.import_module(module), function)()


@dataclass
class Ran:
    """One op of a plan, run at a site."""

    op: Op
    cost: Cost


def run(ops: list[Op], site: Site, x: Tensor | None) -> list[Ran]:
    """The ops in order, each reading the previous one's output (the first reads `x`), with
    every tensor marked saved when an op keeps it, and `kept_from` set to the first op that
    does (its backward, the last of theirs to run, frees it)."""
    out: list[Ran] = []

    def keep(t: Tensor, i: int) -> None:
        t.saved = True
        if t.kept_from is None:
            t.kept_from = i

    for i, op in enumerate(ops):
        cost = op.cost(site, x)
        if cost.saves_input and x is not None:
            keep(x, i)
        for t in cost.tensors:
            if t.saved:
                keep(t, i)
        out.append(Ran(op, cost))
        x = cost.output if cost.output is not None else x
    return out


# ---- shapes in a trace -----------------------------------------------------------------------

DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::half": 2,
    "c10::bfloat16": 2,
    "half": 2,
    "bfloat16": 2,
    "long int": 8,
    "long": 8,
    "int": 4,
    "short int": 2,
    "bool": 1,
    "unsigned char": 1,
    "signed char": 1,
    "c10::float8_e4m3fn": 1,
    "c10::float8_e5m2": 1,
    "c10::complex<float>": 8,
}

# The trace records a TensorList's shapes but not its dtype: the optimizer's lists are lmprof's
# parameters, gradients and AdamW states, all fp32 (autocast keeps the master weights in fp32).
TENSOR_LIST_BYTES = 4


def numel(dims: Any) -> int:
    if not isinstance(dims, list) or not all(isinstance(d, int) for d in dims):
        return 0
    return math.prod(dims) if dims else 1


def tensor_bytes(dims: list, types: list) -> list[int]:
    """Bytes of each tensor argument (0 for scalars and unknown dtypes); a TensorList counts the
    sum of its tensors."""
    out = []
    for i, d in enumerate(dims):
        t = (types[i] if i < len(types) else "").lower()
        if t == "tensorlist" and isinstance(d, list):
            out.append(sum(numel(x) for x in d if isinstance(x, list)) * TENSOR_LIST_BYTES)
            continue
        size = DTYPE_BYTES.get(t, 0)
        out.append(numel(d) * size if size and isinstance(d, list) and d else 0)
    return out


def eager_bytes(operator: str, dims: list, types: list) -> float | None:
    """HBM bytes of a memory-bound operator from its shapes: an Inductor kernel's launch record
    lists its inputs and outputs (each read or written once); an eager operator reads its inputs
    and writes one output the size of its largest input."""
    sizes = tensor_bytes(dims, types)
    if not any(sizes):
        return None
    if operator.startswith("triton_"):
        return float(sum(sizes))
    return float(sum(sizes) + max(sizes))
