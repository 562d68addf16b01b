"""Tests of idlkit.sim.lasso_batch: all SIM rows of P(kappa) at once by FISTA (thesis eq. 3.4, Alg. 2).

The reference is the exact bisection solver :func:`idlkit.sim.lasso.constrained_lasso_rows`.
"""

from __future__ import annotations

import numpy as np
import pytest

from idlkit.errors import ConfigurationError, IdlError, NonFiniteError, ShapeError
from idlkit.sim.lasso import constrained_lasso_rows
from idlkit.sim.lasso_batch import BatchLassoResult, constrained_lasso_batch


def _problem(seed: int, m: int, n: int, rows: int):
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((m, n))
    Wt = rng.standard_normal((rows, n)) * (rng.random((rows, n)) < 0.5)
    Z = Wt @ F.T + 0.1 * rng.standard_normal((rows, m))
    return F.T @ F, Z @ F, rng


def _agree(G, C, kappa, mask, rel=1e-7):
    a = constrained_lasso_batch(G, C, kappa, mask)
    b = constrained_lasso_rows(G, C, kappa, mask)
    pen = np.ones(G.shape[0], bool) if mask is None else mask
    kap = np.broadcast_to(np.asarray(kappa, float), (C.shape[0],))
    assert isinstance(a, BatchLassoResult)
    assert a.W.shape == C.shape
    # objective: ours is never worse than the exact solver by more than rel (it may be better
    # where the exact solver only reaches "approximate")
    scale = np.maximum(np.abs(b.objective), 1e-12)
    assert np.all((a.objective - b.objective) / scale <= rel), (a.objective - b.objective) / scale
    ok = np.array([s in ("optimal", "inactive") for s in b.status])
    assert np.all(np.abs(a.objective - b.objective)[ok] / scale[ok] <= rel)
    l1 = np.sum(np.abs(a.W[:, pen]), axis=1)
    assert np.allclose(l1, a.l1)
    assert np.all(l1 <= kap + 1e-9)
    recomputed = 0.5 * np.einsum("ij,ij->i", a.W @ G, a.W) - np.einsum("ij,ij->i", C, a.W)
    assert np.allclose(recomputed, a.objective, rtol=1e-12, atol=1e-12)
    return a, b


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kappa", [0.05, 0.7, 3.0])
def test_agrees_with_bisection_all_constrained(seed: int, kappa: float) -> None:
    G, C, _ = _problem(seed, 50, 20 + seed, 7)
    a, _ = _agree(G, C, kappa, None)
    assert set(a.status) <= {"optimal", "inactive"}


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_bisection_masked_kappa_per_row(seed: int) -> None:
    G, C, rng = _problem(10 + seed, 60, 30, 9)
    mask = np.zeros(30, bool)
    mask[: 8 + seed] = True  # the A-part of eq. 3.4
    kappa = rng.uniform(0.05, 2.0, size=9)
    a, _ = _agree(G, C, kappa, mask)
    assert set(a.status) <= {"optimal", "inactive"}
    assert np.all(a.kkt[np.array(a.status) == "optimal"] <= 1e-6)


def test_singular_gram() -> None:
    G, C, _ = _problem(3, 12, 25, 5)  # rank 12 < 25
    for kappa in (0.1, 1.0):
        _agree(G, C, kappa, None)
    mask = np.zeros(25, bool)
    mask[:18] = True  # 7 free coordinates: G_UU invertible, Schur complement singular
    _agree(G, C, 0.3, mask)


def test_free_coordinates_absorb_everything_is_inactive() -> None:
    G, C, _ = _problem(4, 10, 30, 4)  # 15 free coordinates span all 10 samples
    mask = np.zeros(30, bool)
    mask[:15] = True
    a = constrained_lasso_batch(G, C, 0.5, mask)
    assert a.status == ("inactive",) * 4
    P = np.linalg.pinv(G)
    ls = C @ P
    f_ls = 0.5 * np.einsum("ij,ij->i", ls @ G, ls) - np.einsum("ij,ij->i", C, ls)
    assert np.allclose(a.objective, f_ls, rtol=1e-9)


def test_inactive_constraint_returns_least_squares() -> None:
    G, C, _ = _problem(5, 80, 10, 6)
    a, b = _agree(G, C, 1e6, None)
    assert a.status == ("inactive",) * 6 == b.status
    assert np.allclose(a.W, b.W, atol=1e-9)
    assert np.all(a.iterations == 0)


def test_mixed_active_and_inactive_rows() -> None:
    G, C, _ = _problem(6, 60, 15, 4)
    ls = C @ np.linalg.inv(G)
    l1 = np.sum(np.abs(ls), axis=1)
    kappa = np.array([2 * l1[0], 0.5 * l1[1], 2 * l1[2], 0.1 * l1[3]])
    a, _ = _agree(G, C, kappa, None)
    assert a.status[0] == a.status[2] == "inactive"
    assert a.status[1] == a.status[3] == "optimal"
    assert np.allclose(a.l1[[1, 3]], kappa[[1, 3]], rtol=1e-9)


def test_fallback_path() -> None:
    G, C, _ = _problem(7, 60, 25, 5)
    a = constrained_lasso_batch(G, C, 3.0, max_iter=2)
    fb = np.array([s == "fallback" for s in a.status])
    assert fb.sum() >= 1 and set(a.status) <= {"fallback", "optimal"}  # a vertex may be reached early
    assert np.all(np.isnan(a.gap[fb]))
    b = constrained_lasso_rows(G, C, 3.0)
    assert np.allclose(a.objective, b.objective, rtol=1e-9)
    c = constrained_lasso_batch(G, C, 3.0, max_iter=2, polish=False)
    assert [s == "max_iter" for s in c.status] == list(fb)
    assert np.all(c.l1 <= 3.0 + 1e-12)  # feasible even when unfinished
    assert np.all(c.objective >= b.objective - 1e-12)


def test_no_constrained_coordinate_and_empty_rows() -> None:
    G, C, _ = _problem(8, 40, 8, 3)
    a = constrained_lasso_batch(G, C, 0.1, np.zeros(8, bool))
    assert np.allclose(a.W, C @ np.linalg.inv(G), atol=1e-9)
    e = constrained_lasso_batch(G, np.zeros((0, 8)), 0.1)
    assert e.W.shape == (0, 8) and e.status == ()


def test_bad_input() -> None:
    G, C, _ = _problem(9, 30, 6, 2)
    with pytest.raises(ShapeError):
        constrained_lasso_batch(G[:, :5], C, 1.0)
    with pytest.raises(ShapeError):
        constrained_lasso_batch(G, C[:, :5], 1.0)
    with pytest.raises(ShapeError):
        constrained_lasso_batch(G, C[0], 1.0)
    with pytest.raises(ShapeError):
        constrained_lasso_batch(G, C, [1.0, 1.0, 1.0])
    with pytest.raises(ConfigurationError):
        constrained_lasso_batch(G, C, 0.0)
    with pytest.raises(ConfigurationError):
        constrained_lasso_batch(G, C, [1.0, -1.0])
    with pytest.raises(ConfigurationError):
        constrained_lasso_batch(G, C, "a")
    with pytest.raises(ConfigurationError):
        constrained_lasso_batch(G, C, 1.0, np.ones(6))
    with pytest.raises(ShapeError):
        constrained_lasso_batch(G, C, 1.0, np.ones(5, bool))
    with pytest.raises(ConfigurationError):
        constrained_lasso_batch(G, C, 1.0, max_iter=0)
    with pytest.raises(ConfigurationError):
        constrained_lasso_batch(G, C, 1.0, tol=float("nan"))
    bad = C.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        constrained_lasso_batch(G, bad, 1.0)
    with pytest.raises(IdlError):
        constrained_lasso_batch(G + np.triu(np.ones((6, 6)), 1), C, 1.0)  # not symmetric
