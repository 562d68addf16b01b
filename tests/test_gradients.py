"""Implicit gradients (paper 000 App. G): gradcheck, unrolled-Picard reference, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _ref import ref_block_max, ref_block_softmax, ref_phi, unrolled_picard
from torch.func import functional_call

import idlkit
from idlkit.activations import BlockMax, Blockwise, LeakyReLU, SoftMax

F64 = torch.float64
PARAMS = ("A", "B", "C", "D", "b", "d")


def _blockwise():
    return Blockwise([(2, "tanh"), (2, SoftMax(2)), (2, "sigmoid")])


def _blockwise_ref(z):
    return torch.cat([ref_phi("tanh")(z[0:2]), ref_block_softmax(z[2:4], 2),
                      ref_phi("sigmoid")(z[4:6])])


# name -> (activation factory, torch reference (column convention), hidden size, l_inf Lipschitz)
ACTS = {
    "relu": (lambda: "relu", ref_phi("relu"), 5, 1.0),
    "leaky_relu": (lambda: LeakyReLU(0.1), ref_phi("leaky_relu", 0.1), 5, 1.0),
    "tanh": (lambda: "tanh", ref_phi("tanh"), 5, 1.0),
    "sigmoid": (lambda: "sigmoid", ref_phi("sigmoid"), 5, 0.25),
    "identity": (lambda: "identity", ref_phi("identity"), 5, 1.0),
    "softmax": (lambda: SoftMax(2), lambda z: ref_block_softmax(z, 2), 4, 0.5),
    "blockmax": (lambda: BlockMax(2), lambda z: ref_block_max(z, 2), 4, 1.0),
    "blockwise": (_blockwise, _blockwise_ref, 6, 1.0),
}
KINKED = {"relu", "leaky_relu", "blockmax"}
P_IN, Q_OUT, BATCH = 3, 2, 3


def _params(seed: int, n: int, lip: float, norm: float = 0.6, A: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    if A is None:
        A = torch.randn(n, n, generator=g, dtype=F64)
        A = A * (norm / lip / float(A.abs().sum(dim=1).max()))
    return {
        "A": A,
        "B": torch.randn(n, P_IN, generator=g, dtype=F64),
        "C": torch.randn(Q_OUT, n, generator=g, dtype=F64),
        "D": torch.randn(Q_OUT, P_IN, generator=g, dtype=F64),
        "b": torch.randn(n, generator=g, dtype=F64),
        "d": torch.randn(Q_OUT, generator=g, dtype=F64),
        "u": torch.randn(BATCH, P_IN, generator=g, dtype=F64),
    }


def _model(act, n: int, solver: str, wellposedness=None, **kw) -> idlkit.ImplicitModel:
    return idlkit.ImplicitModel(P_IN, n, Q_OUT, act, wellposedness=wellposedness,
                                solver=solver, tol=1e-12, max_iter=20_000, dtype=F64, **kw)


def _reference_output(phi, p: dict, iters: int) -> torch.Tensor:
    """y = C x + D u + d with x = phi(A x + B u + b) by unrolled Picard (plain torch)."""
    Z0 = p["B"] @ p["u"].t() + p["b"][:, None]
    X = unrolled_picard(phi, p["A"], Z0, iters)
    return (p["C"] @ X).t() + p["u"] @ p["D"].t() + p["d"]


def _margin_ok(phi_name: str, phi, p: dict, iters: int = 400, margin: float = 1e-3) -> bool:
    """Away from the kinks (ReLU at 0, BlockMax ties) finite differences are meaningful."""
    with torch.no_grad():
        Z0 = p["B"] @ p["u"].t() + p["b"][:, None]
        X = unrolled_picard(phi, p["A"], Z0, iters)
        Z = p["A"] @ X + Z0
    if phi_name == "blockmax":
        zb = Z.reshape(-1, 2, Z.shape[1])
        return bool(((zb[:, 0] - zb[:, 1]).abs() > margin).all())
    if phi_name in ("relu", "leaky_relu"):
        return bool((Z.abs() > margin).all())
    return True


def _good_params(name: str, n: int, lip: float, start: int = 0, **kw) -> dict:
    phi = ACTS[name][1]
    for seed in range(start, start + 200):
        p = _params(seed, n, lip, **kw)
        if _margin_ok(name, phi, p):
            return p
    raise AssertionError("no parameter draw away from the kinks")


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("solver", ["anderson", "picard", "averaged"])
@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "sigmoid", "identity", "softmax",
                                  "blockwise", "blockmax"])
def test_gradcheck_model(name, solver):
    factory, _, n, lip = ACTS[name]
    p = _good_params(name, n, lip, start=17)
    model = _model(factory(), n, solver)

    def f(A, B, C, D, b, d, u):
        return functional_call(model, {"A": A, "B": B, "C": C, "D": D, "b": b, "d": d}, (u,))

    inputs = tuple(p[k].clone().requires_grad_(True) for k in (*PARAMS, "u"))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_model_triangular_solver():
    n = 5
    g = torch.Generator().manual_seed(3)
    A = torch.triu(torch.randn(n, n, generator=g, dtype=F64) * 2.0, 1)  # ||A||_inf > 1
    p = _params(4, n, 1.0, A=A)
    model = _model("tanh", n, "triangular", wellposedness="triangular")

    def f(A, B, C, D, b, d, u):
        return functional_call(model, {"A": A, "B": B, "C": C, "D": D, "b": b, "d": d}, (u,))

    inputs = tuple(p[k].clone().requires_grad_(True) for k in (*PARAMS, "u"))
    # gradcheck perturbs A below the diagonal too: keep A's lower part out of the check by
    # differentiating w.r.t. the strictly upper entries only
    mask = torch.triu(torch.ones(n, n, dtype=F64), 1)

    def f_upper(Au, *rest):
        return f(Au * mask, *rest)

    assert torch.autograd.gradcheck(f_upper, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- unrolled reference


def _compare_with_unrolled(model, phi, p: dict, iters: int, atol: float = 1e-8):
    g = torch.Generator().manual_seed(99)
    w = torch.randn(BATCH, Q_OUT, generator=g, dtype=F64)
    # reference: autograd through an unrolled Picard solve
    ref = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    y_ref = _reference_output(phi, ref, iters)
    (y_ref * w).sum().backward()
    # library: implicit backward
    with torch.no_grad():
        for k in PARAMS:
            getattr(model, k).copy_(p[k])
    u = p["u"].clone().requires_grad_(True)
    model.zero_grad()
    y = model(u)
    torch.testing.assert_close(y, y_ref.detach(), rtol=0, atol=atol)
    (y * w).sum().backward()
    assert model.last_backward_solve is not None and model.last_backward_solve.converged
    for k in PARAMS:
        torch.testing.assert_close(getattr(model, k).grad, ref[k].grad, rtol=1e-7, atol=atol,
                                   msg=lambda m, k=k: f"grad of {k}: {m}")
    torch.testing.assert_close(u.grad, ref["u"].grad, rtol=1e-7, atol=atol,
                               msg=lambda m: f"grad of u: {m}")


@pytest.mark.parametrize("solver", ["picard", "anderson", "averaged"])
@pytest.mark.parametrize("name", sorted(ACTS))
def test_gradients_match_unrolled_picard(name, solver):
    factory, phi, n, lip = ACTS[name]
    p = _good_params(name, n, lip, start=100)
    model = _model(factory(), n, solver)
    _compare_with_unrolled(model, phi, p, iters=300)


@pytest.mark.parametrize("backward_solver", ["picard", "averaged", "anderson"])
def test_backward_solver_choice_does_not_change_gradients(backward_solver):
    factory, phi, n, lip = ACTS["tanh"]
    p = _params(5, n, lip)
    model = _model(factory(), n, "anderson", backward_solver=backward_solver)
    _compare_with_unrolled(model, phi, p, iters=300)
    assert model.last_backward_solve.method == backward_solver


@pytest.mark.parametrize("name", sorted(ACTS))
def test_gradients_triangular_solver_strictly_upper(name):
    """Block strictly upper-triangular A (any norm): J(z) A is nilpotent of degree L (the
    number of blocks), so unrolled Picard and its derivative are exact after 2 L sweeps."""
    factory, phi, n, lip = ACTS[name]
    act = idlkit.get_activation(factory())
    sizes = act.blocks(n).sizes
    blk = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    g = torch.Generator().manual_seed(7)
    A = torch.randn(n, n, generator=g, dtype=F64) * 1.5 * (blk[:, None] < blk[None, :])
    for start in range(0, 2000, 10):
        p = _params(start + 1, n, lip, A=A)
        if _margin_ok(name, phi, p, iters=2 * len(sizes) + 2):
            break
    model = _model(act, n, "triangular")
    _compare_with_unrolled(model, phi, p, iters=2 * len(sizes) + 2)
    assert model.last_solve.method == "triangular"


def _dense_implicit_grads(phi, p: dict, w: torch.Tensor) -> dict:
    """Implicit gradients by dense linear algebra at a root found by bisection-free means.

    x solves x = phi(A x + B u + b); with Psi = diag(phi'(z)) the adjoint of each
    sample is v = (I - Psi A^T)^{-1} Psi C^T w (eq. G.3-G.4), and dL/dA = sum v x^T,
    dL/dB = sum v u^T, dL/db = sum v, dL/du = B^T v + D^T w.
    """
    A, B, C, D = p["A"], p["B"], p["C"], p["D"]
    n = A.shape[0]
    gA, gB = torch.zeros_like(A), torch.zeros_like(B)
    gb, gu = torch.zeros_like(p["b"]), torch.zeros_like(p["u"])
    I = torch.eye(n, dtype=F64)
    for j in range(p["u"].shape[0]):
        x = p["x"][:, j]
        z = (A @ x + B @ p["u"][j] + p["b"]).clone().requires_grad_(True)
        (psi,) = torch.autograd.grad(phi(z).sum(), z)
        v = torch.linalg.solve(I - psi[:, None] * A.t(), psi * (C.t() @ w[j]))
        gA += torch.outer(v, x)
        gB += torch.outer(v, p["u"][j])
        gb += v
        gu[j] = B.t() @ v + D.t() @ w[j]
    return {"A": gA, "B": gB, "b": gb, "u": gu,
            "C": w.t() @ p["x"].t(), "D": w.t() @ p["u"], "d": w.sum(dim=0)}


@pytest.mark.parametrize("name,slope", [("relu", 0.0), ("leaky_relu", 0.1), ("identity", 0.0)])
def test_gradients_triangular_solver_with_diagonal(name, slope):
    """Upper-triangular A with diag(A) < 1 and ||A||_inf > 1 (Remark 2.5): Picard need not
    converge, so the reference is the dense implicit-gradient formula at a root obtained by
    scalar back-substitution."""
    n = 5
    phi = ref_phi(name, slope)
    rng = np.random.default_rng(11)
    for _ in range(100):
        A = np.triu(rng.standard_normal((n, n)) * 1.5, 1)
        A[np.arange(n), np.arange(n)] = rng.uniform(-3.0, 0.9, size=n)
        p = _params(int(rng.integers(1 << 30)), n, 1.0, A=torch.tensor(A))
        # back-substitution, sample by sample, solving each scalar piecewise-linear equation
        Zb = (p["B"] @ p["u"].t() + p["b"][:, None]).numpy()
        X = np.zeros((n, BATCH))
        Zfin = np.zeros((n, BATCH))
        for j in range(BATCH):
            for i in range(n - 1, -1, -1):
                c = Zb[i, j] + A[i, i + 1:] @ X[i + 1:, j]
                a = A[i, i]
                pos = c / (1 - a)  # branch z > 0: x = a x + c
                s = 1.0 if name == "identity" else slope
                neg = s * c / (1 - s * a)  # branch z <= 0: x = s (a x + c)
                X[i, j] = pos if a * pos + c > 0 else neg
                Zfin[i, j] = a * X[i, j] + c
        if np.abs(Zfin).min() > 1e-3:
            break
    assert np.abs(A).sum(axis=1).max() > 1
    p["x"] = torch.tensor(X)
    w = torch.randn(BATCH, Q_OUT, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = _dense_implicit_grads(phi, p, w)
    act = LeakyReLU(slope) if name == "leaky_relu" else name
    model = _model(act, n, "triangular")
    with torch.no_grad():
        for k in PARAMS:
            getattr(model, k).copy_(p[k])
    u = p["u"].clone().requires_grad_(True)
    x = model.equilibrium(u)
    torch.testing.assert_close(x.detach().t(), p["x"], rtol=1e-10, atol=1e-10)
    y = model(u)
    (y * w).sum().backward()
    for k in PARAMS:
        torch.testing.assert_close(getattr(model, k).grad, ref[k], rtol=1e-8, atol=1e-9,
                                   msg=lambda m, k=k: f"grad of {k}: {m}")
    torch.testing.assert_close(u.grad, ref["u"], rtol=1e-8, atol=1e-9)


def test_gradient_wrt_image_shaped_input():
    factory, phi, n, lip = ACTS["tanh"]
    p = _params(8, n, lip)
    model = _model(factory(), n, "anderson")
    with torch.no_grad():
        for k in PARAMS:
            getattr(model, k).copy_(p[k])
    u_img = p["u"].reshape(BATCH, 1, 3, 1).clone().requires_grad_(True)
    model(u_img).sum().backward()
    ref = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    _reference_output(phi, ref, 300).sum().backward()
    assert u_img.grad.shape == u_img.shape
    torch.testing.assert_close(u_img.grad.reshape(BATCH, P_IN), ref["u"].grad, rtol=1e-7,
                               atol=1e-9)


# ----------------------------------------------------------------------------- memory


def _count_saved(model, u) -> tuple[int, int]:
    count, nbytes = 0, 0

    def pack(t):
        nonlocal count, nbytes
        count += 1
        nbytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(u)
    y.sum().backward()
    return count, nbytes


@pytest.mark.parametrize("solver", ["picard", "anderson", "averaged"])
def test_backward_does_not_keep_an_unrolled_graph(solver):
    n = 16
    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, P_IN, generator=g, dtype=F64, requires_grad=True)
    counts = {}
    for tol in (1e-2, 1e-12):
        torch.manual_seed(1)
        model = idlkit.ImplicitModel(P_IN, n, Q_OUT, "tanh", wellposedness="inf", kappa=0.99,
                                     solver=solver, tol=tol, max_iter=20_000, dtype=F64)
        with torch.no_grad():
            model.B.mul_(5.0)
        counts[tol] = (_count_saved(model, u), model.last_solve.iterations)
    (c_lo, it_lo), (c_hi, it_hi) = counts[1e-2], counts[1e-12]
    assert it_hi > 3 * it_lo, (it_lo, it_hi)
    assert c_lo == c_hi, (c_lo, c_hi)
    # only O(n^2 + n m) numbers: A, the state and the pre-activation, plus the affine maps
    # (an unrolled graph would keep one (n, m) state per iteration)
    n_params = sum(p.numel() for p in model.parameters())
    budget = 2 * 8 * (n_params + 3 * n * u.shape[0] + u.numel())
    assert c_hi[1] <= budget, (c_hi, budget)
