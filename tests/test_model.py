"""ImplicitModel: well-posedness enforcement, dense references, shapes, errors, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from _ref import ref_block_softmax, ref_phi_np
from hypothesis import given, settings
from hypothesis import strategies as st

import idlkit
from idlkit import wellposed as wp
from idlkit.activations import BlockMax, Blockwise, Centered, LeakyReLU, Sigmoid, SoftMax
from idlkit.errors import (
    ConfigurationError,
    IdlError,
    InputError,
    NonFiniteError,
    ShapeError,
    WellPosednessError,
)

F64 = torch.float64


def _blockwise():
    return Blockwise([(2, "tanh"), (2, SoftMax(2)), (2, BlockMax(2))])


# name -> (factory, l_inf Lipschitz constant (from the math), componentwise gamma or None,
#          hidden-size unit, monotone componentwise)
ACTS = {
    "relu": (lambda: "relu", 1.0, 1.0, 1, True),
    "leaky_relu": (lambda: LeakyReLU(0.1), 1.0, 1.0, 1, True),
    "tanh": (lambda: "tanh", 1.0, 1.0, 1, True),
    "sigmoid": (lambda: "sigmoid", 0.25, 0.25, 1, True),
    "identity": (lambda: "identity", 1.0, 1.0, 1, True),
    "softmax": (lambda: SoftMax(2), 0.5, None, 2, False),
    "blockmax": (lambda: BlockMax(2), 1.0, None, 2, False),
    "blockwise": (_blockwise, 1.0, None, 6, False),
}


def _inf_norm(A: np.ndarray) -> float:
    return max(math.fsum(abs(x) for x in row) for row in A)


def _mu(A: np.ndarray) -> float:
    n = A.shape[0]
    return max(A[i, i] + math.fsum(abs(A[i, j]) for j in range(n) if j != i) for i in range(n))


def _rho(M: np.ndarray) -> float:
    return float(np.abs(scipy.linalg.eigvals(M)).max())


def _pf_value(name: str, A: np.ndarray) -> float | None:
    """The PF quantity of Thm 2.2 / 2.7 computed independently (None: not computed here)."""
    gamma = ACTS[name][2]
    if gamma is not None:
        return _rho(gamma * np.abs(A))
    if name in ("softmax", "blockmax"):
        L = A.shape[0] // 2
        N = np.zeros((L, L))
        for i in range(L):
            for j in range(L):
                blk = np.abs(A[2 * i:2 * i + 2, 2 * j:2 * j + 2])
                # softmax: l1 -> l1 (max column sum); blockmax: l_inf -> l_inf (max row sum)
                N[i, j] = blk.sum(axis=0).max() if name == "softmax" else blk.sum(axis=1).max()
        return _rho(N)
    return None


def _mentions(msg: str, value: float) -> bool:
    return any(f"{value:.{k}g}" in msg for k in range(3, 9))


def _hidden(name: str, k: int) -> int:
    unit = ACTS[name][3]
    return unit * (1 if unit == 6 else k)


def _wp_cases():
    out = []
    for name in ACTS:
        for kind in ("inf", "pf", "mu", "triangular", None):
            if kind == "mu" and not ACTS[name][4]:
                continue
            out.append((name, kind))
    return out


# ----------------------------------------------------------------------------- well-posedness


@pytest.mark.parametrize("name,kind", _wp_cases())
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 5), kappa=st.floats(0.05, 0.99))
@settings(max_examples=8)
def test_initialisation_satisfies_declared_condition(name, kind, seed, k, kappa):
    torch.manual_seed(seed)
    n = _hidden(name, k)
    model = idlkit.ImplicitModel(3, n, 2, ACTS[name][0](), wellposedness=kind, kappa=kappa,
                                 dtype=F64)
    A = model.A.detach().numpy()
    lip, gamma = ACTS[name][1], ACTS[name][2]
    cert = model.certificate()
    if kind == "inf":
        assert lip * _inf_norm(A) <= kappa * (1 + 1e-12)
    elif kind == "mu":
        assert gamma * _mu(A) <= kappa * (1 + 1e-12)
    elif kind == "pf":
        value = _pf_value(name, A)
        if value is not None:
            assert value <= kappa * (1 + 1e-9)
    elif kind == "triangular":
        sizes = idlkit.get_activation(ACTS[name][0]()).blocks(n).sizes
        blk = np.repeat(np.arange(len(sizes)), sizes)
        assert not np.any(A[blk[:, None] >= blk[None, :]] != 0)  # block strictly upper (Thm 2.9)
    if kind is not None:
        assert cert.holds[kind], str(cert)
        assert cert.declared == kind
    else:
        assert cert.wellposed
    y = model(torch.randn(4, 3, dtype=F64))  # and it runs
    assert y.shape == (4, 2) and model.last_solve.converged


@pytest.mark.parametrize("name,kind", [c for c in _wp_cases() if c[1] is not None])
def test_project_after_perturbation_and_error_without(name, kind):
    torch.manual_seed(0)
    n = _hidden(name, 2)
    kappa = 0.7
    model = idlkit.ImplicitModel(3, n, 2, ACTS[name][0](), wellposedness=kind, kappa=kappa,
                                 dtype=F64)
    u = torch.randn(5, 3, dtype=F64)
    model(u)  # a forward before the perturbation (fills any cache)
    lip, gamma = ACTS[name][1], ACTS[name][2]
    with torch.no_grad():
        model.A.add_(4.0 / lip * torch.randn(n, n, dtype=F64))
        if kind == "mu":
            model.A.add_(8.0 / lip * torch.eye(n, dtype=F64))  # a positive diagonal breaks mu
    A_pert = model.A.detach().clone().numpy()
    if kind == "inf":
        assert lip * _inf_norm(A_pert) > kappa
    elif kind == "mu":
        assert gamma * _mu(A_pert) > kappa
    elif kind == "pf" and _pf_value(name, A_pert) is not None:
        assert _pf_value(name, A_pert) > kappa
    with pytest.raises(WellPosednessError) as exc:
        model(u)
    msg = str(exc.value)
    assert isinstance(exc.value, IdlError)
    if kind == "inf":
        assert _mentions(msg, lip * _inf_norm(A_pert)), msg
    elif kind == "mu":
        assert _mentions(msg, gamma * _mu(A_pert)), msg
    elif kind == "pf" and _pf_value(name, A_pert) is not None:
        assert _mentions(msg, _pf_value(name, A_pert)), msg
    with pytest.raises(WellPosednessError):
        model.equilibrium(u)
    model.project_()
    A = model.A.detach().numpy()
    if kind == "inf":
        assert lip * _inf_norm(A) == pytest.approx(kappa, rel=1e-9)  # rows land on the sphere
        np.testing.assert_allclose(
            A, wp.project_inf_ball(torch.tensor(A_pert), kappa / lip).numpy(), rtol=0, atol=0)
    elif kind == "mu":
        assert gamma * _mu(A) == pytest.approx(kappa, rel=1e-9)
    elif kind == "pf":
        value = _pf_value(name, A)
        if value is not None:
            assert value == pytest.approx(kappa, rel=1e-9)
        ratio = A[A_pert != 0] / A_pert[A_pert != 0]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)  # a rescaling
    elif kind == "triangular":
        assert model.certificate().holds["triangular"]
    assert model.certificate().holds[kind]
    model(u)  # runs again


def test_perturbation_through_data_is_detected():
    """``param.data`` edits do not bump the autograd version counter; the check must not
    rely on it alone."""
    torch.manual_seed(0)
    model = idlkit.ImplicitModel(3, 4, 2, "relu", wellposedness="inf", kappa=0.9, dtype=F64)
    u = torch.randn(5, 3, dtype=F64)
    model(u)
    model.A.data.add_(1.0)
    value = _inf_norm(model.A.detach().numpy())
    assert value > 0.9
    with pytest.raises(WellPosednessError) as exc:
        model(u)
    assert _mentions(str(exc.value), value)


def test_load_state_dict_with_bad_A_is_detected():
    torch.manual_seed(0)
    model = idlkit.ImplicitModel(3, 4, 2, "relu", wellposedness="inf", kappa=0.9, dtype=F64)
    u = torch.randn(5, 3, dtype=F64)
    model(u)
    sd = model.state_dict()
    sd["A"] = torch.full((4, 4), 0.5, dtype=F64)
    model.load_state_dict(sd)
    with pytest.raises(WellPosednessError):
        model(u)


def test_triangular_declared_violation_names_entry():
    torch.manual_seed(0)
    model = idlkit.ImplicitModel(3, 4, 2, "tanh", wellposedness="triangular", dtype=F64)
    with torch.no_grad():
        model.A[2, 1] = 0.123
    with pytest.raises(WellPosednessError) as exc:
        model(torch.randn(2, 3, dtype=F64))
    assert "0.123" in str(exc.value)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "identity", "leaky_relu"])
def test_certificate_fields_consistent(name):
    torch.manual_seed(3)
    model = idlkit.ImplicitModel(3, 6, 2, ACTS[name][0](), wellposedness="inf", kappa=0.8,
                                 dtype=torch.float32)
    cert = model.certificate()
    A = model.A.detach().double().numpy()
    gamma = ACTS[name][2]
    for field in ("inf_norm", "gamma_inf", "pf", "mu_inf"):
        assert type(getattr(cert, field)) is float
    assert cert.dtype == "float64"
    assert cert.inf_norm == pytest.approx(_inf_norm(A), rel=1e-12)
    assert cert.inf_norm == wp.inf_norm(model.A)
    assert cert.mu_inf == pytest.approx(_mu(A), rel=1e-12, abs=1e-15)
    assert cert.mu_inf == wp.mu_inf(model.A)
    assert cert.pf == pytest.approx(_rho(gamma * np.abs(A)), rel=1e-9)
    assert cert.pf == pytest.approx(wp.pf_eigenvalue(gamma * np.abs(A)), rel=1e-12)
    assert cert.gamma_inf == ACTS[name][1]
    assert cert.declared == "inf" and cert.kappa == 0.8
    assert cert.margin == pytest.approx(0.8 - ACTS[name][1] * cert.inf_norm)


# ----------------------------------------------------------------------------- dense references


def _set_params(model, seed: int, a_norm: float | None = None, lip: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype))
        if a_norm is not None:
            A = model.A
            A.mul_(a_norm / lip / float(A.abs().sum(dim=1).max()))


@pytest.mark.parametrize("solver", ["picard", "averaged", "anderson"])
@pytest.mark.parametrize("bias", [True, False])
def test_identity_activation_matches_linear_solve(solver, bias):
    torch.manual_seed(0)
    n, p, q = 6, 4, 3
    model = idlkit.ImplicitModel(p, n, q, "identity", bias=bias, wellposedness="inf",
                                 kappa=0.9, solver=solver, tol=1e-13, max_iter=10_000,
                                 dtype=F64)
    _set_params(model, 1, a_norm=0.85)
    u = torch.randn(7, p, dtype=F64)
    A, B, C, D = (model.A.detach(), model.B.detach(), model.C.detach(), model.D.detach())
    rhs = B @ u.t() + (model.b.detach()[:, None] if bias else 0)
    X = torch.linalg.solve(torch.eye(n, dtype=F64) - A, rhs)
    Y = (C @ X).t() + u @ D.t() + (model.d.detach() if bias else 0)
    with torch.no_grad():
        torch.testing.assert_close(model(u), Y, rtol=0, atol=1e-11)
        torch.testing.assert_close(model.equilibrium(u), X.t(), rtol=0, atol=1e-11)
    if not bias:
        assert model.b is None and model.d is None


def _picard_state(phi, A, Z0, tol=1e-14, max_iter=100_000):
    X = torch.zeros_like(Z0)
    for _ in range(max_iter):
        Xn = phi(A @ X + Z0)
        if float((Xn - X).abs().max()) <= tol:
            return Xn
        X = Xn
    raise AssertionError("reference Picard did not converge")


def _root_state(phi_np, A: torch.Tensor, Z0: torch.Tensor) -> torch.Tensor:
    """Solve x = phi(A x + z) column by column with scipy's MINPACK hybrid method."""
    An, Zn = A.numpy(), Z0.numpy()
    cols = []
    for j in range(Zn.shape[1]):
        sol = scipy.optimize.root(lambda x, j=j: phi_np(An @ x + Zn[:, j]) - x,
                                  np.zeros(An.shape[0]), method="hybr", tol=1e-15)
        x = sol.x
        assert np.abs(phi_np(An @ x + Zn[:, j]) - x).max() <= 1e-13
        cols.append(x)
    return torch.tensor(np.stack(cols, axis=1))


@pytest.mark.parametrize("kind", ["inf", "pf", "mu", None])
@pytest.mark.parametrize("solver", ["picard", "averaged", "anderson"])
def test_sigmoid_model_solves_the_unshifted_equation(kind, solver):
    """The shift of §3.1 is internal: x = sigmoid(A x + B u + b) and y = C x + D u + d."""
    if kind == "mu" and solver == "picard":
        pytest.skip("Picard is not guaranteed to converge under the mu_inf condition")
    torch.manual_seed(1)
    n, p, q = 5, 3, 2
    model = idlkit.ImplicitModel(p, n, q, "sigmoid", wellposedness=kind, kappa=0.9,
                                 solver=solver, tol=1e-13, max_iter=10_000, dtype=F64)
    _set_params(model, 2)
    with torch.no_grad():
        model.A.mul_(3.0)  # ||A||_inf well above 1; sigmoid is 1/4-Lipschitz
        if kind is None:
            model.A.mul_(3.6 / float(model.A.abs().sum(dim=1).max()))
    model.project_()
    u = torch.randn(6, p, dtype=F64) * 2
    A, B = model.A.detach(), model.B.detach()
    Z0 = B @ u.t() + model.b.detach()[:, None]
    X = _root_state(ref_phi_np("sigmoid"), A, Z0)
    Y = (model.C.detach() @ X).t() + u @ model.D.detach().t() + model.d.detach()
    with torch.no_grad():
        torch.testing.assert_close(model.equilibrium(u), X.t(), rtol=0, atol=1e-11)
        torch.testing.assert_close(model(u), Y, rtol=0, atol=1e-11)
        # warm start from the (unshifted) solution: nothing left to do
        model(u, x0=X.t())
    assert model.last_solve.iterations == 0


def test_softmax_model_solves_the_unshifted_equation():
    torch.manual_seed(2)
    n, p, q = 6, 3, 2
    model = idlkit.ImplicitModel(p, n, q, SoftMax(3), wellposedness="inf", kappa=0.9,
                                 tol=1e-13, dtype=F64)
    _set_params(model, 3, a_norm=0.9, lip=0.5)
    u = torch.randn(4, p, dtype=F64)
    Z0 = model.B.detach() @ u.t() + model.b.detach()[:, None]
    X = _picard_state(lambda z: ref_block_softmax(z, 3), model.A.detach(), Z0)
    with torch.no_grad():
        torch.testing.assert_close(model.equilibrium(u), X.t(), rtol=0, atol=1e-11)
        Y = (model.C.detach() @ X).t() + u @ model.D.detach().t() + model.d.detach()
        torch.testing.assert_close(model(u), Y, rtol=0, atol=1e-11)


def test_centered_activation_instance_is_accepted():
    """A user-supplied Centered map is an Activation like any other."""
    torch.manual_seed(4)
    model = idlkit.ImplicitModel(3, 4, 2, Centered(Sigmoid()), wellposedness="inf",
                                 tol=1e-13, dtype=F64)
    u = torch.randn(3, 3, dtype=F64)
    Z0 = model.B.detach() @ u.t() + model.b.detach()[:, None]
    X = _picard_state(lambda z: torch.sigmoid(z) - 0.5, model.A.detach(), Z0)
    with torch.no_grad():
        torch.testing.assert_close(model.equilibrium(u), X.t(), rtol=0, atol=1e-11)


def test_softmax_triangular_model_runs_with_triangular_solver():
    """wellposedness='triangular' with a block map must give block strictly upper A
    (Thm 2.9), which the triangular solver accepts."""
    torch.manual_seed(5)
    model = idlkit.ImplicitModel(3, 6, 2, SoftMax(2), wellposedness="triangular",
                                 solver="triangular", dtype=F64)
    u = torch.randn(4, 3, dtype=F64)
    y = model(u)
    assert y.shape == (4, 2)
    Z0 = model.B.detach() @ u.t() + model.b.detach()[:, None]
    X = _picard_state(lambda z: ref_block_softmax(z, 2), model.A.detach(), Z0)
    torch.testing.assert_close(model.equilibrium(u).detach(), X.t(), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- shapes


def test_batch_first_shapes():
    torch.manual_seed(0)
    p, n, q = 12, 5, 3
    model = idlkit.ImplicitModel(p, n, q, "relu", dtype=F64, tol=1e-12)
    u = torch.randn(4, p, dtype=F64)
    y = model(u)
    assert y.shape == (4, q)
    assert model.equilibrium(u).shape == (4, n)
    assert model.last_solve.per_sample_iterations.shape == (4,)
    # 1-D input: one sample
    y1 = model(u[1])
    assert y1.shape == (q,)
    torch.testing.assert_close(y1, y[1], rtol=0, atol=1e-12)
    assert model.equilibrium(u[1]).shape == (n,)
    # image-shaped input (batch, c, h, w) with c*h*w = p is flattened
    img = u.reshape(4, 3, 2, 2)
    torch.testing.assert_close(model(img), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.equilibrium(img), model.equilibrium(u), rtol=0, atol=1e-12)
    # batch of one, and an empty batch
    assert model(u[:1]).shape == (1, q)


@pytest.mark.parametrize("shape", [(4, 11), (11,), (13,), (4, 2, 3), (4, 12, 1, 2), (2, 3, 12)])
def test_bad_shapes_raise_shape_error_with_expected_shape(shape):
    model = idlkit.ImplicitModel(12, 5, 3, "relu", dtype=F64)
    with pytest.raises(ShapeError) as exc:
        model(torch.randn(*shape, dtype=F64))
    msg = str(exc.value)
    assert "12" in msg and "(batch, 12)" in msg and str(tuple(shape)) in msg
    with pytest.raises(ShapeError):
        model.equilibrium(torch.randn(*shape, dtype=F64))


def test_scalar_input_raises_shape_error():
    model = idlkit.ImplicitModel(1, 3, 1, "relu", dtype=F64)
    with pytest.raises(ShapeError):
        model(torch.tensor(1.0, dtype=F64))


def test_bad_warm_start_shape():
    model = idlkit.ImplicitModel(3, 5, 2, "relu", dtype=F64)
    u = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ShapeError):
        model(u, x0=torch.zeros(4, 4, dtype=F64))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_input_raises(bad):
    model = idlkit.ImplicitModel(3, 5, 2, "tanh", dtype=F64)
    u = torch.randn(4, 3, dtype=F64)
    u[2, 1] = bad
    with pytest.raises(NonFiniteError):
        model(u)
    with pytest.raises(NonFiniteError):
        model.equilibrium(u)


def test_nonfinite_parameter_raises():
    model = idlkit.ImplicitModel(3, 5, 2, "tanh", wellposedness=None, dtype=F64)
    with torch.no_grad():
        model.B[0, 0] = math.nan
    with pytest.raises(NonFiniteError):
        model(torch.randn(2, 3, dtype=F64))


def test_input_dtype_errors():
    model = idlkit.ImplicitModel(3, 5, 2, "relu", dtype=F64)
    for bad in (torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int32),
                torch.ones(2, 3, dtype=torch.bool)):
        with pytest.raises(InputError):
            model(bad)
    with pytest.raises(InputError) as exc:
        model(torch.ones(2, 3, dtype=torch.float32))
    assert "float32" in str(exc.value) and "float64" in str(exc.value)
    with pytest.raises(InputError):
        model(np.ones((2, 3)))
    with pytest.raises(InputError):
        model([[1.0, 2.0, 3.0]])


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("kappa", [0, 1, 1.5, -0.1, math.nan, math.inf, 0.0, 1.0])
def test_kappa_outside_open_unit_interval(kappa):
    with pytest.raises(ConfigurationError) as exc:
        idlkit.ImplicitModel(3, 4, 2, kappa=kappa)
    assert "kappa" in str(exc.value)


@pytest.mark.parametrize("kw", [
    dict(activation="swishy"), dict(activation="relu7"), dict(solver="newton"),
    dict(solver="Picard!"), dict(wellposedness="spectral"), dict(tol=0.0), dict(tol=-1e-3),
    dict(max_iter=0), dict(on_nonconvergence="shout"), dict(alpha=2.0),
    dict(backward_solver="gmres"), dict(activation="softmax", wellposedness="mu"),
    dict(activation=SoftMax(3)),  # 3 does not divide hidden=4
])
def test_configuration_errors(kw):
    with pytest.raises((ConfigurationError, ShapeError)) as exc:
        idlkit.ImplicitModel(3, 4, 2, **kw)
    assert isinstance(exc.value, IdlError)
    bad = [v for v in kw.values() if isinstance(v, str)]
    if bad and "wellposedness" not in kw:
        assert bad[0] in str(exc.value)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "4"])
def test_bad_sizes(bad):
    with pytest.raises(ConfigurationError):
        idlkit.ImplicitModel(3, bad, 2)


# ----------------------------------------------------------------------------- no global state


def test_two_models_do_not_interfere():
    torch.manual_seed(0)
    m1 = idlkit.ImplicitModel(3, 6, 2, "relu", kappa=0.5, tol=1e-4, solver="picard", dtype=F64)
    m2 = idlkit.ImplicitModel(3, 6, 2, "tanh", kappa=0.9, tol=1e-10, solver="anderson",
                              dtype=F64)
    u = torch.randn(5, 3, dtype=F64)
    for _ in range(3):
        with torch.no_grad():
            m1.A.add_(torch.randn(6, 6, dtype=F64))
            m2.A.add_(torch.randn(6, 6, dtype=F64))
        m1.project_()
        m2.project_()
        m1(u)
        m2(u)
        s1, s2 = m1.last_solve, m2.last_solve
        assert (s1.tol, s1.method) == (1e-4, "picard")
        assert (s2.tol, s2.method) == (1e-10, "anderson")
        assert s1.residual <= 1e-4 and s2.residual <= 1e-10
        assert _inf_norm(m1.A.detach().numpy()) == pytest.approx(0.5, rel=1e-9)
        assert _inf_norm(m2.A.detach().numpy()) == pytest.approx(0.9, rel=1e-9)
        assert m1.certificate().kappa == 0.5 and m2.certificate().kappa == 0.9
    # a third model built afterwards has its own defaults
    m3 = idlkit.ImplicitModel(3, 6, 2)
    assert m3.kappa == 0.95 and m3.settings.tol == 1e-6


# ----------------------------------------------------------------------------- dtypes


def test_float32_and_float64_and_double():
    torch.manual_seed(0)
    m = idlkit.ImplicitModel(3, 6, 2, "sigmoid", tol=1e-6)
    assert m.A.dtype == torch.float32
    u = torch.randn(4, 3)
    y32 = m(u)
    assert y32.dtype == torch.float32
    m.double()
    assert m.A.dtype == F64
    y64 = m(u.double())
    assert y64.dtype == F64
    torch.testing.assert_close(y64.float(), y32, rtol=1e-4, atol=1e-5)
    assert m.equilibrium(u.double()).dtype == F64
    assert m.certificate().holds["inf"]
    with pytest.raises(InputError):
        m(u)
    m.float()
    assert m(u).dtype == torch.float32


def test_float64_constructor_dtype():
    m = idlkit.ImplicitModel(3, 4, 2, dtype=F64)
    assert all(p.dtype == F64 for p in m.parameters())


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["inf", "mu", "pf", "triangular"])
def test_attach_projection_keeps_A_feasible(kind):
    torch.manual_seed(0)
    model = idlkit.ImplicitModel(4, 8, 2, "relu", wellposedness=kind, kappa=0.8, dtype=F64,
                                 tol=1e-8)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    handle = model.attach_projection(opt)
    u = torch.randn(32, 4, dtype=F64)
    target = torch.randn(32, 2, dtype=F64)
    for _ in range(5):
        opt.zero_grad()
        loss = ((model(u) - target) ** 2).mean()
        loss.backward()
        opt.step()
        A = model.A.detach().numpy()
        if kind == "inf":
            assert _inf_norm(A) <= 0.8 * (1 + 1e-12)
        elif kind == "mu":
            assert _mu(A) <= 0.8 * (1 + 1e-12)
        elif kind == "pf":
            assert _rho(np.abs(A)) <= 0.8 * (1 + 1e-9)
        else:
            assert not np.any(np.tril(A) != 0)
    handle.remove()
    with torch.no_grad():
        model.A.add_(5.0)
    with pytest.raises(WellPosednessError):
        model(u)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid", "softmax"])
def test_training_reduces_loss(name):
    torch.manual_seed(0)
    p, n, q = 4, 6, 2
    model = idlkit.ImplicitModel(p, n, q, ACTS[name][0](), tol=1e-8, dtype=F64)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.attach_projection(opt)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(64, p, generator=g, dtype=F64)
    target = torch.tanh(u @ torch.randn(p, q, generator=g, dtype=F64))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((model(u) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert model.certificate().holds["inf"]
