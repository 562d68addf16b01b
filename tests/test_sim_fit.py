"""SIM(...).fit (paper 002 Alg. 1): exact recovery, report figures recomputed independently,
backends giving the same rows, fallbacks, warm starts, sparse storage and typed errors."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
import torch
from torch import nn

from idlkit import ImplicitModel
from idlkit.errors import ConfigurationError, InfeasibleError, InputError, SolverError
from idlkit.sim import SIM, extract_states


def _net(bias: bool = False, seed: int = 0, p: int = 12) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(p, 10, bias=bias), nn.ReLU(), nn.Linear(10, 6, bias=bias), nn.ReLU(),
                         nn.Linear(6, 3, bias=bias)).double()


def _U(m: int = 150, p: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dense(M: torch.Tensor) -> np.ndarray:
    return (M.to_dense() if M.layout != torch.strided else M).detach().double().numpy()


def _rows(model: ImplicitModel) -> np.ndarray:
    top = np.hstack([_dense(model.A), _dense(model.B)])
    bot = np.hstack([_dense(model.C), _dense(model.D)])
    return np.vstack([top, bot])


@pytest.mark.parametrize("bias", [False, True])
def test_exact_matching_recovers_the_network(bias):
    net, U = _net(bias), _U()
    model, rep = SIM(objective="exact", backend="serial").fit(net, U)
    with torch.no_grad():
        np.testing.assert_allclose(model(U).numpy(), net(U).numpy(), atol=1e-8)
    assert set(rep.status) == {"optimal"} and set(rep.solver) <= {"admm", "admm-polish", "unique"}
    assert rep.a_inf_norm <= 0.99
    assert rep.state_residual < 1e-9 and rep.output_residual < 1e-9
    # the basis-pursuit solution is no denser than the network's own exact implicit form
    assert rep.nnz <= rep.baseline_nnz
    W = _rows(model)
    nnz = np.count_nonzero(W) + (np.count_nonzero(_dense(model.b)) + np.count_nonzero(_dense(model.d))
                                 if bias else 0)
    assert rep.nnz == nnz
    assert rep.sparsity == pytest.approx((1 - nnz / rep.baseline_nnz) * 100)


def test_exact_matching_on_an_implicit_baseline():
    torch.manual_seed(3)
    base = ImplicitModel(8, 12, 2, kappa=0.5, dtype=torch.float64)
    with torch.no_grad():
        base.A.mul_(0.5)
        base.project_()
    U = torch.randn(120, 8, dtype=torch.float64)
    model, rep = SIM(objective="exact", backend="serial", bias=True).fit(base, U)
    with torch.no_grad():
        np.testing.assert_allclose(model(U).numpy(), base(U).numpy(), atol=1e-7)
    assert rep.a_inf_norm <= 0.99


def test_exact_matching_infeasible_is_reported_with_the_fix():
    net, U = _net(), _U()
    st = extract_states(net, U, dtype=torch.float64)
    noisy = dataclasses.replace(st, Z=st.Z + 1e-2 * torch.randn_like(st.Z))  # no longer linear in (X, U)
    with pytest.raises(InfeasibleError, match="objective='l1'"):
        SIM(objective="exact", backend="serial").fit_states(noisy)
    with pytest.raises(InfeasibleError, match="relaxed objective"):  # the budget, not the data
        SIM(objective="exact", backend="serial", kappa=1e-6).fit_states(st)


@pytest.mark.parametrize("objective", ["l1", "perspective", "lasso"])
def test_report_figures_recomputed_from_the_model(objective):
    net, U = _net(bias=True), _U()
    st = extract_states(net, U, dtype=torch.float64)
    kappa = 0.05 if objective == "lasso" else 0.5
    sim = SIM(objective=objective, backend="serial", beta=1e-3, alpha=1e-3, kappa=kappa)
    model, rep = sim.fit_states(st, bias=True)
    W = _rows(model)
    n = st.n
    A = W[:n, :n]
    assert np.max(np.sum(np.abs(A), axis=1)) <= sim.kappa + 1e-12
    assert rep.a_inf_norm == pytest.approx(np.max(np.sum(np.abs(A), axis=1)), abs=1e-6)
    if objective == "lasso":  # the whole row (a, b) is in the budget (thesis eq. 3.4)
        assert np.max(np.sum(np.abs(W[:n]), axis=1)) <= 0.05 + 1e-6
    # residuals from the model's own matrices on the states
    b, d = _dense(model.b), _dense(model.d)
    Zp = st.X.numpy() @ _dense(model.A).T + st.U.numpy() @ _dense(model.B).T + b
    Yp = st.X.numpy() @ _dense(model.C).T + st.U.numpy() @ _dense(model.D).T + d
    Z, Y = st.Z.numpy(), st.Y_hat.numpy()
    rel = lambda T, Tp: np.linalg.norm(T - Tp) / np.linalg.norm(T)  # noqa: E731
    assert rep.state_residual == pytest.approx(rel(Z, Zp), rel=1e-5, abs=1e-12)
    assert rep.output_residual == pytest.approx(rel(Y, Yp), rel=1e-5, abs=1e-12)
    assert rep.nnz == np.count_nonzero(W) + np.count_nonzero(b) + np.count_nonzero(d)
    assert set(rep.status) <= {"optimal", "inactive"}
    assert model.certificate().wellposed
    assert "sparsity" in rep.summary()


def test_larger_penalty_gives_sparser_models():
    net, U = _net(), _U()
    st = extract_states(net, U, dtype=torch.float64)
    _, loose = SIM(objective="l1", backend="serial", beta=1e-5).fit_states(st)
    _, tight = SIM(objective="l1", backend="serial", beta=1e-1).fit_states(st)
    assert tight.nnz < loose.nnz
    assert tight.state_residual > loose.state_residual


@pytest.mark.parametrize("objective", ["l1", "perspective"])
def test_fast_solver_agrees_with_cvxpy(objective):
    pytest.importorskip("cvxpy")
    net, U = _net(), _U(m=80)
    st = extract_states(net, U, dtype=torch.float64)
    kw = dict(objective=objective, backend="serial", beta=0.02, alpha=0.01, kappa=0.3, refit=False)
    fast, rf = SIM(tol=1e-10, **kw).fit_states(st)
    ref, rr = SIM(solver="cvxpy", prune_tol=0.0, **kw).fit_states(st)
    assert set(rr.solver) == {"clarabel"}
    np.testing.assert_allclose(_rows(fast), _rows(ref), atol=2e-4)
    assert rf.state_residual == pytest.approx(rr.state_residual, rel=1e-3)


def test_fallback_rows_are_retried_and_reported():
    pytest.importorskip("cvxpy")
    net, U = _net(), _U(m=80)
    st = extract_states(net, U, dtype=torch.float64)
    full, _ = SIM(objective="l1", backend="serial", beta=0.02, tol=1e-10, refit=False).fit_states(st)
    model, rep = SIM(objective="l1", backend="serial", beta=0.02, max_iter=1, refit=False).fit_states(st)
    assert rep.fallback_rows and set(rep.solver[i] for i in rep.fallback_rows) == {"clarabel"}
    assert all(rep.status[i] == "fallback" for i in rep.fallback_rows)
    np.testing.assert_allclose(_rows(model), _rows(full), atol=2e-4)
    with pytest.raises(SolverError, match="no solver"):
        SIM(objective="l1", backend="serial", beta=0.02, max_iter=1, cvx_solvers=("NO_SUCH",)).fit_states(st)


def test_warm_start_reuses_a_previous_fit():
    net, U = _net(), _U()
    st = extract_states(net, U, dtype=torch.float64)
    sim = SIM(objective="l1", backend="serial", beta=1e-3, tol=1e-9, refit=False)  # the solver's optimum
    first, r1 = sim.fit_states(st)
    again, r2 = sim.fit_states(st, init=first)
    assert r2.iterations.sum() < r1.iterations.sum()
    np.testing.assert_allclose(_rows(again), _rows(first), atol=1e-6)
    with pytest.raises(InputError, match="init"):
        sim.fit_states(st, init=ImplicitModel(3, 4, 2))


def test_sparse_storage_solves_like_dense():
    net, U = _net(), _U()
    st = extract_states(net, U, dtype=torch.float64)
    sp_model, _ = SIM(objective="l1", backend="serial", beta=1e-2, sparse=True).fit_states(st)
    de_model, _ = SIM(objective="l1", backend="serial", beta=1e-2, sparse=False).fit_states(st)
    assert sp_model.sparse and sp_model.A.layout == torch.sparse_csr and not de_model.sparse
    with torch.no_grad():
        np.testing.assert_allclose(sp_model(U).numpy(), de_model(U).numpy(), atol=1e-10)


def test_float32_baseline_gives_a_float32_wellposed_model():
    net, U = _net().float(), _U().float()
    model, rep = SIM(objective="l1", backend="serial", beta=1e-3, kappa=0.9).fit(net, U)
    assert model.A.dtype == torch.float32
    assert np.max(np.sum(np.abs(_dense(model.A)), axis=1)) <= 0.9
    with torch.no_grad():
        assert model(U).shape == (U.shape[0], 3)


# Rows solved in other blocks (other workers, other block_rows) stop at other iterations of
# the batched solver, so two runs agree to the solver's tolerance, not to rounding: the engine's
# torch (MKL) products round differently for different numbers of rows, momentum restarts then
# fire at other iterations, and two *serial* runs with blocks of 2 and 4 output rows differ by
# 1.4e-7 here (entries up to 1.9; tol 1e-8 bounds the objective gap, not the coefficients).
BLOCK_ATOL = 2e-6


def _wide_states():
    """Large enough that G (> 1 MB) is memory-mapped by loky."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(380, 24), nn.ReLU(), nn.Linear(24, 4)).double()
    U = torch.randn(400, 380, dtype=torch.float64)
    return extract_states(net, U, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_parallel_backends_match_serial(backend):
    st = _wide_states()
    kw = dict(objective="l1", beta=1e-2, tol=1e-8)
    ref, _ = SIM(backend="serial", **kw).fit_states(st)
    model, rep = SIM(backend=backend, n_jobs=2, **kw).fit_states(st)
    np.testing.assert_allclose(_rows(model), _rows(ref), atol=BLOCK_ATOL)
    assert rep.n_jobs == 2
    if backend == "loky":
        assert rep.shared == "memmap"  # X, U reach the workers as one read-only map, not pickles


def test_ray_backend_on_a_local_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[default]')")
    st = _wide_states()
    kw = dict(objective="l1", beta=1e-2, tol=1e-8)
    ref, _ = SIM(backend="serial", **kw).fit_states(st)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        model, rep = SIM(backend="ray", n_jobs=2, **kw).fit_states(st)
    finally:
        ray.shutdown()
    np.testing.assert_allclose(_rows(model), _rows(ref), atol=BLOCK_ATOL)
    assert rep.shared == "object-store"


def test_dask_backend_on_a_local_cluster():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    st = _wide_states()
    kw = dict(objective="l1", beta=1e-2, tol=1e-8)
    ref, _ = SIM(backend="serial", **kw).fit_states(st)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        model, rep = SIM(backend="dask", n_jobs=2, **kw).fit_states(st)
    np.testing.assert_allclose(_rows(model), _rows(ref), atol=BLOCK_ATOL)


def _dying_solver(monkeypatch, tmp_path, always: bool):
    """Replace the block solver by one whose worker process dies (os._exit) on its first block
    (``always``: on every block solved outside this process). A local function: loky pickles it
    by value, so the workers run it too."""
    import os

    import idlkit.sim.fit as fit_mod

    original, parent, marker = fit_mod._solve_block, os.getpid(), tmp_path / "died"

    def dying(job, G, R):
        if os.getpid() != parent and (always or not marker.exists()):
            marker.touch()
            os._exit(1)
        return original(job, G, R)

    monkeypatch.setattr(fit_mod, "_solve_block", dying)


@pytest.mark.parametrize("always", [False, True])
def test_a_dead_worker_is_reported_and_its_rows_retried(monkeypatch, tmp_path, always):
    st = _wide_states()
    kw = dict(objective="l1", beta=1e-2, tol=1e-8)
    ref, _ = SIM(backend="serial", **kw).fit_states(st)
    _dying_solver(monkeypatch, tmp_path, always)
    with pytest.warns(RuntimeWarning, match="worker died") as rec:
        model, rep = SIM(backend="loky", n_jobs=2, block_rows=8, **kw).fit_states(st)
    np.testing.assert_allclose(_rows(model), _rows(ref), atol=BLOCK_ATOL)  # never a silent zero
    assert rep.retried_rows and set(rep.retried_rows) <= set(range(len(rep.status)))
    assert all(s == "optimal" for s in rep.status)
    deaths = [w for w in rec if "worker died" in str(w.message)]
    assert len(deaths) == (2 if always else 1)
    assert "this process" in str(deaths[-1].message) if always else "fresh pool" in str(deaths[0].message)


def test_an_error_inside_a_worker_is_not_retried(monkeypatch):
    import idlkit.sim.fit as fit_mod

    def broken(job, G, R):
        raise SolverError("row solver exploded", status="failed")

    monkeypatch.setattr(fit_mod, "_solve_block", broken)
    with pytest.raises(SolverError, match="exploded"):
        SIM(objective="l1", backend="loky", n_jobs=2, block_rows=8).fit_states(_wide_states())


@pytest.mark.parametrize("backend,module", [("ray", "ray"), ("dask", "distributed")])
def test_missing_backend_says_what_to_install(monkeypatch, backend, module):
    st = _wide_states()
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    if module == "ray":
        monkeypatch.setitem(sys.modules, "ray.util.joblib", None)
    with pytest.raises(ConfigurationError, match="pip install"):
        SIM(objective="l1", backend=backend, n_jobs=2, block_rows=4).fit_states(st)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kappa=0.0), "kappa"), (dict(kappa=1.5), "kappa"), (dict(kappa=True), "kappa"),
    (dict(objective="l0"), "objective"), (dict(backend="mpi"), "backend"),
    (dict(beta=-1.0), "beta"), (dict(solver="cvxpy", objective="lasso"), "solver"),
    (dict(n_jobs=0), "n_jobs"), (dict(sparse="yes"), "sparse"),
])
def test_bad_settings_are_typed_errors(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        SIM(**kwargs)


def test_bad_inputs_are_typed_errors():
    with pytest.raises(InputError, match="activation"):
        SIM(backend="serial").fit(nn.Sequential(nn.Linear(4, 2)), torch.randn(10, 4))
    net, U = _net(), _U()
    st = extract_states(net, U, dtype=torch.float64)
    bad = dataclasses.replace(st, X=st.X.clone().index_fill_(0, torch.tensor([3]), float("nan")))
    with pytest.raises(InputError, match="NaN"):
        SIM(backend="serial").fit_states(bad)
    with pytest.raises(InputError, match="States"):
        SIM(backend="serial").fit_states((st.Z, st.X))  # type: ignore[arg-type]


def test_lasso_budget_binds_on_whole_rows():
    """For "lasso", kappa is the thesis's whole-row budget: the states are rescaled for the
    default bound, so a small kappa binds (and sparsifies) instead of rescaling the states away."""
    net, U = _net(), _U()
    _, loose = SIM(objective="lasso", backend="serial", kappa=0.99).fit(net, U)
    model, tight = SIM(objective="lasso", backend="serial", kappa=0.02).fit(net, U)
    assert "optimal" in tight.status  # binding rows
    W = _rows(model)
    n = model.hidden
    assert np.max(np.sum(np.abs(W[:n]), axis=1)) <= 0.02 * (1 + 1e-9)
    assert tight.nnz < loose.nnz and tight.state_residual > loose.state_residual
