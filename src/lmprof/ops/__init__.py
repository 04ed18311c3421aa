"""Fused operators of the training step (custom ops: torch.compile calls them as they are)."""

# The target of a PAD position: the loss and the accuracy skip it (F.cross_entropy's default).
IGNORE_INDEX = -100
