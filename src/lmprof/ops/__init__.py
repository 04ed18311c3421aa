"""Fused operators of the training step (custom ops: torch.compile calls them as they are)."""

# The target of a PAD position: the loss and the accuracy skip it (F.cross_entropy's default).
IGNORE_INDEX = -100


def import_problem(*modules: str) -> str | None:
    """Why `modules` do not import, in one short line, or None. An optional kernel package
    (flash-attn-4, quack) can fail with any exception, not only ImportError: the CUTLASS DSL
    under both raises its own when it cannot load its libraries."""
    import importlib

    try:
        for name in modules:
            importlib.import_module(name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first}"[:160]
    return None
