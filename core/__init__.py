"""flowsuite.core: invertible layers, distributions, the likelihood trainer and checkpoints."""

from flowsuite.core.bijection import Bijection, Compose, Inverse, sum_except_batch
from flowsuite.core.errors import CheckpointError, FlowsuiteError

__all__ = ["Bijection", "Compose", "Inverse", "sum_except_batch", "FlowsuiteError",
           "CheckpointError"]
