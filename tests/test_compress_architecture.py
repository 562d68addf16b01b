"""Architecture optimisation (idlkit.compress.shrink): the group prox zeroes whole columns of
(A; C) exactly, the removal is exact, and a larger weight gives fewer states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
from idlkit.compress import column_group_prox_, shrink
from idlkit.errors import ConfigurationError


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(512, 8, generator=g)
    y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.5).long()
    return X, y


def test_prox_is_the_group_soft_threshold():
    torch.manual_seed(0)
    m = idl.ImplicitModel(3, 6, 2, dtype=torch.float64)
    N = torch.cat([m.A.detach(), m.C.detach()]).numpy().copy()
    norms = np.linalg.norm(N, axis=0)
    t = float(np.median(norms))
    zero = column_group_prox_(m, t)
    ref = N * np.maximum(0.0, 1.0 - t / norms)[None, :]  # written out: (1 - t / ||v||)_+ v
    np.testing.assert_allclose(torch.cat([m.A.detach(), m.C.detach()]).numpy(), ref, rtol=1e-12, atol=0)
    assert zero == int((norms <= t).sum())


def test_shrink_removes_states_exactly_and_more_with_a_larger_weight():
    X, y = _data()
    sizes = []
    for w in (0.0, 1.0, 3.0):
        torch.manual_seed(1)
        m = idl.ImplicitModel(8, 40, 3)
        small, rep = shrink(m, (X, y), weight=w, epochs=10, lr=1e-2)
        with torch.no_grad():
            assert float((small(X) - m(X)).abs().max()) <= 1e-4  # float32 solver tolerance
        assert rep.n_after == small.hidden <= rep.n_before - rep.zero_columns
        sizes.append(rep.n_after)
        assert small.certificate().holds["inf"]
    assert sizes[0] == 40 and sizes[2] < sizes[1] <= 40 and sizes[2] < 30


def test_shrink_bad_input():
    X, y = _data()
    with pytest.raises(ConfigurationError, match="weight"):
        shrink(idl.ImplicitModel(8, 5, 3), (X, y), weight=-1.0)
    with pytest.raises(ConfigurationError, match="ImplicitModel"):
        shrink(torch.nn.Linear(8, 3), (X, y))
    sparse = idl.ImplicitModel.from_matrices(
        *(
            M.to_sparse_csr()
            for M in (torch.zeros(4, 4), torch.ones(4, 8), torch.ones(3, 4), torch.ones(3, 8))
        )
    )
    with pytest.raises(ConfigurationError, match="sparse"):
        shrink(sparse, (X, y))


def test_shrink_reports_a_certified_bound_that_holds():
    X, y = _data()
    torch.manual_seed(2)
    m = idl.ImplicitModel(8, 30, 3, dtype=torch.float64, tol=1e-12)
    original = __import__("copy").deepcopy(m)
    U = X[:100].double()
    small, rep = shrink(m, (X.double(), y), weight=2.0, epochs=3, lr=1e-2, u=U)
    with torch.no_grad():
        dy = (small(U) - original(U)).abs()
    assert rep.bound is not None and bool((dy <= rep.bound.output + 1e-9).all())
