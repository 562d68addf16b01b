"""Magnitude pruning (idlkit.compress.magnitude_prune) and its certified error
(compression_bound, Thm 5.1 extended to every matrix): the removed entries / states checked
against an independent sort, the bound tried against the actual change on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
from idlkit.compress import compression_bound, magnitude_prune
from idlkit.errors import ConfigurationError, IdlError, NonFiniteError, ShapeError

F64 = torch.float64


def _model(
    seed: int,
    act: str = "relu",
    wp: str = "inf",
    sparse: bool = False,
    bias: bool = True,
    n: int = 24,
    p: int = 7,
    q: int = 4,
) -> idl.ImplicitModel:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = A * (0.9 / A.abs().sum(1).max())
    B, C, D = (torch.randn(*s, generator=g, dtype=F64) for s in ((n, p), (q, n), (q, p)))
    b = torch.randn(n, generator=g, dtype=F64) if bias else None
    d = torch.randn(q, generator=g, dtype=F64) if bias else None
    if sparse:
        A, B, C, D = (M.to_sparse_csr() for M in (A, B, C, D))
    return idl.ImplicitModel.from_matrices(
        A, B, C, D, b, d, activation=act, wellposedness=wp, kappa=0.95, tol=1e-12, max_iter=5000
    )


def _dense(M: torch.Tensor) -> np.ndarray:
    return (M.to_dense() if M.layout != torch.strided else M).detach().numpy()


def _U(seed: int, m: int = 200, p: int = 7) -> torch.Tensor:
    return 2 * torch.rand(m, p, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.8])
@pytest.mark.parametrize("matrices", [("A", "B", "C", "D"), ("A",), ("B", "C")])
def test_unstructured_removes_exactly_the_smallest_entries(sparsity, matrices):
    m = _model(1)
    small, rep = magnitude_prune(m, sparsity, matrices=matrices)
    vals = np.sort(np.concatenate([np.abs(_dense(getattr(m, k))).ravel() for k in matrices]))
    k = int(np.ceil(sparsity * vals.size - 1e-9))
    thr = vals[k - 1] if k else -1.0
    for name in "ABCD":
        M0, M1 = _dense(getattr(m, name)), _dense(getattr(small, name))
        if name in matrices:
            np.testing.assert_array_equal(M1, np.where(np.abs(M0) > thr, M0, 0.0))
        else:
            np.testing.assert_array_equal(M1, M0)
    assert rep.achieved >= sparsity and rep.achieved < sparsity + 1.0 / vals.size + 1e-12
    assert rep.n_after == rep.n_before == m.hidden
    if sparsity == 0.0:
        U = _U(0)
        with torch.no_grad():
            assert torch.equal(small(U), m(U))


def test_structured_removes_the_weakest_states_exactly():
    m = _model(2)
    small, rep = magnitude_prune(m, 0.25, structured=True)
    score = np.abs(_dense(m.A)).sum(0) + np.abs(_dense(m.C)).sum(0)
    weakest = set(np.argsort(score, kind="stable")[:6].tolist())
    assert weakest <= set(rep.removed_states) and rep.n_after == m.hidden - len(rep.removed_states)
    # equal outputs to the same-size model with those columns zeroed (the exact removal)
    A, C = _dense(m.A).copy(), _dense(m.C).copy()
    cols = sorted(weakest)
    A[:, cols], C[:, cols] = 0.0, 0.0
    ref = idl.ImplicitModel.from_matrices(
        torch.from_numpy(A),
        m.B.detach(),
        torch.from_numpy(C),
        m.D.detach(),
        m.b.detach(),
        m.d.detach(),
        wellposedness="inf",
        kappa=0.95,
        tol=1e-12,
    )
    U = _U(3)
    with torch.no_grad():
        assert float((small(U) - ref(U)).abs().max()) <= 1e-10
    assert rep.achieved == pytest.approx(len(rep.removed_states) / m.hidden)


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_the_certified_bound_is_never_crossed(act, structured, sparse):
    for seed in range(3):
        m = _model(10 + seed, act=act, sparse=sparse, bias=seed != 1)
        U = _U(seed, m=300)
        for s in (0.2, 0.6, 0.9):
            small, rep = magnitude_prune(m, s, structured=structured, u=U)
            with torch.no_grad():
                dy = (small(U) - m(U)).abs()
            # the bound is for exact equilibria; the solvers' (tol 1e-12) round-off is allowed
            assert bool((dy <= rep.bound.output + 1e-9).all()), (act, structured, sparse, seed, s)
            assert rep.bound.pf < 1
            if not structured:  # same state size: the state bound too
                with torch.no_grad():
                    dx = (small.equilibrium(U) - m.equilibrium(U)).abs()
                assert bool((dx <= rep.bound.state + 1e-9).all())


def test_bound_is_zero_for_an_unchanged_model_and_tight_for_a_linear_one():
    m = _model(4)
    U = _U(5)
    b = compression_bound(m, m, U)
    assert float(b.output.max()) <= 1e-12 and float(b.state.max()) <= 1e-12
    # identity activation, one entry of D changed by e: |dy| = e |u_j| exactly for that output
    lin = _model(6, act="identity")
    D = lin.D.detach().clone()
    D[1, 2] += 0.5
    other = idl.ImplicitModel.from_matrices(
        lin.A.detach(),
        lin.B.detach(),
        lin.C.detach(),
        D,
        lin.b.detach(),
        lin.d.detach(),
        activation="identity",
        wellposedness="inf",
        kappa=0.95,
        tol=1e-12,
    )
    bd = compression_bound(lin, other, U)
    np.testing.assert_allclose(bd.output[:, 1].numpy(), 0.5 * U[:, 2].abs().numpy(), rtol=1e-9)


def test_certificates_hold_after_pruning():
    for wp in ("inf", "pf"):
        m = _model(7, wp=wp)
        for structured in (False, True):
            small, _ = magnitude_prune(m, 0.5, structured=structured)
            rep = small.certificate()
            assert rep.holds[wp]


def test_fine_tuning_keeps_pruned_entries_at_zero_and_lowers_the_loss():
    m = _model(8)
    m = idl.ImplicitModel.from_matrices(
        *(getattr(m, k).detach().float() for k in "ABCD"),
        m.b.detach().float(),
        m.d.detach().float(),
        wellposedness="inf",
        kappa=0.95,
    )
    g = torch.Generator().manual_seed(9)
    X = torch.randn(256, 7, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    pruned, _ = magnitude_prune(m, 0.7)
    tuned, rep = magnitude_prune(m, 0.7, fine_tune=(X, y), epochs=5, lr=1e-2)
    assert rep.fine_tune_epochs == 5
    for k in "ABCD":
        zero = _dense(getattr(pruned, k)) == 0
        assert (_dense(getattr(tuned, k))[zero] == 0).all()
    with torch.no_grad():
        loss = lambda mm: float(torch.nn.functional.cross_entropy(mm(X), y))  # noqa: E731
        assert loss(tuned) < loss(pruned)
    assert tuned.certificate().holds["inf"]


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"sparsity": 1.0}, ConfigurationError, "sparsity"),
        ({"sparsity": -0.1}, ConfigurationError, "sparsity"),
        ({"sparsity": "x"}, ConfigurationError, "sparsity"),
        ({"sparsity": 0.5, "matrices": ("Q",)}, ConfigurationError, "matrices"),
        ({"sparsity": 0.5, "structured": "yes"}, ConfigurationError, "structured"),
        ({"sparsity": 0.5, "epochs": 0}, ConfigurationError, "epochs"),
    ],
)
def test_bad_input_is_typed(kwargs, err, match):
    with pytest.raises(err, match=match):
        magnitude_prune(_model(0), **kwargs)


def test_bad_models_are_typed():
    with pytest.raises(ConfigurationError, match="ImplicitModel"):
        magnitude_prune(torch.nn.Linear(3, 2), 0.5)
    m = _model(0)
    with torch.no_grad():
        m.A[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        magnitude_prune(m, 0.5)
    with pytest.raises(ShapeError):
        compression_bound(_model(0), _model(0, n=10), _U(0))
    soft = idl.ImplicitModel(7, 6, 2, activation="softmax", wellposedness="inf", dtype=F64)
    with pytest.raises(ConfigurationError, match="componentwise"):
        magnitude_prune(soft, 0.5, u=_U(0))
    with pytest.raises(IdlError, match="sparse"):
        magnitude_prune(
            _model(0, sparse=True),
            0.5,
            fine_tune=(torch.zeros(4, 7, dtype=F64), torch.zeros(4, dtype=torch.long)),
        )


@pytest.mark.parametrize("sparse", [False, True])
def test_prune_states_with_a_tolerance_reports_a_bound_that_holds(sparse):
    from idlkit.compress import prune_states

    for seed in range(3):
        m = _model(20 + seed, act="tanh", sparse=sparse)
        U = _U(seed, m=300)
        vals = np.sort(np.abs(_dense(m.A)).ravel())
        tol = float(vals[int(0.4 * vals.size)])  # drops 40 % of A's entries (and small ones of B, C)
        small, rep = prune_states(m, tol, split=False, u=U)
        with torch.no_grad():
            dy = (small(U) - m(U)).abs()
        assert rep.bound is not None and bool((dy <= rep.bound.output + 1e-9).all())
        assert float(rep.bound.output.max()) > 0
        exact, rep0 = prune_states(m, 0.0, split=False, u=U)
        assert float(rep0.bound.output.max()) <= 1e-12


def test_sparse_models_are_pruned_on_their_values_without_densifying(monkeypatch):
    import idlkit.compress.magnitude as mg

    m = _model(30, sparse=True)
    dense = _model(30, sparse=False)

    def refuse(*args, **kwargs):
        raise AssertionError("densified")

    monkeypatch.setattr(torch.Tensor, "to_dense", refuse)
    for structured in (False, True):
        small, rep = mg.magnitude_prune(m, 0.5, structured=structured)
        assert small.sparse
        monkeypatch.undo()
        small_d, rep_d = mg.magnitude_prune(dense, 0.5, structured=structured)
        assert rep.nnz_after == rep_d.nnz_after and rep.n_after == rep_d.n_after
        np.testing.assert_array_equal(_dense(small.A), _dense(small_d.A))
        monkeypatch.setattr(torch.Tensor, "to_dense", refuse)
