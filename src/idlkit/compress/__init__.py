"""Model compression (paper 000 §5, paper 001 §6): low-rank models and ``low_rank`` (§5.3),
exact pruning of states and inputs (§5.1-5.2) with the explicit states split out of the
fixed point (``StagedImplicitModel``), magnitude pruning, architecture optimisation by
group-proximal training (``shrink``, paper 001 §6.4); every compression can report a certified
bound on how far it moves the outputs (``compression_bound``, Thm 5.1 extended, §5.4).
"""

from .architecture import ShrinkReport, column_group_prox_, shrink
from .lowrank import (
    LOWRANK_SOLVERS,
    LowRankApproximation,
    LowRankCertificate,
    LowRankFunction,
    LowRankImplicitModel,
)
from .magnitude import CompressionBound, MagnitudePruneReport, compression_bound, magnitude_prune
from .prune import FeatureSelection, PruneReport, prune_inputs, prune_states, selected_features
from .rank import RankReport, low_rank, nuclear_norm, rank_step, singular_value_threshold
from .staged import StagedImplicitModel, Staging, stage_partition

__all__ = [
    "shrink",
    "ShrinkReport",
    "column_group_prox_",
    "magnitude_prune",
    "MagnitudePruneReport",
    "compression_bound",
    "CompressionBound",
    "prune_states",
    "prune_inputs",
    "selected_features",
    "PruneReport",
    "FeatureSelection",
    "LOWRANK_SOLVERS",
    "LowRankApproximation",
    "LowRankCertificate",
    "LowRankFunction",
    "LowRankImplicitModel",
    "low_rank",
    "RankReport",
    "nuclear_norm",
    "rank_step",
    "singular_value_threshold",
    "StagedImplicitModel",
    "Staging",
    "stage_partition",
]
