"""pytest configuration of the idlkit test suite (hypothesis profile, fixtures).

Reference implementations shared by several files live in ``_ref.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "idlkit",
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
    derandomize=True,  # the same examples on every run: failures reproduce, no flakiness
)
settings.load_profile("idlkit")

# the tests use tiny matrices: extra OpenMP/BLAS threads only add contention (on a
# loaded 2-core machine a 6x6 batched torch.linalg.solve took ~4 ms with 2 threads)
torch.set_num_threads(1)
try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:  # pragma: no cover - optional
    pass

# make ``_ref`` importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
