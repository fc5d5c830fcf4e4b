"""flowsuite.core: invertible layers, distributions, the likelihood trainer and checkpoints.

Every bijection maps data to latent in ``forward`` and back in ``inverse``; both return the
transformed tensor and a log-determinant of shape ``(B,)``.
"""

from flowsuite.core.autoregressive import MADE, MaskedAutoregressive
from flowsuite.core.bijection import Bijection, Compose, Inverse, sum_except_batch
from flowsuite.core.checkpoint import (
    CheckpointInfo,
    Configurable,
    build_model,
    load_model,
    load_training_state,
    load_weights,
    read_metadata,
    register_model,
    registered_models,
    save_model,
    save_training_state,
)
from flowsuite.core.conditioners import MLP, ChannelMLP
from flowsuite.core.coupling import AdditiveCoupling, AffineCoupling, Coupling, SplineCoupling
from flowsuite.core.distributions import (
    ContextMixture,
    DiagonalNormal,
    Distribution,
    StandardNormal,
)
from flowsuite.core.elementwise import Additive, Affine, RationalQuadraticSpline
from flowsuite.core.errors import CheckpointError, FlowsuiteError
from flowsuite.core.flat import flatten_parameters, is_flattened, unflatten_parameters
from flowsuite.core.flow import Flow
from flowsuite.core.linear import InvertibleLinear, Permute
from flowsuite.core.models import DensityModel, maf, nsf, realnvp
from flowsuite.core.multiscale import EarlySplit, Squeeze
from flowsuite.core.normalization import ActNorm
from flowsuite.core.trainer import FitSummary, TrainConfig, Trainer, TrainingDiverged

__all__ = [
    "CheckpointInfo", "Configurable", "DensityModel", "FitSummary", "TrainConfig", "Trainer",
    "TrainingDiverged", "build_model", "load_model", "load_training_state", "load_weights", "maf",
    "flatten_parameters", "is_flattened", "nsf", "read_metadata", "realnvp", "register_model",
    "registered_models", "save_model", "save_training_state", "unflatten_parameters",
    "ActNorm", "Additive", "AdditiveCoupling", "Affine", "AffineCoupling", "Bijection",
    "ChannelMLP", "CheckpointError", "Compose", "ContextMixture", "Coupling", "DiagonalNormal",
    "Distribution",
    "EarlySplit", "Flow", "FlowsuiteError", "Inverse", "InvertibleLinear", "MADE", "MLP",
    "MaskedAutoregressive", "Permute", "RationalQuadraticSpline", "SplineCoupling", "Squeeze",
    "StandardNormal", "sum_except_batch",
]
