"""The robustness bounds with every activation of idlkit.activations and with Product gates.

Each bound of :mod:`idlkit.robust` either holds for a map (it needs only Lipschitz continuity:
Thm 4.1-4.4, eq. 4.3/4.8, §4.4, Thm 5.1 for componentwise maps, IBP through interval images) or
refuses it with a typed error naming the hypothesis (monotone for the mu_inf bound, componentwise
for Thm 5.1, ReLU for the LP/SDP relaxations, triangular for IBP). Here the bounds are attacked:

* random well-posed models (``lambda_pf(Gamma N(A))`` and ``gamma_inf ||A||_inf`` at most 1/2) for
  every new activation, non-monotone (valley), non-CONE (``gamma > 1``), shifted (``phi(0) != 0``)
  or Blockwise, and for Blockwise maps with :class:`~idlkit.activations.Product` pairs (§2.4);
* strictly (block) triangular models like converted networks: layered componentwise nets and
  LSTM-like nets of Product gate pairs (``sigmoid * tanh``, ``sigmoid * Hardtanh`` for a bounded
  cell, ``sigmoid * sigmoid`` with ``phi(0) = 1/4``), dense and sparse;

with uniform samples of the input box, its vertices, k-sparse samples, and every iterate of a
projected sign-gradient ascent (PGD) of ``+-x_i`` and ``+-y_j`` for each coordinate. Each test
checks at least 10^4 inputs and asserts 0 violations. Equilibria are float64 (iterative solves
to 1e-14, so the bounds of Thm 4.1-4.4 are compared with a 1e-9 tolerance); IBP is compared with
no tolerance at all (its intervals are rounded outward, and triangular models are solved exactly
by levels).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
import idlkit.robust as R
from idlkit.activations import (
    CELU,
    ELU,
    GELU,
    SELU,
    BlockMax,
    Blockwise,
    Centered,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LogSigmoid,
    Mish,
    Product,
    ReLU6,
    SiLU,
    SoftMax,
    Softplus,
    Softshrink,
    Softsign,
    Tanh,
    Tanhshrink,
)
from idlkit.errors import ConfigurationError
from idlkit.wellposed import blip_norm_matrix, pf_eigenvalue

F64 = torch.float64
TOL = 1e-9
SIGMA = 0.3
P, Q = 5, 3

# every new componentwise map, with the properties that matter to the bounds
ACTS = {
    "gelu": GELU,                                  # valley, gamma 1.129 > 1
    "gelu_tanh": lambda: GELU("tanh"),
    "silu": SiLU,
    "mish": Mish,
    "hardswish": Hardswish,                        # valley, gamma 3/2
    "elu": ELU,
    "elu_neg": lambda: ELU(-0.5),                  # valley at 0
    "elu2": lambda: ELU(2.0),                      # monotone, gamma 2
    "celu": lambda: CELU(0.7),
    "selu": SELU,                                  # monotone, gamma 1.758
    "softplus": lambda: Softplus(2.0),             # phi(0) = log(2) / 2
    "softsign": Softsign,
    "hardtanh": lambda: Hardtanh(0.2, 1.5),        # phi(0) = 0.2
    "relu6": ReLU6,
    "hardsigmoid": Hardsigmoid,                    # phi(0) = 1/2, gamma 1/6
    "logsigmoid": LogSigmoid,                      # phi(0) = -log 2
    "tanhshrink": Tanhshrink,
    "softshrink": lambda: Softshrink(0.3),
}
VALLEY = ("gelu", "gelu_tanh", "silu", "mish", "hardswish", "elu_neg")
# block maps on n = 10 states of the general models
BLOCKED = {
    "mixed_monotone": lambda: Blockwise([(4, Softplus()), (3, SELU()), (3, Hardsigmoid())]),
    "mixed_valley": lambda: Blockwise([(5, GELU()), (5, Tanh())]),
    "product": lambda: Blockwise([(4, Product("sigmoid", "tanh")), (2, Product("sigmoid", "sigmoid")),
                                  (4, Tanh())]),
}
ALL = {**ACTS, **BLOCKED}


# ----------------------------------------------------------------------------- models

def general_model(seed: int, act, n: int = 10, kappa: float = 0.5) -> idl.ImplicitModel:
    """Dense random model with ``lambda_pf(Gamma N(A)) <= kappa`` and ``gamma_inf ||A||_inf <= kappa``
    (so Picard contracts), solved to 1e-14."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    bs = act.blocks(n)
    pf = pf_eigenvalue(blip_norm_matrix(A, bs.sizes, bs.norms, bs.gammas))
    A = A * (kappa / max(pf, act.lipschitz_inf * float(A.abs().sum(1).max())))
    B = torch.randn(n, P, generator=g, dtype=F64)
    C = torch.randn(Q, n, generator=g, dtype=F64)
    D = torch.randn(Q, P, generator=g, dtype=F64) * 0.3
    b, d = torch.randn(n, generator=g, dtype=F64) * 0.5, torch.randn(Q, generator=g, dtype=F64)
    return idl.ImplicitModel.from_matrices(A, B, C, D, b, d, activation=act, wellposedness=None,
                                           solver="picard", tol=1e-14, max_iter=5000,
                                           backward_solver="picard")


def _triangular(seed: int, act, segments: list[tuple[int, list[int]]], sparse: bool = False
                ) -> idl.ImplicitModel:
    """Strictly block upper-triangular model, states stacked top layer first (as the converter):
    ``segments[i] = (size, reads)``: the rows of segment ``i`` read the segments ``reads`` (all
    after ``i``) and the input."""
    g = torch.Generator().manual_seed(seed)
    sizes = [s for s, _ in segments]
    offs = np.concatenate(([0], np.cumsum(sizes)))
    n = int(offs[-1])
    A = torch.zeros(n, n, dtype=F64)
    for i, (size, reads) in enumerate(segments):
        for j in reads:
            assert j > i
            fan = sizes[j]
            A[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] = torch.randn(size, fan, generator=g, dtype=F64) * (
                1.5 / fan ** 0.5)
    B = torch.randn(n, P, generator=g, dtype=F64)
    C = torch.randn(Q, n, generator=g, dtype=F64) / n ** 0.5
    D = torch.randn(Q, P, generator=g, dtype=F64) * 0.3
    b, d = torch.randn(n, generator=g, dtype=F64) * 0.5, torch.randn(Q, generator=g, dtype=F64)
    if sparse:
        A = A * (torch.rand(n, n, generator=g, dtype=F64) < 0.6)
        B = B * (torch.rand(n, P, generator=g, dtype=F64) < 0.6)
        A, B = A.to_sparse_csr(), B.to_sparse_csr()
    return idl.ImplicitModel.from_matrices(A, B, C, D, b, d, activation=act, wellposedness="triangular",
                                           solver="triangular")


def layered_model(seed: int, act) -> idl.ImplicitModel:
    """A 3-layer feed-forward net (4 <- 5 <- 5 units, a skip connection) in implicit form."""
    return _triangular(seed, act, [(4, [1, 2]), (5, [2]), (5, [])])


def lstm_like_model(seed: int, sparse: bool = False) -> idl.ImplicitModel:
    """Gate pairs as in a converted LSTM/GRU cell (§3.6): ``sigmoid(a) * Hardtanh_[-2,2](c)`` (an
    output gate on a bounded cell) reads ``sigmoid * tanh`` pairs (input gate times candidate) and
    a tanh layer, which reads ``sigmoid * sigmoid`` pairs (``phi(0) = 1/4``: the shift of §3.1)."""
    act = Blockwise([(6, Product("sigmoid", Hardtanh(-2.0, 2.0))), (8, Product("sigmoid", "tanh")),
                     (4, Tanh()), (4, Product("sigmoid", "sigmoid"))])
    return _triangular(seed, act, [(6, [1, 2]), (8, [2, 3]), (4, [3]), (4, [])], sparse=sparse)


# ----------------------------------------------------------------------------- attacks

def box_samples(rng: np.random.Generator, U0: torch.Tensor, sigma: float, m: int, k: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` inputs around each row of ``U0``: half uniform in the box, half vertices; with ``k``,
    ``k`` random coordinates perturbed only. Returns the inputs and the row of ``U0`` they belong to."""
    b, p = U0.shape
    Dl = rng.uniform(-1, 1, (b, m, p))
    Dl[:, : m // 2] = np.sign(Dl[:, : m // 2])
    if k is not None:
        keep = np.argsort(rng.random((b, m, p)), axis=2) < k
        Dl = Dl * keep
    U = U0[:, None] + torch.from_numpy(Dl) * sigma
    return U.reshape(-1, p), torch.arange(b).repeat_interleave(m)


def pgd_inputs(model: idl.ImplicitModel, U0: torch.Tensor, sigma: float, steps: int = 10, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected sign-gradient ascent of ``+x_i, -x_i, +y_j, -y_j`` for every coordinate (one batch
    row per target and nominal input), from random points of the box, with steps ``2 sigma 0.6^t``
    (the first jumps to the vertex the gradient points at). Every iterate is returned."""
    n, q = model.hidden, model.out_features
    b, p = U0.shape
    T = 2 * (n + q)
    sign = torch.tensor([1.0, -1.0], dtype=F64).repeat_interleave(n + q).repeat(b)
    idx = torch.arange(n + q).repeat(2 * b)
    base = U0.repeat_interleave(T, 0)
    g = torch.Generator().manual_seed(seed)
    U = base + (torch.rand(base.shape, generator=g, dtype=F64) * 2 - 1) * sigma
    out = [U]
    for t in range(steps):
        U = U.detach().requires_grad_(True)
        y, x = model.forward_with_state(U)
        v = torch.cat([x, y], 1).gather(1, idx[:, None])[:, 0]
        (grad,) = torch.autograd.grad((sign * v).sum(), U)
        U = torch.minimum(torch.maximum(U.detach() + 2 * sigma * 0.6 ** t * grad.sign(), base - sigma),
                          base + sigma)
        out.append(U)
    return torch.cat(out), torch.arange(b).repeat_interleave(T).repeat(steps + 1)


def block_norms(V: torch.Tensor, act, n: int) -> torch.Tensor:
    """``eta(v)``: the ``p_l`` norm of each block of each row of ``V`` (``(m, n)`` -> ``(m, L)``)."""
    bs = act.blocks(n)
    out, s = [], 0
    for size, p in zip(bs.sizes, bs.norms, strict=True):
        blk = V[:, s:s + size]
        out.append(blk.abs().amax(1) if p == float("inf") else blk.norm(p=p, dim=1))
        s += size
    return torch.stack(out, 1)


def _over(v: torch.Tensor, bound: torch.Tensor, scale: torch.Tensor | float = 1.0) -> int:
    return int((v > bound + TOL * (1 + scale)).sum())


# ----------------------------------------------------------------------------- general models

@pytest.mark.parametrize("name", list(ALL))
def test_bounds_hold_for_every_activation(name):
    """Thm 4.1-4.4 (box, block, cardinality), eq. 4.3, the sensitivity matrix, the Lipschitz
    bounds (eq. 4.8, mu_inf where monotone, ||S||), the worst-case squared loss (§4.4) and
    Thm 5.1 (componentwise maps) against >= 10^4 sampled and PGD inputs: 0 violations."""
    act = ALL[name]()
    model = general_model(1, act)
    n = model.hidden
    U0 = torch.randn(4, P, generator=torch.Generator().manual_seed(2), dtype=F64)
    rng = np.random.default_rng(3)
    Us, own_s = box_samples(rng, U0, SIGMA, 2000)
    Up, own_p = pgd_inputs(model, U0, SIGMA)
    Uk, own_k = box_samples(rng, U0, SIGMA, 500, k=2)
    U, own = torch.cat([Us, Up]), torch.cat([own_s, own_p])
    with torch.no_grad():
        X0, Y0 = model.equilibrium(U0), model(U0)
        X, Y = model.equilibrium(U), model(U)
        Xk, Yk = model.equilibrium(Uk), model(Uk)
    dX, dY, dU = X - X0[own], Y - Y0[own], U - U0[own]

    sx, sy = R.state_box_bound(model, SIGMA), R.output_box_bound(model, SIGMA)
    eta = R.state_block_bound(model, SIGMA)
    lin = R.state_linf_bound(model, SIGMA)
    S = R.sensitivity_matrix(model)
    viol = _over(dX.abs(), sx) + _over(dY.abs(), sy) + _over(dX.abs().amax(1), torch.tensor(lin))
    viol += _over(block_norms(dX, act, n), eta) + _over(dY.abs(), dU.abs() @ S.T)
    # cardinality set (eq. 4.2) with k = 2: the refined bounds, on the 2-sparse samples
    viol += _over((Xk - X0[own_k]).abs(), R.state_box_bound(model, SIGMA, k=2))
    viol += _over((Yk - Y0[own_k]).abs(), R.output_box_bound(model, SIGMA, k=2))
    assert torch.all(R.state_box_bound(model, SIGMA, k=2) <= sx * (1 + 1e-12))
    # Lipschitz bounds: every finite one; mu_inf exactly where the map is monotone componentwise
    lb = R.lipschitz_bounds(model)
    monotone_cw = name not in VALLEY and name not in ("mixed_valley", "product")
    assert np.isfinite(lb.mu) == monotone_cw
    ratio = dY.abs().amax(1) / dU.abs().amax(1).clamp_min(1e-300)
    for L in (lb.inf, lb.mu, lb.sensitivity):
        if np.isfinite(L):
            viol += _over(ratio, torch.tensor(L), 0.0)
    # worst-case squared error (§4.4)
    Yt = torch.randn(4, Q, generator=torch.Generator().manual_seed(4), dtype=F64)
    wc = R.worst_case_loss(model, U0, Yt, SIGMA)
    viol += _over(((Y - Yt[own]) ** 2).sum(1), wc.bound[own], wc.bound[own])
    trials = U.shape[0] + Uk.shape[0]
    # Thm 5.1: |x(A) - x(A0)| over perturbed matrices |A - A0| <= E (componentwise maps only)
    if name == "product":
        with pytest.raises(ConfigurationError, match="componentwise"):
            R.model_error_bound(model, 0.01, U0)
    else:
        E = 0.05 * model.A.detach().abs() + 1e-3
        Um = Us[::4]
        bnd = R.model_error_bound(model, E, Um)
        with torch.no_grad():
            Xm = model.equilibrium(Um)
            g = torch.Generator().manual_seed(5)
            for _ in range(4):
                pert = general_model(1, act)
                sgn = torch.where(torch.rand(n, n, generator=g, dtype=F64) < 0.5, -1.0, 1.0)
                pert.A.copy_(model.A + E * sgn * torch.rand(n, n, generator=g, dtype=F64) ** 0.2)
                viol += _over((pert.equilibrium(Um) - Xm).abs(), bnd)
                trials += Um.shape[0]
    assert trials >= 10_000
    assert viol == 0, f"{name}: {viol} violations in {trials} trials"


# ----------------------------------------------------------------------------- triangular models

TRIANGULAR = {**{k: (lambda f=f: layered_model(11, f())) for k, f in ACTS.items()},
              "mixed_valley": lambda: layered_model(11, Blockwise([(4, GELU()), (5, Hardswish()),
                                                                   (5, ELU(-0.5))])),
              "centered_softplus": lambda: layered_model(11, Centered(Softplus())),  # a user's phi - phi(0)
              "softmax_blockmax": lambda: _triangular(14, Blockwise([(4, SoftMax(4)), (6, BlockMax(3)),
                                                                       (5, Tanh())]),
                                                      [(4, [1, 2]), (6, [2]), (5, [])]),
              "lstm_like": lambda: lstm_like_model(12),
              "lstm_like_sparse": lambda: lstm_like_model(13, sparse=True)}


@pytest.mark.parametrize("name", list(TRIANGULAR))
def test_ibp_and_box_bounds_on_triangular_models(name):
    """IBP (every map through its interval image) contains every sampled and PGD state and output,
    with no tolerance; so do the Thm 4.1-4.4 box and the sensitivity matrix (tolerance 1e-9). IBP
    intervals are never wider than the Thm 4.1 box (``2 sigma_x``, ``2 S sigma_u``): for
    componentwise maps by induction over the levels (an interval image is at most ``gamma`` times
    the pre-activation's width, the recursion of Thm 4.1); for the Product, SoftMax and BlockMax
    blocks (Thm 4.2's l1/l_inf block norms) measured on these models, not proved."""
    model = TRIANGULAR[name]()
    U0 = torch.randn(4, P, generator=torch.Generator().manual_seed(6), dtype=F64)
    rng = np.random.default_rng(7)
    Us, own_s = box_samples(rng, U0, SIGMA, 2200)
    Up, own_p = pgd_inputs(model, U0, SIGMA)
    U, own = torch.cat([Us, Up]), torch.cat([own_s, own_p])
    ib = R.interval_bounds(model, U0, SIGMA)
    bb = R.box_bounds(model, U0, SIGMA)
    with torch.no_grad():
        X, Y = model.equilibrium(U), model(U)
    viol = int(((X < ib.x_lower[own]) | (X > ib.x_upper[own])).sum())
    viol += int(((Y < ib.y_lower[own]) | (Y > ib.y_upper[own])).sum())
    viol += _over((X - bb.x0[own]).abs(), bb.sigma_x) + _over((Y - bb.y0[own]).abs(), bb.sigma_y)
    assert U.shape[0] >= 10_000
    assert viol == 0, f"{name}: {viol} violations in {U.shape[0]} trials"
    assert ib.sweeps == (4 if name.startswith("lstm") else 3)
    # IBP is at least as tight as the implicit box on these feed-forward models
    assert torch.all(ib.x_upper - ib.x_lower <= 2 * bb.sigma_x * (1 + 1e-9) + 1e-12)
    assert torch.all(ib.y_upper - ib.y_lower <= 2 * bb.sigma_y * (1 + 1e-9) + 1e-12)
    c = R.compare_bounds(model, U0, SIGMA)
    assert torch.all(c.ibp_output_width <= c.box_output_width * (1 + 1e-9))
    assert c.box_tighter_fraction == 0.0


def test_softmax_interval_is_exact_where_sums_cancel():
    """Regression: the extremes of a softmax entry whose own exponential dominates the block (the
    old ``sum(e) - e_i`` lost every digit of the other terms, an error of ~1e-7) or underflows."""
    lo = torch.tensor([[-20.0], [-30.0], [-30.0]], dtype=F64)
    hi = torch.tensor([[0.0], [-30.0], [-30.0]], dtype=F64)
    a, b = SoftMax(3).interval(lo, hi)
    torch.testing.assert_close(a[0, 0], 1 / (1 + 2 * torch.exp(torch.tensor(-10.0, dtype=F64))),
                               rtol=1e-15, atol=0)
    lo2, hi2 = torch.tensor([[-750.0], [-740.0]], dtype=F64), torch.tensor([[-750.0], [0.0]], dtype=F64)
    a2, b2 = SoftMax(2).interval(lo2, hi2)  # e^-750 underflows; the upper end of entry 0 is e^-10
    torch.testing.assert_close(b2[0, 0], torch.sigmoid(torch.tensor(-10.0, dtype=F64)), rtol=1e-14, atol=0)


def test_ibp_needs_no_upper_triangular_order():
    """IBP sweeps by the dependency levels of ``A``: a model whose states are listed bottom layer
    first (strictly *lower* triangular ``A``, solved by Picard) gets the same intervals, permuted."""
    model = layered_model(51, GELU())
    perm = torch.arange(model.hidden - 1, -1, -1)
    with torch.no_grad():
        A, B, C = model.A[perm][:, perm], model.B[perm], model.C[:, perm]
        low = idl.ImplicitModel.from_matrices(A, B, C, model.D, model.b[perm], model.d, activation=GELU(),
                                              wellposedness=None, solver="picard", tol=1e-15)
    U0 = torch.randn(3, P, generator=torch.Generator().manual_seed(10), dtype=F64)
    ib, il = R.interval_bounds(model, U0, SIGMA), R.interval_bounds(low, U0, SIGMA)
    assert il.sweeps == ib.sweeps == 3
    torch.testing.assert_close(il.x_lower, ib.x_lower[:, perm], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(il.y_upper, ib.y_upper, rtol=1e-13, atol=1e-13)


def test_ibp_of_a_point_box_is_the_state_up_to_rounding():
    """``sigma_u = 0``: the IBP interval is the computed state itself, widened by rounding only."""
    model = lstm_like_model(21)
    U0 = torch.randn(3, P, generator=torch.Generator().manual_seed(8), dtype=F64)
    ib = R.interval_bounds(model, U0, 0.0)
    with torch.no_grad():
        X, Y = model.equilibrium(U0), model(U0)
    assert torch.all((ib.x_lower <= X) & (X <= ib.x_upper))
    assert torch.all((ib.y_lower <= Y) & (Y <= ib.y_upper))
    assert float((ib.x_upper - ib.x_lower).max()) < 1e-10
    assert float((ib.y_upper - ib.y_lower).max()) < 1e-10


def test_attacks_run_on_new_activations_and_stay_in_the_certified_box():
    """The gradient and sensitivity attacks work for any differentiable model (GELU, Product); the
    outputs they reach stay inside the certified box (Thm 4.3/4.4)."""
    for model in (general_model(31, GELU()), lstm_like_model(32)):
        U0 = torch.randn(16, P, generator=torch.Generator().manual_seed(9), dtype=F64)
        with torch.no_grad():
            labels = model(U0).argmax(1)
        sy = R.output_box_bound(model, 0.2)
        for method in ("sensitivity", "saliency", "fgsm"):
            res = R.attack(model, U0, labels, R.Budget(epsilon=0.2), method=method)
            assert float((res.u_adv - U0).abs().max()) <= 0.2 + 1e-12
            with torch.no_grad():
                dY = (model(res.u_adv) - model(U0)).abs()
            assert _over(dY, sy) == 0


# ----------------------------------------------------------------------------- refusals

def test_refusals_are_typed_and_name_the_hypothesis():
    u0 = torch.zeros(P, dtype=F64)
    gelu, prod = general_model(41, GELU()), general_model(42, BLOCKED["product"]())
    for model in (gelu, prod, layered_model(43, Softplus())):
        for call in (lambda m: R.lp_attack(m, u0, 0.1), lambda m: R.lp_state_bounds(m, u0, 0.1),
                     lambda m: R.sdp_attack(m, u0, 0.1),
                     lambda m: R.attack(m, u0[None], torch.tensor([0]), R.Budget(epsilon=0.1), method="lp")):
            with pytest.raises(ConfigurationError, match="ReLU") as err:
                call(model)
            assert model.activation.name in str(err.value) and "state_box_bound" in str(err.value)
    for name in VALLEY:  # the mu_inf Lipschitz bound needs phi' >= 0
        with pytest.raises(ConfigurationError, match="monotone") as err:
            R.lipschitz_bound(general_model(44, ACTS[name]()), "mu")
        assert "measure='inf'" in str(err.value) and "slopes down to" in str(err.value)
    with pytest.raises(ConfigurationError, match="not componentwise"):
        R.lipschitz_bound(prod, "mu")
    with pytest.raises(ConfigurationError, match="componentwise") as err:
        R.model_error_bound(prod, 0.01, u0[None])
    assert "Product" in str(err.value) and "state_box_bound" in str(err.value)
    with pytest.raises(ConfigurationError, match="form='blip'"):
        R.sensitivity(prod, form="cone")
    for model in (gelu, prod):  # IBP needs a sweep order
        with pytest.raises(ConfigurationError, match="triangular") as err:
            R.interval_bounds(model, u0[None], 0.1)
        assert "state_box_bound" in str(err.value)
    # what works instead: a Blockwise of monotone componentwise maps gets the mu bound and Thm 4.3
    mono = general_model(45, BLOCKED["mixed_monotone"]())
    assert np.isfinite(R.lipschitz_bound(mono, "mu"))
    assert R.sensitivity(mono, form="cone").form == "cone"
