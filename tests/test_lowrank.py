"""Low-rank implicit models (paper 000 §5.3): equivalence with the dense model, SVD
conversion, implicit gradients, the PF certificate lambda_pf(gamma |R|^T |L|) < 1, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from _ref import picard_numpy, ref_phi_np
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

import idlkit
from idlkit.activations import LeakyReLU, SoftMax
from idlkit.errors import (
    ConfigurationError,
    ConvergenceError,
    InputError,
    NonFiniteError,
    ShapeError,
    WellPosednessError,
)
from idlkit.lowrank import LowRankImplicitModel

F64 = torch.float64
PARAMS = ("L", "R", "B", "C", "D", "b", "d")
# name -> (factory, componentwise Lipschitz constant gamma, numpy reference)
ACTS = {
    "relu": (lambda: "relu", 1.0, ref_phi_np("relu")),
    "leaky_relu": (lambda: LeakyReLU(0.1), 1.0, ref_phi_np("leaky_relu", 0.1)),
    "tanh": (lambda: "tanh", 1.0, ref_phi_np("tanh")),
    "sigmoid": (lambda: "sigmoid", 0.25, ref_phi_np("sigmoid")),
    "identity": (lambda: "identity", 1.0, ref_phi_np("identity")),
}


def _rho(M: np.ndarray) -> float:
    return float(np.abs(scipy.linalg.eigvals(M)).max())


def _factors(seed: int, n: int, k: int, p: int, q: int, gamma: float, target: float = 0.9,
             bias: bool = True) -> dict:
    """Random L, R with lambda_pf(gamma |R|^T |L|) = target (computed independently), B, C, D."""
    g = np.random.default_rng(seed)
    L, R = g.standard_normal((n, k)), g.standard_normal((n, k))
    s = math.sqrt(target / (gamma * _rho(np.abs(R).T @ np.abs(L))))
    out = {"L": L * s, "R": R * s, "B": g.standard_normal((n, p)),
           "C": g.standard_normal((q, n)) / math.sqrt(n), "D": g.standard_normal((q, p)),
           "b": g.standard_normal(n) if bias else None, "d": g.standard_normal(q) if bias else None,
           "u": g.standard_normal((4, p))}
    return {key: None if v is None else torch.as_tensor(v, dtype=F64) for key, v in out.items()}


def _lowrank(f: dict, act, **kw) -> LowRankImplicitModel:
    kw = {"tol": 1e-13, "max_iter": 20_000, **kw}
    return LowRankImplicitModel.from_factors(f["L"], f["R"], f["B"], f["C"], f["D"], f["b"],
                                             f["d"], activation=act, **kw)


def _dense(f: dict, act, **kw) -> idlkit.ImplicitModel:
    kw = {"tol": 1e-13, "max_iter": 20_000, "wellposedness": None, **kw}
    return idlkit.ImplicitModel.from_matrices(f["L"] @ f["R"].t(), f["B"], f["C"], f["D"], f["b"],
                                              f["d"], activation=act, **kw)


# ----------------------------------------------------------------------------- equivalence


@settings(max_examples=20)
@given(name=st.sampled_from(sorted(ACTS)), n=st.integers(1, 12), kfrac=st.floats(0, 1),
       p=st.integers(1, 4), q=st.integers(1, 3), bias=st.booleans(), seed=st.integers(0, 10_000),
       solver=st.sampled_from(["anderson", "picard", "averaged"]))
def test_outputs_equal_dense_model(name, n, kfrac, p, q, bias, seed, solver):
    """y and x of the rank-k model equal the dense ImplicitModel with A = L R^T (to 1e-10)."""
    factory, gamma, _ = ACTS[name]
    k = 1 + int(kfrac * (n - 1))
    f = _factors(seed, n, k, p, q, gamma, bias=bias)
    lr = _lowrank(f, factory(), solver=solver)
    dense = _dense(f, factory())
    u = f["u"]
    with torch.no_grad():
        assert torch.allclose(lr(u), dense(u), rtol=0, atol=1e-10)
        x = lr.equilibrium(u)
        assert torch.allclose(x, dense.equilibrium(u), rtol=0, atol=1e-10)
        # the latent is z = R^T x
        assert torch.allclose(lr.latent(u), x @ f["R"], rtol=0, atol=1e-10)
    assert lr.last_solve.converged and lr.last_solve.per_sample_iterations.shape == (4,)


@pytest.mark.parametrize("name", sorted(ACTS))
def test_state_matches_independent_numpy_picard(name):
    """The state solves x = phi(L R^T x + B u + b): plain numpy Picard on the dense system."""
    factory, gamma, phi = ACTS[name]
    f = _factors(7, 9, 3, 3, 2, gamma, target=0.8)
    lr = _lowrank(f, factory())
    A = (f["L"] @ f["R"].t()).numpy()
    Bu = (f["B"] @ f["u"].t()).numpy() + f["b"].numpy()[:, None]
    X = picard_numpy(phi, A, Bu, tol=1e-14)
    with torch.no_grad():
        np.testing.assert_allclose(lr.equilibrium(f["u"]).numpy(), X.T, rtol=0, atol=1e-11)


def test_shapes_and_input_forms():
    f = _factors(1, 6, 2, 4, 3, 1.0)
    lr = _lowrank(f, "tanh")
    u = f["u"]
    with torch.no_grad():
        y = lr(u)
        assert y.shape == (4, 3)
        assert lr(u[0]).shape == (3,) and torch.allclose(lr(u[0]), y[0], atol=1e-12)
        assert torch.allclose(lr(u.reshape(4, 2, 2)), y, atol=1e-12)
        assert lr.equilibrium(u[0]).shape == (6,)
        assert lr.latent(u).shape == (4, 2)
        z = lr.latent(u)
        # warm start at the solution: converged at once
        lr(u, z0=z)
        assert lr.last_solve.iterations <= 1
        # the fixed point of latent_step
        assert torch.allclose(lr.latent_step(z, u), z, atol=1e-12)


def test_no_bias_and_to_dense_preserve_outputs():
    f = _factors(2, 8, 3, 3, 2, 1.0, bias=False)
    lr = _lowrank(f, "relu")
    assert lr.b is None and lr.d is None
    dense = lr.to_dense()
    assert isinstance(dense, idlkit.ImplicitModel) and dense.b is None
    assert dense.wellposedness == "pf"  # lambda_pf(|L R^T|) <= lambda_pf(|R|^T |L|) <= kappa
    assert torch.allclose(dense.A, f["L"] @ f["R"].t(), rtol=0, atol=0)
    with torch.no_grad():
        assert torch.allclose(dense(f["u"]), lr(f["u"]), rtol=0, atol=1e-10)


def test_float32_model_close_to_float64():
    f = _factors(3, 10, 2, 3, 2, 1.0)
    lr64 = _lowrank(f, "tanh", tol=1e-12)
    f32 = {k: None if v is None else v.float() for k, v in f.items()}
    lr32 = LowRankImplicitModel.from_factors(f32["L"], f32["R"], f32["B"], f32["C"], f32["D"],
                                             f32["b"], f32["d"], activation="tanh", tol=1e-6)
    with torch.no_grad():
        assert torch.allclose(lr32(f32["u"]).double(), lr64(f["u"]), atol=1e-4)


# ----------------------------------------------------------------------------- conversions


@settings(max_examples=15)
@given(n=st.integers(2, 12), r=st.integers(1, 4), extra=st.integers(0, 2),
       seed=st.integers(0, 10_000), name=st.sampled_from(["relu", "tanh", "sigmoid"]))
def test_from_dense_round_trip_exact_low_rank(n, r, extra, seed, name):
    """rank(A) <= k: L R^T = A up to rounding, same outputs, and to_dense gives A back."""
    factory, gamma, _ = ACTS[name]
    r = min(r, n)
    k = min(n, r + extra)
    # the SVD factors of an exactly rank-r matrix with a small enough scale pass the certificate
    f = _factors(seed, n, r, 3, 2, gamma, target=0.3)
    dense = _dense(f, factory(), kappa=0.95)
    lr = LowRankImplicitModel.from_dense(dense, k, tol=1e-13, max_iter=20_000)
    rep = lr.approximation
    sv = np.linalg.svd(dense.A.detach().numpy(), compute_uv=False)
    assert rep.rank == k and rep.exact
    assert rep.spectral_error == pytest.approx(sv[k] if k < n else 0.0, abs=1e-12)
    assert rep.spectral_error <= 1e-12 * max(sv[0], 1.0)
    assert rep.pf == pytest.approx(lr.certificate(dense=False).pf, rel=1e-10)
    assert rep.rescaled == 1.0
    assert torch.allclose(lr.dense_matrix(), dense.A, rtol=0, atol=1e-13)
    with torch.no_grad():
        assert torch.allclose(lr(f["u"]), dense(f["u"]), rtol=0, atol=1e-10)
    back = lr.to_dense(tol=1e-13, max_iter=20_000)
    assert torch.allclose(back.A, dense.A, rtol=0, atol=1e-13)
    for name_ in ("B", "C", "D", "b", "d"):
        assert torch.equal(getattr(back, name_), getattr(dense, name_))
    with torch.no_grad():
        assert torch.allclose(back(f["u"]), dense(f["u"]), rtol=0, atol=1e-10)


def test_from_dense_truncation_reports_spectral_error():
    g = torch.Generator().manual_seed(0)
    n, k = 10, 3
    A = torch.randn(n, n, generator=g, dtype=F64)
    A = A * (0.3 / float(A.abs().sum(dim=1).max()))
    dense = idlkit.ImplicitModel.from_matrices(
        A, torch.randn(n, 3, generator=g, dtype=F64), torch.randn(2, n, generator=g, dtype=F64),
        torch.randn(2, 3, generator=g, dtype=F64), activation="relu", wellposedness="inf")
    lr = LowRankImplicitModel.from_dense(dense, k)
    sv = np.linalg.svd(A.numpy(), compute_uv=False)
    rep = lr.approximation
    assert not rep.exact
    assert rep.spectral_error == pytest.approx(sv[k], rel=1e-12)
    assert rep.relative_spectral_error == pytest.approx(sv[k] / sv[0], rel=1e-12)
    np.testing.assert_allclose(rep.singular_values, sv, rtol=1e-12)
    err = np.linalg.norm(A.numpy() - lr.dense_matrix().numpy(), 2)
    assert err == pytest.approx(sv[k], rel=1e-10)
    # the solver settings follow the dense model's
    assert lr.settings.method == dense.settings.method and lr.kappa == dense.kappa


def _rotated_example() -> idlkit.ImplicitModel:
    """A = Q diag(0.5, 0.4) Q^T, Q the 45-degree rotation: lambda_pf(|A|) = 0.5, while the SVD
    factors give |R|^T |L| = [[.5, sqrt(.2)], [sqrt(.2), .4]], whose PF eigenvalue is 0.9."""
    A = torch.tensor([[0.45, 0.05], [0.05, 0.45]], dtype=F64)
    eye = torch.eye(2, dtype=F64)
    return idlkit.ImplicitModel.from_matrices(A, eye, eye, eye, activation="relu",
                                              wellposedness="pf", kappa=0.8)


def test_from_dense_checks_factorised_certificate():
    dense = _rotated_example()
    assert dense.certificate().pf == pytest.approx(0.5)
    with pytest.raises(WellPosednessError, match=r"0\.9") as exc:
        LowRankImplicitModel.from_dense(dense, 2)
    assert "kappa = 0.8" in str(exc.value)
    # unchecked: built, and the report names the value
    lr = LowRankImplicitModel.from_dense(dense, 2, wellposedness=None)
    assert lr.approximation.exact and lr.approximation.pf == pytest.approx(0.9, rel=1e-12)
    assert lr.certificate().pf == pytest.approx(0.9, rel=1e-12)
    # project=True rescales onto kappa and records the factor
    lp = LowRankImplicitModel.from_dense(dense, 2, project=True)
    assert lp.approximation.rescaled == pytest.approx(math.sqrt(0.8 / 0.9), rel=1e-12)
    assert lp.certificate().pf == pytest.approx(0.8, rel=1e-12)
    # a larger kappa accepts it as is
    ok = LowRankImplicitModel.from_dense(dense, 2, kappa=0.95)
    assert ok.approximation.rescaled == 1.0


def test_from_dense_errors():
    f = _factors(0, 4, 2, 3, 2, 1.0)
    dense = _dense(f, "relu")
    for bad in (0, 5, 1.5, True):
        with pytest.raises(ConfigurationError):
            LowRankImplicitModel.from_dense(dense, bad)
    with pytest.raises(ConfigurationError):
        LowRankImplicitModel.from_dense(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ConfigurationError):
        LowRankImplicitModel.from_dense(dense, 1, wellposedness="inf")
    soft = idlkit.ImplicitModel(3, 4, 2, activation=SoftMax(2), dtype=F64)
    with pytest.raises(ConfigurationError, match="componentwise"):
        LowRankImplicitModel.from_dense(soft, 2)
    static = idlkit.ImplicitModel(3, 0, 2, dtype=F64)
    with pytest.raises(ConfigurationError):
        LowRankImplicitModel.from_dense(static, 1)


# ----------------------------------------------------------------------------- gradients


def _gradcheck_model(name: str, bias: bool, solver: str, backward_solver: str | None,
                     seed: int = 5) -> tuple[LowRankImplicitModel, dict]:
    factory, gamma, _ = ACTS[name]
    f = _factors(seed, 6, 2, 3, 2, gamma, target=0.6, bias=bias)
    lr = _lowrank(f, factory(), solver=solver, backward_solver=backward_solver,
                  backward_tol=1e-13)
    return lr, f


@pytest.mark.parametrize("name,bias,solver,backward_solver", [
    ("relu", True, "anderson", None),
    ("tanh", True, "picard", "picard"),
    ("sigmoid", False, "averaged", "averaged"),
    ("leaky_relu", True, "anderson", "picard"),
    ("identity", True, "anderson", None),
])
def test_gradcheck_all_parameters_and_input(name, bias, solver, backward_solver):
    lr, f = _gradcheck_model(name, bias, solver, backward_solver)
    names = [p for p in PARAMS if getattr(lr, p) is not None]

    def fn(*args):
        params = dict(zip(names, args[:-1], strict=True))
        return functional_call(lr, params, (args[-1],))

    inputs = [getattr(lr, p).detach().clone().requires_grad_() for p in names]
    inputs.append(f["u"].clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-6, rtol=1e-5)
    assert lr.last_backward_solve is not None and lr.last_backward_solve.converged


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_gradients_match_dense_model(name):
    """dL/dL = dL/dA R, dL/dR = dL/dA^T L (chain rule through A = L R^T), and the other
    gradients equal, against the dense model's independent implicit backward."""
    factory, gamma, _ = ACTS[name]
    f = _factors(11, 8, 3, 3, 2, gamma)
    lr = _lowrank(f, factory(), backward_tol=1e-13)
    dense = _dense(f, factory(), backward_tol=1e-13)
    u1, u2 = f["u"].clone().requires_grad_(), f["u"].clone().requires_grad_()
    (lr(u1) ** 2).sum().backward()
    (dense(u2) ** 2).sum().backward()
    gA = dense.A.grad
    torch.testing.assert_close(lr.L.grad, gA @ f["R"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(lr.R.grad, gA.t() @ f["L"], rtol=1e-8, atol=1e-10)
    for p in ("B", "C", "D", "b", "d"):
        torch.testing.assert_close(getattr(lr, p).grad, getattr(dense, p).grad, rtol=1e-8,
                                   atol=1e-10)
    torch.testing.assert_close(u1.grad, u2.grad, rtol=1e-8, atol=1e-10)


def test_training_step_with_projection():
    torch.manual_seed(0)
    lr = LowRankImplicitModel(4, 20, 3, 3, activation="relu", dtype=F64, kappa=0.9)
    opt = torch.optim.SGD(lr.parameters(), lr=0.5)
    handle = lr.attach_projection(opt)
    u = torch.randn(16, 4, dtype=F64)
    target = torch.randn(16, 3, dtype=F64)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((lr(u) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        assert lr.certificate(dense=False).pf <= 0.9 * (1 + 1e-12)
    handle.remove()
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- PF condition


@settings(max_examples=20)
@given(n=st.integers(1, 30), k=st.integers(1, 6), seed=st.integers(0, 10_000),
       name=st.sampled_from(sorted(ACTS)))
def test_pf_condition_contraction_and_convergence(n, k, seed, name):
    """lambda_pf(gamma |R|^T |L|) = 0.9: the componentwise bound (3) of the module doc holds
    on sampled pairs, the weighted-norm contraction factor holds, Picard converges, and the
    dense PF value of A = L R^T is no larger."""
    factory, gamma, _ = ACTS[name]
    k = min(k, n)
    f = _factors(seed, n, k, 3, 2, gamma, target=0.9)
    lr = _lowrank(f, factory(), solver="picard", tol=1e-11)
    cert = lr.certificate()
    assert cert.pf == pytest.approx(0.9, rel=1e-10) and cert.holds and cert.declared_holds
    assert cert.dense.pf <= cert.pf * (1 + 1e-10)
    M = gamma * (f["R"].abs().t() @ f["L"].abs())
    g = torch.Generator().manual_seed(seed)
    u = f["u"]
    with torch.no_grad():
        for _ in range(3):
            z1 = 3 * torch.randn(4, k, generator=g, dtype=F64)
            z2 = 3 * torch.randn(4, k, generator=g, dtype=F64)
            lhs = (lr.latent_step(z1, u) - lr.latent_step(z2, u)).abs()
            rhs = (z1 - z2).abs() @ M.t()
            assert bool((lhs <= rhs + 1e-12).all())
            # weighted norm with w = (I - M)^{-1} 1: factor 1 - 1 / ||w||_inf
            w = torch.linalg.solve(torch.eye(k, dtype=F64) - M, torch.ones(k, 1, dtype=F64))[:, 0]
            assert bool((w >= 1 - 1e-12).all())
            q = 1 - 1 / float(w.max())
            nl = ((lr.latent_step(z1, u) - lr.latent_step(z2, u)).abs() / w).amax(dim=1)
            nr = ((z1 - z2).abs() / w).amax(dim=1)
            assert bool((nl <= q * nr + 1e-12).all())
        lr(u)
    assert lr.last_solve.converged


def test_pf_is_more_conservative_than_dense():
    """L = [[1, 1], [0, 0]] / 2, R = [[1, -1], [0, 0]] / 2: A = 0, but lambda_pf(|R|^T |L|) = 1/2
    (the module doc's example)."""
    eye = torch.eye(2, dtype=F64)
    L = torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=F64)
    R = torch.tensor([[0.5, -0.5], [0.0, 0.0]], dtype=F64)
    lr = LowRankImplicitModel.from_factors(L, R, eye, eye, eye, activation="relu",
                                           wellposedness=None)
    assert torch.equal(lr.dense_matrix(), torch.zeros(2, 2, dtype=F64))
    cert = lr.certificate()
    assert cert.pf == pytest.approx(0.5) and cert.dense.pf == 0.0


def test_project_and_forward_check():
    f = _factors(4, 10, 3, 3, 2, 1.0, target=0.5)
    lr = _lowrank(f, "tanh", kappa=0.9)
    with torch.no_grad():
        lr.L.mul_(2.0)
        lr.R.mul_(1.5)  # value 0.5 * 3 = 1.5
    with pytest.raises(WellPosednessError, match=r"1\.5"):
        lr(f["u"])
    lr.project_()
    assert lr.certificate(dense=False).pf == pytest.approx(0.9, rel=1e-12)
    lr(f["u"])
    lr.project_(0.4)
    assert lr.certificate(dense=False).pf == pytest.approx(0.4, rel=1e-12)
    lr.project_(0.8)  # already inside: unchanged
    assert lr.certificate(dense=False).pf == pytest.approx(0.4, rel=1e-12)
    with pytest.raises(ConfigurationError):
        lr.project_(1.0)
    # edits through .data are caught too (the cache fingerprint covers L and R's values)
    lr.R.data.mul_(10.0)
    with pytest.raises(WellPosednessError):
        lr(f["u"])


def test_default_init_satisfies_certificate():
    for seed in range(3):
        torch.manual_seed(seed)
        lr = LowRankImplicitModel(5, 50, 2, 8, activation="relu", dtype=F64, kappa=0.7)
        assert lr.certificate(dense=False).pf <= 0.7 * (1 + 1e-12)
        lr(torch.randn(3, 5, dtype=F64))
        assert lr.last_solve.converged
    # unchecked models are rescaled at init only when the certificate fails
    lr = LowRankImplicitModel(5, 50, 2, 8, wellposedness=None, dtype=F64)
    assert lr.certificate(dense=False).pf < 1
    assert "LowRankImplicitModel" in repr(lr) and lr.config()["rank"] == 8


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs", [
    {"rank": 0}, {"rank": 7}, {"rank": 2.0}, {"rank": True}, {"hidden": 0}, {"in_features": 0},
    {"out_features": -1}, {"solver": "triangular"}, {"solver": "newton"},
    {"backward_solver": "triangular"}, {"wellposedness": "inf"}, {"kappa": 1.0}, {"kappa": 0},
    {"kappa": "x"}, {"activation": SoftMax(2)}, {"activation": "softmax"},
    {"activation": "nope"}, {"tol": -1.0}, {"tol": float("nan")}, {"max_iter": 0},
    {"anderson_m": 0}, {"alpha": 1.5}, {"on_nonconvergence": "shrug"}, {"backward_tol": 0.0},
])
def test_constructor_errors(kwargs):
    args = {"in_features": 3, "hidden": 6, "out_features": 2, "rank": 2, **kwargs}
    with pytest.raises(ConfigurationError):
        LowRankImplicitModel(**args)


def test_input_errors():
    f = _factors(0, 5, 2, 3, 2, 1.0)
    lr = _lowrank(f, "relu")
    with pytest.raises(InputError):
        lr([1.0, 2.0, 3.0])
    with pytest.raises(InputError):
        lr(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(InputError, match="float32"):
        lr(torch.ones(2, 3, dtype=torch.float32))
    with pytest.raises(ShapeError):
        lr(torch.ones(2, 4, dtype=F64))
    bad = torch.ones(2, 3, dtype=F64)
    bad[1, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        lr(bad)
    with pytest.raises(ShapeError):
        lr(torch.ones(2, 3, dtype=F64), z0=torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ShapeError):
        lr.latent_step(torch.zeros(3, 2, dtype=F64), torch.ones(2, 3, dtype=F64))
    assert all(issubclass(e, idlkit.IdlError) for e in (InputError, ShapeError, NonFiniteError))


def test_from_factors_errors():
    f = _factors(0, 5, 2, 3, 2, 1.0)
    with pytest.raises(ShapeError):
        LowRankImplicitModel.from_factors(f["L"], f["R"][:, :1], f["B"], f["C"], f["D"])
    with pytest.raises(ShapeError):
        LowRankImplicitModel.from_factors(f["L"], f["R"], f["B"], f["C"].t(), f["D"])
    with pytest.raises(ShapeError):
        LowRankImplicitModel.from_factors(f["L"][0], f["R"], f["B"], f["C"], f["D"])
    with pytest.raises(ShapeError):
        LowRankImplicitModel.from_factors(f["L"], f["R"], f["B"], f["C"], f["D"], f["b"][:3])
    with pytest.raises(WellPosednessError, match=r"3\.6"):
        LowRankImplicitModel.from_factors(2 * f["L"], 2 * f["R"], f["B"], f["C"], f["D"])
    # a single bias: the other one is zero
    lr = LowRankImplicitModel.from_factors(f["L"], f["R"], f["B"], f["C"], f["D"], f["b"])
    assert torch.equal(lr.d, torch.zeros(2, dtype=F64))


def test_convergence_error_and_warning():
    f = _factors(0, 8, 2, 3, 2, 1.0, target=0.95)
    lr = _lowrank(f, "tanh", solver="picard", max_iter=2, kappa=0.96)
    with pytest.raises(ConvergenceError):
        lr(f["u"])
    lw = _lowrank(f, "tanh", solver="picard", max_iter=2, kappa=0.96, on_nonconvergence="warn")
    with pytest.warns(UserWarning):
        lw(f["u"])
    assert not lw.last_solve.converged
