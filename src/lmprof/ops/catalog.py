"""Every op description lmprof knows, and the one classifier of a trace's kernels; torch-free.

The model's ops are described beside their code (model_ops.py, attention_kernels.py,
ops/losses.py); the step's other work is described here: the optimizer, communication, copies,
and `Pointwise`, what every kernel no description claims is counted as. The roofline
(profiling/roofline.py) and the in-run kernel table (train/instruments.py) both classify with
`classify`, and take a traced operator's work from `work`.
"""

from __future__ import annotations

from lmprof import attention_kernels
from lmprof.model_ops import LayerNorm, Linear
from lmprof.ops import losses
from lmprof.ops.spec import Op, tensor_bytes

# A trace's own event categories for copies and fills: copies whatever launched them.
COPY_CATEGORIES = ("gpu_memcpy", "gpu_memset")


class Communication(Op):
    """NCCL and gloo collectives: no limit here (no gain is claimed for them)."""

    name = group = "communication"
    keys = ("nccl", "all_reduce", "allreduce", "reduce_scatter", "all_gather", "gloo")


class AdamW(Op):
    """The fused AdamW step (and the foreach ops of gradient clipping), over fp32 parameters,
    gradients and states."""

    name = group = "optimizer"
    keys = ("adam", "multi_tensor", "foreach", "optimizer", "sgd")

    def trace_work(self, operator: str, dims: list, types: list, group: str) -> float | None:
        written = _written_lists(operator)
        sizes = tensor_bytes(dims, types)
        if written and any(sizes):  # in place: each list read once, the updated ones written
            return float(sum(sizes) + sum(sizes[i] for i in written if i < len(sizes)))
        return super().trace_work(operator, dims, types, group)

    @staticmethod
    def bytes_per_step(n_params: int, clipping: bool, in_step: bool = False) -> float:
        """HBM bytes of one step: it reads params, grads, exp_avg and exp_avg_sq and writes
        params, exp_avg and exp_avg_sq (7 x 4 B a parameter); gradient clipping adds the
        norm's read and the scaling's read and write (3 x 4 B), or, done in the step
        (optim.clip_in_step), the norm's read and the step's write of the scaled gradients
        (2 x 4 B). A trace cannot say this itself: it records a TensorList's shapes as empty."""
        clip = (2 if in_step else 3) if clipping else 0
        return float(n_params) * 4 * (7 + clip)


def _written_lists(op: str) -> tuple[int, ...]:
    """Which TensorList arguments an optimizer operator writes back (it reads them all): fused
    Adam/AdamW update params, exp_avg and exp_avg_sq in place; an in-place foreach op its first."""
    name = op.lower()
    if "_fused_adam" in name:
        return (0, 2, 3)
    if "_foreach_" in name and name.endswith("_"):
        return (0,)
    return ()


class Copies(Op):
    """Copies, casts and fills."""

    name = group = "copies"
    keys = ("copy", "memcpy", "memset", "aten::cat", "aten::clone", "contiguous", "_to_copy")

    @staticmethod
    def transfer_bytes(kernel: str, nbytes: float) -> float | None:
        """HBM bytes of a memcpy (read and written) or memset event; None for a transfer over
        PCIe or within the host (not the HBM limit)."""
        name = kernel.lower()
        if "htod" in name or "dtoh" in name or "htoh" in name:
            return None
        return float(nbytes) * (2 if "memcpy" in name else 1)


class Pointwise(Op):
    """Everything no other description claims: elementwise and reduction kernels."""

    name = group = "pointwise"


COPIES = Copies()
POINTWISE = Pointwise()

# In the order they claim a kernel: the first whose names match (communication and attention
# before the GEMMs they may launch, the GEMMs before what launched them).
CATALOG: tuple[Op, ...] = (
    Communication(),
    *attention_kernels.operator_ops(),
    Linear(),
    AdamW(),
    *(cls() for cls in losses.LOSSES.values()),
    LayerNorm(),
    COPIES,
)


def classify(kernel: str, operator: str = "", category: str = "kernel") -> Op:
    """The description a trace's kernel (or, on a CPU, operator) is counted under, from its name
    and the operator that launched it."""
    if category in COPY_CATEGORIES:
        return COPIES
    k, o = kernel.lower(), operator.lower()
    return next((op for op in CATALOG if op.claims(k, o)), POINTWISE)


def owner(operator: str) -> Op | None:
    """The description that names `operator` as its own, if any."""
    o = operator.lower()
    return next((op for op in CATALOG if o in op.operators), None)


def work(counted_as: Op, operator: str, dims: list, types: list) -> float | None:
    """The work of `counted_as`'s group in one call of `operator`: the operator's own
    description answers (it knows its layout and what it moves), else the group's."""
    mine = owner(operator) or counted_as
    return mine.trace_work(operator, dims, types, counted_as.group)
