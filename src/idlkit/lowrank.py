"""Compatibility home of the low-rank model: it lives in :mod:`idlkit.compress.lowrank`.

``from idlkit.lowrank import LowRankImplicitModel`` keeps working; new code imports from
:mod:`idlkit.compress` (paper 000 §5.3).
"""

from .compress.lowrank import (
    LOWRANK_SOLVERS,
    LOWRANK_WELLPOSEDNESS,
    LowRankApproximation,
    LowRankCertificate,
    LowRankFunction,
    LowRankImplicitModel,
)

__all__ = ["LowRankImplicitModel", "LowRankCertificate", "LowRankApproximation",
           "LowRankFunction", "LOWRANK_SOLVERS", "LOWRANK_WELLPOSEDNESS"]
