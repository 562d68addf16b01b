"""The solver registry, the lean and tracked loops, the sync-free Anderson, the adjoint's
stopping rule, settings validation, and the model-owned plan cache (issue 14)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _ref import ref_phi
from hypothesis import given, settings
from hypothesis import strategies as st

import idlkit as idl
from idlkit.errors import ConfigurationError, NonFiniteError
from idlkit.solve import (
    SOLVERS,
    PlanCache,
    SolveOptions,
    Solver,
    SolverSettings,
    adjoint_fixed_point,
    fixed_point,
    get_solver,
)
from idlkit.solve.anderson import History
from idlkit.solve.lean import _next_gap, anderson_sync_free, iterate_lean
from idlkit.solve.maps import AdjointMap, ForwardMap
from idlkit.solve.tracked import retirement_pays

ACTS = ["relu", "tanh", "sigmoid", "identity", "leaky_relu"]


def _problem(seed: int, n: int, m: int, kappa: float, dtype=torch.float64, hard: bool = False):
    """Random ``A`` with ``||A||_inf = kappa``; ``hard``: nonnegative with every row summing
    to kappa (Picard then contracts at a rate close to kappa)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    if hard:
        A = A.abs()
    A = A * (kappa / float(A.abs().sum(dim=1).max()))
    b = torch.randn(n, m, generator=g, dtype=torch.float64) * 2
    return A.to(dtype), b.to(dtype)


def _phi(name):
    return ref_phi(name, 0.01) if name == "leaky_relu" else ref_phi(name)


def _residual(name, A, X, b) -> float:
    return float((_phi(name)(A @ X + b) - X).abs().max())


# ----------------------------------------------------------------------------- registry


def test_registry_is_immutable_and_complete():
    assert list(SOLVERS) == ["picard", "averaged", "anderson", "triangular"]
    with pytest.raises(TypeError):
        SOLVERS["mine"] = SOLVERS["picard"]  # type: ignore[index]
    for name, s in SOLVERS.items():
        assert isinstance(s, Solver) and s.name == name and s.description
        assert s.adjoint_default in SOLVERS
        assert repr(s).startswith(f"<solver {name!r}")
    assert SOLVERS["triangular"].adjoint_default == "triangular"
    assert not SOLVERS["triangular"].iterative
    A = torch.diag(torch.tensor([-3.0, 0.5], dtype=torch.float64))
    assert SOLVERS["picard"].default_step(A) == 1.0
    assert SOLVERS["averaged"].default_step(A) == pytest.approx(0.25)  # 1 / (1 + 3)
    assert SOLVERS["anderson"].default_step(A) == pytest.approx(0.25)  # ||A||_inf >= 1
    assert SOLVERS["anderson"].default_step(0.1 * A) == 1.0


@pytest.mark.parametrize("bad", ["newton", "", "PICARD", None, 3])
def test_unregistered_solver_names_the_choices(bad):
    with pytest.raises(ConfigurationError, match=r"registered choices: \['picard'"):
        get_solver(bad)
    with pytest.raises(ConfigurationError, match="registered choices"):
        idl.ImplicitModel(3, 4, 2, solver=bad)
    with pytest.raises(ConfigurationError, match="registered choices"):
        idl.ImplicitModel(3, 4, 2, backward_solver=bad if bad is not None else "x")
    A, b = _problem(0, 4, 2, 0.5)
    with pytest.raises(ConfigurationError, match="registered choices"):
        fixed_point(A, b, method=bad)


def test_structured_solver_refused_on_a_general_map():
    choices = r"structured systems only.*\['picard', 'averaged', 'anderson'\]"
    with pytest.raises(ConfigurationError, match=choices):
        get_solver("triangular", iterative=True)
    with pytest.raises(ConfigurationError, match="registered choices"):
        idl.LowRankImplicitModel(3, 6, 2, rank=2, solver="triangular")
    with pytest.raises(ConfigurationError, match="registered choices"):
        idl.LowRankImplicitModel(3, 6, 2, rank=2, backward_solver="triangular")


@pytest.mark.parametrize("kw", [
    dict(tol=0.0), dict(tol=-1e-6), dict(tol=float("nan")), dict(tol=float("inf")), dict(tol=True),
    dict(tol="1e-6"), dict(max_iter=0), dict(max_iter=1.5), dict(max_iter=True),
    dict(alpha=0.0), dict(alpha=1.5), dict(alpha=True), dict(anderson_m=0),
    dict(backward_tol=0.0), dict(backward_max_iter=0), dict(backward_stop="abs"),
    dict(per_sample="yes"), dict(check_every=0), dict(check_every=2.0),
    dict(on_nonconvergence="maybe"),
])
def test_bad_settings_are_typed_errors_naming_the_value(kw):
    (key, value), = kw.items()
    with pytest.raises(ConfigurationError) as err:
        idl.ImplicitModel(3, 4, 2, **kw)
    assert key.replace("backward_", "") in str(err.value) or key in str(err.value)
    assert repr(value) in str(err.value) or str(value) in str(err.value)


def test_fixed_point_validates_like_the_model():
    A, b = _problem(1, 5, 3, 0.5)
    for kw in (dict(tol=0.0), dict(max_iter=0), dict(per_sample=1), dict(check_every=-2)):
        with pytest.raises(ConfigurationError):
            fixed_point(A, b, **kw)
        with pytest.raises(ConfigurationError):
            adjoint_fixed_point(A, b, b, **kw)


def test_settings_are_frozen_and_replace_validates():
    s = SolverSettings()
    with pytest.raises(AttributeError):
        s.tol = 1.0  # type: ignore[misc]
    assert s.replace(tol=1e-3).tol == 1e-3
    with pytest.raises(ConfigurationError):
        s.replace(tol=-1)
    model = idl.ImplicitModel(3, 4, 2)
    assert model.set_solver(solver="picard", backward_stop="absolute") is model
    assert model.settings.method == "picard" and model.settings.backward_stop == "absolute"
    with pytest.raises(ConfigurationError):
        model.set_solver(max_iter=0)
    assert model.settings.max_iter == 500  # unchanged after the refused change


# ----------------------------------------------------------------------------- lean vs tracked


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 30), m=st.integers(1, 12),
       kappa=st.sampled_from([0.3, 0.9, 0.98]), act=st.sampled_from(ACTS),
       method=st.sampled_from(["picard", "averaged", "anderson"]))
def test_lean_and_tracked_reach_the_same_fixed_point(seed, n, m, kappa, act, method):
    A, b = _problem(seed, n, m, kappa)
    a = idl.activations.LeakyReLU(0.01) if act == "leaky_relu" else act
    tol = 1e-10
    Xl, il = fixed_point(A, b, a, method=method, tol=tol, max_iter=5000, per_sample=False)
    Xt, it = fixed_point(A, b, a, method=method, tol=tol, max_iter=5000, per_sample=True)
    assert not il.per_sample and it.per_sample
    # residuals recomputed independently; both within tol of the same fixed point
    assert _residual(act, A, Xl, b) <= tol * (1 + 1e-6)
    assert _residual(act, A, Xt, b) <= tol * (1 + 1e-6)
    bound = 2 * tol / (1 - kappa)  # ||x - x*|| <= r / (1 - L) for each
    assert float((Xl - Xt).abs().max()) <= bound
    assert torch.equal(il.per_sample_iterations, torch.full((m,), il.iterations))
    torch.testing.assert_close(il.per_sample_residual,
                               (_phi(act)(A @ Xl + b) - Xl).abs().amax(dim=0), rtol=1e-9,
                               atol=64 * 2.2e-16 * max(1.0, float(Xl.abs().max())))


@pytest.mark.parametrize("kappa", [0.5, 0.9, 0.99])
def test_lean_reads_predict_without_missing_convergence(kappa):
    """The predicted read schedule stops within two steps of the first Picard iterate whose
    residual is at ``tol`` (counted by an independent loop), and reads far fewer times."""
    A, b = _problem(3, 20, 8, kappa)
    tol = 1e-9
    X = torch.zeros_like(b)
    need = 0
    while _residual("tanh", A, X, b) > tol:
        X = torch.tanh(A @ X + b)
        need += 1
    reads = []
    F = ForwardMap(A, b.t().contiguous(), idl.activations.get_activation("tanh"))

    class Counting:
        def restrict(self, rows):  # pragma: no cover - lean loops never restrict
            raise AssertionError

        def __call__(self, Y):
            return F(Y)

    import idlkit.solve.lean as lean

    real = lean._next_gap

    def spy(*args):
        g = real(*args)
        reads.append(g)
        return g

    lean._next_gap = spy
    try:
        Xs, _, info = iterate_lean(Counting(), torch.zeros(8, 20, dtype=torch.float64), 1.0, tol,
                                   10000, "picard", "raise")
    finally:
        lean._next_gap = real
    assert need <= info.iterations <= need + 2
    assert _residual("tanh", A, Xs, b) <= tol
    assert len(reads) < max(need, 4)  # fewer reads than steps


def test_iterate_map_on_a_user_map_equals_fixed_point():
    from idlkit.solve import iterate_map

    A, b = _problem(4, 9, 5, 0.9)
    F_ = ForwardMap(A, b.t().contiguous(), idl.activations.get_activation("tanh"))
    for method in ("picard", "averaged", "anderson"):
        X, Z, info = iterate_map(F_, torch.zeros(5, 9, dtype=torch.float64), method, 1.0, 1e-12,
                                 5000, zero_start=True)
        Xr, _ = fixed_point(A, b, "tanh", method="picard", tol=1e-13, max_iter=5000)
        torch.testing.assert_close(X, Xr, rtol=0, atol=1e-10)
        torch.testing.assert_close(Z, A @ X + b, rtol=0, atol=1e-12)
    with pytest.raises(ConfigurationError, match="structured systems only"):
        iterate_map(F_, torch.zeros(5, 9, dtype=torch.float64), "triangular", 1.0, 1e-9, 10)


def test_next_gap_bounds():
    assert _next_gap(1e-3, math.inf, 1, 1e-6, 1, 64) == 1  # no rate yet
    assert _next_gap(1e-3, 1e-3, 1, 1e-6, 1, 64) == 1  # no progress: read every step
    assert _next_gap(1e-3, 2e-3, 1, 1e-6, 1, 64) == 4  # rate 1/2: ~10 steps, read after half
    assert _next_gap(1e-3, 2e-3, 1, 1e-6, 8, 64) == 8  # device minimum
    assert _next_gap(1e-3, 1.0001e-3, 1, 1e-12, 1, 64) == 64  # capped


def test_per_sample_auto_follows_the_retirement_rule():
    opts = SolveOptions()
    assert opts.lean(5, 10) and opts.lean(100, 100)
    assert not opts.lean(256, 300) and not retirement_pays(100, 100) and retirement_pays(256, 300)
    assert not SolveOptions(per_sample=True).lean(5, 10)
    assert SolveOptions(per_sample=False).lean(256, 300)
    model = idl.ImplicitModel(4, 6, 2, per_sample=True)
    model(torch.randn(3, 4))
    assert model.last_solve.per_sample
    model = idl.ImplicitModel(4, 6, 2)
    model(torch.randn(3, 4))
    assert not model.last_solve.per_sample


def test_lean_raises_on_nan_and_on_nonconvergence():
    A, b = _problem(5, 6, 3, 0.9)
    b[2, 1] = float("nan")
    with pytest.raises(NonFiniteError):
        fixed_point(A, b, per_sample=False)
    A, b = _problem(5, 6, 3, 0.99)
    with pytest.raises(idl.errors.ConvergenceError) as err:
        fixed_point(A, b, "identity", method="picard", tol=1e-12, max_iter=3, per_sample=False)
    assert err.value.info.iterations == 3 and not err.value.info.converged


# ----------------------------------------------------------------------------- sync-free Anderson


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("kappa", [0.5, 0.95, 0.99])
def test_sync_free_anderson_matches_the_fixed_point(act, kappa):
    A, b = _problem(7, 40, 16, kappa, hard=True)
    tol = 1e-10
    F_ = ForwardMap(A, b.t().contiguous(), idl.activations.get_activation(act))
    X, _, info = anderson_sync_free(F_, torch.zeros(16, 40, dtype=torch.float64), 1.0, tol, 2000, 5,
                                    1.0, "raise", min_gap=4)
    assert _residual(act, A, X, b) <= tol
    Xp, _ = fixed_point(A, b, act, method="picard", tol=1e-13, max_iter=20000)
    assert float((X - Xp).abs().max()) <= 2 * tol / (1 - kappa)
    if act == "relu" and kappa >= 0.95:  # acceleration (tanh saturates: Picard is fast)
        _, ip = fixed_point(A, b, act, method="picard", tol=tol, max_iter=20000)
        assert info.iterations < ip.iterations / (2 if kappa == 0.99 else 1)


def test_sync_free_anderson_adjoint_and_safeguard():
    """The adjoint map too; and a map whose Anderson steps blow up (a huge, badly scaled
    history) is still solved: rejected steps fall back to plain ones."""
    A, b = _problem(8, 30, 6, 0.9)
    Z = A @ torch.relu(b) + b
    G = torch.randn(30, 6, dtype=torch.float64)
    act = idl.activations.get_activation("relu")
    Fa = AdjointMap(A, Z.t().contiguous(), G.t().contiguous(), act)
    V, _, _ = anderson_sync_free(Fa, torch.zeros(6, 30, dtype=torch.float64), 1.0, 1e-11, 3000, 5,
                                 1.0, "raise")
    psi = (Z > 0).double()
    ref = torch.linalg.solve(torch.eye(30, dtype=torch.float64)[None] - (A.t()[None] * psi.t()[:, :, None]),
                             (psi * G).t()[:, :, None]).squeeze(2).t()
    torch.testing.assert_close(V, ref, rtol=0, atol=1e-9)
    hist = History(torch.zeros(4, 3, dtype=torch.float64), 2)
    X, G2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    hist.store(X, G2, 1.0, 0, True)
    mask = torch.tensor([True, False, True, False])
    before = hist.Gh.clone()
    hist.restart_where(mask, X, G2, 0.5)
    assert torch.equal(hist.Gh[1], before[1]) and torch.equal(hist.Gh[3], before[3])
    assert torch.equal(hist.Gh[0], G2[0].expand(2, 3))
    torch.testing.assert_close(hist.Yh[2], (X[2] + 0.5 * G2[2]).expand(2, 3))
    assert bool((hist.system[mask][:, 0, 1:] == 1).all())


# ----------------------------------------------------------------------------- adjoint stopping rule


def _grads(model, u, y):
    model.zero_grad()
    F.cross_entropy(model(u), y).backward()
    return [p.grad.clone() for p in (model.A, model.B, model.C)]


def test_backward_stop_absolute_vs_relative():
    torch.manual_seed(0)
    u, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
    rel = idl.ImplicitModel(6, 12, 3, dtype=torch.float64, tol=1e-12, backward_tol=1e-8)
    ab = idl.ImplicitModel(6, 12, 3, dtype=torch.float64, tol=1e-12, backward_tol=1e-8,
                           backward_stop="absolute")
    ab.load_state_dict(rel.state_dict())
    g_rel, g_abs = _grads(rel, u, y), _grads(ab, u, y)
    tol_rel, tol_abs = rel.last_backward_solve.tol, ab.last_backward_solve.tol
    # the stopping tolerance: absolute as given, relative scaled by ||dL/dx||_inf
    x = rel.equilibrium(u).detach().requires_grad_(True)
    F.cross_entropy(x @ rel.C.t() + u @ rel.D.t() + rel.d, y).backward()
    scale = float(x.grad.abs().max())
    assert tol_abs == 1e-8
    assert tol_rel == pytest.approx(1e-8 * scale)
    # reference gradients: unrolled autograd through many Picard steps (no implicit formula)
    ref = idl.ImplicitModel(6, 12, 3, dtype=torch.float64, solver="picard", tol=1e-14)
    ref.load_state_dict(rel.state_dict())
    with torch.no_grad():
        X0 = ref.equilibrium(u)
    Xk = X0
    Bu = u @ ref.B.t() + ref.b
    for _ in range(200):
        Xk = torch.relu(Xk @ ref.A.t() + Bu)
    ref.zero_grad()
    F.cross_entropy(Xk @ ref.C.t() + u @ ref.D.t() + ref.d, y).backward()
    g_ref = [p.grad for p in (ref.A, ref.B, ref.C)]
    for a, r_ in zip(g_rel, g_ref, strict=True):
        torch.testing.assert_close(a, r_, rtol=1e-6, atol=1e-9)
    # absolute 1e-8 is looser than relative 1e-8 * scale (scale < 1): bounded by the tol / (1 - L)
    for a, r_ in zip(g_abs, g_ref, strict=True):
        assert float((a - r_).abs().max()) <= 100 * 1e-8 / (1 - 0.95) * max(1.0, float(u.abs().max()))


# ----------------------------------------------------------------------------- projection, plans


def test_project_inside_is_a_no_op_and_outside_equals_the_projection():
    model = idl.ImplicitModel(5, 20, 3, kappa=0.9)
    before = model.A.detach().clone()
    ptr, ver = model.A.data_ptr(), model.A._version
    model.project_()
    assert torch.equal(model.A.detach(), before) and model.A._version == ver  # not even copied
    with torch.no_grad():
        model.A.mul_(3.0)
    expect = idl.wellposed.project_inf_ball(model.A.detach().clone(), 0.9)
    model.project_()
    assert model.A.data_ptr() == ptr
    torch.testing.assert_close(model.A.detach(), expect, rtol=0, atol=0)
    assert float(model.A.detach().abs().sum(dim=1).max()) <= 0.9


def test_plan_caches_belong_to_their_models():
    import idlkit.solve.triangular as tri

    assert not any(isinstance(v, dict) for k, v in vars(tri).items() if k.isupper() or k.startswith("_P"))
    m1 = idl.ImplicitModel(3, 6, 2, wellposedness="triangular", solver="triangular",
                           dtype=torch.float64)
    m2 = idl.ImplicitModel(3, 6, 2, wellposedness="triangular", solver="triangular",
                           dtype=torch.float64)
    u = torch.randn(4, 3, dtype=torch.float64)
    m1(u), m2(u)
    assert isinstance(m1._plans, PlanCache) and m1._plans is not m2._plans
    assert m1._plans._plan is not None and m1._plans._plan is not m2._plans._plan
    # a fresh solve without a cache plans afresh and agrees
    X, _ = fixed_point(m1.A.detach(), m1.B.detach() @ u.t() + m1.b.detach()[:, None],
                       method="triangular")
    torch.testing.assert_close(m1.equilibrium(u).t(), X, rtol=0, atol=1e-12)


def test_new_settings_survive_save_and_load(tmp_path):
    model = idl.ImplicitModel(3, 5, 2, backward_stop="absolute", per_sample=True, check_every=3)
    idl.save(model, tmp_path / "m.safetensors")
    back = idl.load(tmp_path / "m.safetensors")
    assert back.settings == model.settings


# ----------------------------------------------------------------------------- accelerators


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_solves_agree_with_the_cpu():
    A, b = _problem(11, 64, 32, 0.95, torch.float32)
    for method in ("picard", "anderson"):
        Xc, ic = fixed_point(A.cuda(), b.cuda(), method=method, tol=1e-5)
        Xh, _ = fixed_point(A, b, method=method, tol=1e-5)
        assert float((Xc.cpu() - Xh).abs().max()) <= 2e-5 / 0.05
        assert not ic.per_sample


def test_device_reads_are_spaced():
    """On an accelerator the lean loops read the residual at least DEVICE_CHECK_EVERY steps
    apart (checked on the CPU through the min_gap the options give a non-CPU tensor)."""
    from idlkit.solve.registry import DEVICE_CHECK_EVERY

    opts = SolveOptions()
    assert opts.min_gap(torch.zeros(1)) == 1
    assert opts.min_gap(torch.zeros(1, device="meta")) == DEVICE_CHECK_EVERY
    assert DEVICE_CHECK_EVERY > 1
    A, b = _problem(12, 10, 4, 0.9)
    F_ = ForwardMap(A, b.t().contiguous(), idl.activations.get_activation("relu"))
    X, _, info = iterate_lean(F_, torch.zeros(4, 10, dtype=torch.float64), 1.0, 1e-10, 5000,
                              "picard", "raise", min_gap=DEVICE_CHECK_EVERY)
    assert info.iterations % DEVICE_CHECK_EVERY == 0  # stopped at a read
    assert _residual("relu", A, X, b) <= 1e-10
    assert np.isfinite(info.residual)


@pytest.mark.parametrize("per_sample", [True, False])
def test_rounding_floor_is_named_in_the_convergence_error(per_sample):
    """float32, kappa 0.99, states ~57: an ulp of the state (3.8e-6) exceeds tol = 1e-7, so no
    solver can reach tol; the error says so and suggests a tolerance or float64."""
    g = torch.Generator().manual_seed(0)
    A = torch.rand(100, 100, generator=g)
    A = A / A.sum(1, keepdim=True) * 0.99
    b = torch.randn(100, 32, generator=g) * 3
    with pytest.raises(idl.errors.ConvergenceError, match="rounding floor of torch.float32"):
        fixed_point(A, b, method="anderson", tol=1e-7, max_iter=400, per_sample=per_sample)
    X, info = fixed_point(A.double(), b.double(), method="anderson", tol=1e-7, max_iter=400)
    assert info.converged and float(X.abs().max()) > 10  # float64 reaches it
