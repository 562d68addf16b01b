"""The activations of common networks and the multiplicative map (paper 000 §2.1, §2.4, §3.6).

Every constant an activation declares is measured here independently: values against
``torch.nn`` modules, derivatives against autograd, slope ranges and Lipschitz constants against
dense grids and random difference quotients (each constant must hold *and* be approached),
value ranges and valleys against dense sampling, interval images by sampling inside random
boxes, and the Product map's Jacobian, l1 Lipschitz constant (§2.4) and BLIP structure
(Thm 2.7) by brute force.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import idlkit as idl
from idlkit import activations as acts
from idlkit import wellposed as wp
from idlkit.errors import ConfigurationError

F64 = torch.float64

# name -> (our map, the torch module it must equal, kinks where phi' jumps)
CASES = {
    "gelu": (lambda: acts.GELU(), lambda: nn.GELU(), ()),
    "gelu_tanh": (lambda: acts.GELU("tanh"), lambda: nn.GELU(approximate="tanh"), ()),
    "silu": (acts.SiLU, nn.SiLU, ()),
    "mish": (acts.Mish, nn.Mish, ()),
    "hardswish": (acts.Hardswish, nn.Hardswish, (-3.0, 3.0)),
    "elu": (acts.ELU, nn.ELU, (0.0,)),
    "elu_2.5": (lambda: acts.ELU(2.5), lambda: nn.ELU(2.5), (0.0,)),
    "elu_neg": (lambda: acts.ELU(-0.5), lambda: nn.ELU(-0.5), (0.0,)),
    "celu_0.7": (lambda: acts.CELU(0.7), lambda: nn.CELU(0.7), ()),
    "selu": (acts.SELU, nn.SELU, (0.0,)),
    "softplus": (acts.Softplus, nn.Softplus, (20.0,)),
    "softplus_2_5": (lambda: acts.Softplus(2.0, 5.0), lambda: nn.Softplus(2.0, 5.0), (2.5,)),
    "softsign": (acts.Softsign, nn.Softsign, (0.0,)),
    "hardtanh": (lambda: acts.Hardtanh(-2.0, 0.5), lambda: nn.Hardtanh(-2.0, 0.5), (-2.0, 0.5)),
    "hardtanh_pos": (lambda: acts.Hardtanh(0.5, 2.0), lambda: nn.Hardtanh(0.5, 2.0), (0.5, 2.0)),
    "relu6": (acts.ReLU6, nn.ReLU6, (0.0, 6.0)),
    "hardsigmoid": (acts.Hardsigmoid, nn.Hardsigmoid, (-3.0, 3.0)),
    "logsigmoid": (acts.LogSigmoid, nn.LogSigmoid, ()),
    "tanhshrink": (acts.Tanhshrink, nn.Tanhshrink, ()),
    "softshrink": (lambda: acts.Softshrink(0.3), lambda: nn.Softshrink(0.3), (-0.3, 0.3)),
}
FAR = torch.tensor([1e3, 1e6, 1e9, 1e12], dtype=F64)
GRID = torch.cat([-FAR.flip(0), torch.linspace(-40.0, 40.0, 800_001, dtype=F64), FAR])


def _away_from(z: torch.Tensor, kinks: tuple[float, ...], gap: float = 1e-6) -> torch.Tensor:
    keep = torch.ones_like(z, dtype=torch.bool)
    for k in kinks:
        keep &= (z - k).abs() > gap
    return z[keep]


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_equals_torch_module(case):
    ours, theirs, _ = CASES[case]
    z = torch.randn(7, 9, dtype=F64) * 8
    torch.testing.assert_close(ours()(z), theirs()(z), rtol=0, atol=0)
    torch.testing.assert_close(ours()(z.float()), theirs()(z.float()), rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_derivative_matches_autograd(case):
    ours, theirs, kinks = CASES[case]
    z = _away_from(torch.cat([torch.randn(2000, dtype=F64) * 6, GRID[::997]]), kinks)
    zz = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(theirs()(zz).sum(), zz)
    # torch's CELU backward rebuilds exp(z / alpha) from its output (expm1 + 1): 1e-8 off
    # and torch's hardsigmoid backward multiplies by a float32 1/6
    rtol = 1e-6 if case.startswith(("celu", "hardsigmoid")) else 1e-10
    torch.testing.assert_close(ours().derivative(z), g, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_slope_range_holds_and_is_attained(case):
    act = CASES[case][0]()
    d = act.derivative(GRID)
    assert float(d.min()) >= act.slope_min and float(d.max()) <= act.slope_max
    assert float(d.min()) <= act.slope_min + 1e-6 and float(d.max()) >= act.slope_max - 1e-6
    assert act.lipschitz == max(abs(act.slope_min), abs(act.slope_max))
    assert act.lipschitz_inf == act.lipschitz
    assert act.monotone == (float(d.min()) >= 0)
    assert act.is_cone == (act.lipschitz <= 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lipschitz_constant_holds_on_random_pairs(case):
    act = CASES[case][0]()
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200_000, generator=g, dtype=F64) * 6
    b = a + torch.randn(200_000, generator=g, dtype=F64) * torch.rand(200_000, generator=g, dtype=F64) ** 4
    ratio = (act(a) - act(b)).abs() / (a - b).abs().clamp_min(1e-300)
    jump = 0.0
    if isinstance(act, acts.Softplus):  # torch's switch to z at beta z > threshold jumps down
        jump = math.log1p(math.exp(-act.threshold)) / act.beta
    rounding = 4 * torch.finfo(F64).eps * torch.maximum(act(a).abs(), act(b).abs())
    assert bool(((act(a) - act(b)).abs()
                 <= act.lipschitz * (a - b).abs() * (1 + 1e-12) + jump + rounding + 1e-300).all())
    assert float(ratio.max()) > 0.98 * act.lipschitz


@pytest.mark.parametrize("case", sorted(CASES))
def test_value_range_and_valley(case):
    act = CASES[case][0]()
    v = act(GRID)
    lo, hi = act.value_range
    assert float(v.min()) >= lo and float(v.max()) <= hi
    if math.isfinite(lo):
        assert float(v.min()) <= lo + 1e-6
    if math.isfinite(hi):
        assert float(v.max()) >= hi - 1e-6
    assert act.bound == max(abs(lo), abs(hi))
    if act.monotone:
        assert act.valley is None
    else:  # decreasing up to z*, increasing after: one minimum, phi(z*) <= every value
        z_star, v_min = act.valley
        assert v_min <= float(v.min()) and float(v.min()) - v_min < 1e-9
        dv = torch.diff(v)
        assert bool((dv[GRID[1:] < z_star - 1e-4] <= 1e-15).all())
        assert bool((dv[GRID[:-1] > z_star + 1e-4] >= -1e-15).all())


@pytest.mark.parametrize("case", sorted(CASES))
def test_interval_image_contains_samples_and_is_attained(case):
    act = CASES[case][0]()
    g = torch.Generator().manual_seed(2)
    lo = torch.randn(300, 1, generator=g, dtype=F64) * 5
    hi = lo + torch.rand(300, 1, generator=g, dtype=F64) * 6
    t = torch.linspace(0, 1, 2001, dtype=F64)[None, :]
    z = lo + (hi - lo) * t
    a, b = act.interval(lo, hi)
    v = act(z)
    jump = act.jump if isinstance(act, acts.Softplus) else 0.0  # widened by torch's drop
    assert bool((v >= a - 1e-14).all()) and bool((v <= b + 1e-14).all())
    step = act.lipschitz * (hi - lo) / 2000  # sampling resolution of the image
    assert bool((v.min(dim=1, keepdim=True).values - a <= step + jump + 1e-12).all())
    assert bool((b - v.max(dim=1, keepdim=True).values <= step + jump + 1e-12).all())


@pytest.mark.parametrize("case", sorted(CASES))
def test_phi_zero_is_shifted_and_the_model_solves_the_original_equation(case):
    act = CASES[case][0]()
    zero = float(act(torch.zeros(1, 1, dtype=F64)))
    assert isinstance(act.centered(3), acts.Centered) == (zero != 0)
    torch.manual_seed(0)
    model = idl.ImplicitModel(4, 6, 3, activation=act, wellposedness="inf", kappa=0.8,
                              dtype=F64, tol=1e-12)
    with torch.no_grad():
        model.b.normal_()
    u = torch.randn(5, 4, dtype=F64)
    x = model.equilibrium(u)
    resid = x - act((x @ model.A.T + u @ model.B.T + model.b).T).T
    assert float(resid.abs().max()) < 1e-10


@pytest.mark.parametrize("case", sorted(CASES))
def test_model_gradients_match_finite_differences(case):
    act = CASES[case][0]()
    torch.manual_seed(3)
    model = idl.ImplicitModel(3, 5, 2, activation=act, wellposedness="inf", kappa=0.7,
                              dtype=F64, tol=1e-13, backward_tol=1e-13)
    u = torch.randn(4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: model(v), (u,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trip_and_registry(case):
    act = CASES[case][0]()
    again = acts.get_activation(act.config())
    assert type(again) is type(act) and again.config() == act.config()
    z = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(again(z), act(z))


def test_names_and_aliases():
    assert acts.get_activation("gelu_tanh").approximate == "tanh"
    assert isinstance(acts.get_activation("swish"), acts.SiLU)
    assert acts.get_activation("hardtanh", min_val=0.0, max_val=3.0).value_range == (0.0, 3.0)
    for bad in (dict(min_val=1.0, max_val=1.0), dict(min_val=math.nan)):
        with pytest.raises(ConfigurationError):
            acts.Hardtanh(**bad)
    with pytest.raises(ConfigurationError):
        acts.CELU(0.0)
    with pytest.raises(ConfigurationError):
        acts.Softplus(beta=-1.0)
    with pytest.raises(ConfigurationError):
        acts.GELU("erf")


def test_models_with_new_maps_save_and_load(tmp_path):
    act = acts.Blockwise([(4, acts.Product(acts.Sigmoid(), acts.Hardtanh(-2, 2))), (3, acts.GELU("tanh")),
                          (2, acts.Softplus(2.0, 5.0))])
    model = idl.ImplicitModel(3, 9, 2, activation=act, wellposedness="pf", kappa=0.9, dtype=F64)
    idl.save(model, tmp_path / "m.safetensors")
    again = idl.load(tmp_path / "m.safetensors")
    u = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(again(u), model(u), rtol=0, atol=0)
    assert again.activation.config() == act.config()


def test_gelu_peak_has_its_closed_form():
    """GELU'' = phi(z)(2 - z^2): the peak slope is Phi(sqrt 2) + sqrt 2 phi(sqrt 2)."""
    r2 = torch.tensor(math.sqrt(2.0), dtype=F64)
    peak = float(acts.GELU().derivative(r2))
    assert abs(acts.GELU().slope_max - peak) < 1e-11


# ------------------------------------------------------------------ exact scalar well-posedness


def _count_roots(act, a: float, c: float) -> int:
    x = torch.linspace(-60, 60, 240_001, dtype=F64)
    g = x - act(a * x + c)
    s = torch.sign(g)
    return int((s[1:] * s[:-1] < 0).sum() + (g == 0).sum())


@pytest.mark.parametrize("case", ["elu", "celu_0.7", "selu", "softsign", "hardtanh", "relu6",
                                  "hardsigmoid", "logsigmoid", "tanhshrink", "softplus_2_5"])
def test_scalar_rule_agrees_with_root_counting(case):
    """x = phi(a x + c): one root for every c when the rule says so, two or more for some c when
    it says not (brute-force root counting over a grid of c)."""
    act = CASES[case][0]()
    cs = np.linspace(-8, 8, 81)
    for a in (-3.0, 0.5 / act.slope_max, 2.0 / act.slope_max):
        verdict = wp._scalar_wellposed(a, act)
        counts = [_count_roots(act, a, c) for c in cs]
        if verdict is True:
            assert all(k == 1 for k in counts), (a, counts)
        elif verdict is False:
            assert any(k != 1 for k in counts), (a, counts)


# ------------------------------------------------------------------ Product (§2.4)

PRODUCTS = {
    "sigmoid*tanh": lambda: acts.Product("sigmoid", "tanh"),
    "tanh*tanh": lambda: acts.Product("tanh", "tanh"),
    "sigmoid*clip": lambda: acts.Product(acts.Sigmoid(), acts.Hardtanh(-3.0, 3.0)),
    "softsign*hardsigmoid": lambda: acts.Product("softsign", "hardsigmoid"),
    "sigmoid*sigmoid": lambda: acts.Product("sigmoid", "sigmoid"),
}


@pytest.mark.parametrize("case", sorted(PRODUCTS))
def test_product_value_and_jacobian(case):
    act = PRODUCTS[case]()
    z = torch.randn(8, 3, dtype=F64) * 2
    x = act(z)
    torch.testing.assert_close(x[0::2], act.first(z[0::2]) * act.second(z[1::2]))
    assert bool((x[1::2] == 0).all())
    col = z[:, 0]
    J = torch.autograd.functional.jacobian(lambda v: act(v[:, None])[:, 0], col)
    v = torch.randn(8, dtype=F64)
    tol = 1e-7 if "hardsigmoid" in case else 1e-12  # torch's hardsigmoid backward: float32 1/6
    torch.testing.assert_close(act.vjp(col[:, None], v[:, None])[:, 0], J.T @ v, rtol=tol, atol=tol)
    torch.testing.assert_close(act.jvp(col[:, None], v[:, None])[:, 0], J @ v, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", sorted(PRODUCTS))
def test_product_lipschitz_constants_of_section_2_4(case):
    """l1: |phi(u) - phi(v)| <= max(c2 g1, c1 g2) ||u - v||_1 per pair (and approached); l_inf on
    the whole vector with c2 g1 + c1 g2."""
    act = PRODUCTS[case]()
    c1, c2, g1, g2 = act.first.bound, act.second.bound, act.first.lipschitz, act.second.lipschitz
    assert act.gamma == max(c2 * g1, c1 * g2) and act.lipschitz_inf == c2 * g1 + c1 * g2
    bs = act.blocks(6)
    assert bs.sizes == (2, 2, 2) and bs.norms == (1.0,) * 3 and bs.gammas == (act.gamma,) * 3
    g = torch.Generator().manual_seed(4)
    u = torch.randn(2, 100_000, generator=g, dtype=F64) * 4
    v = u + torch.randn(2, 100_000, generator=g, dtype=F64) * 1e-3
    d_out = (act(u) - act(v))[0].abs()
    l1 = (u - v).abs().sum(dim=0)
    assert bool((d_out <= act.gamma * l1 * (1 + 1e-9)).all())
    assert float((d_out / l1).max()) > 0.9 * act.gamma
    linf = (u - v).abs().amax(dim=0)
    assert bool((d_out <= act.lipschitz_inf * linf * (1 + 1e-9)).all())


@pytest.mark.parametrize("case", sorted(PRODUCTS))
def test_product_interval_contains_samples(case):
    act = PRODUCTS[case]()
    g = torch.Generator().manual_seed(5)
    lo = torch.randn(40, 1, generator=g, dtype=F64) * 3
    hi = lo + torch.rand(40, 1, generator=g, dtype=F64) * 3
    a, b = act.interval(lo, hi)
    z = lo + (hi - lo) * torch.rand(40, 5000, generator=g, dtype=F64)
    x = act(z)
    assert bool((x >= a - 1e-14).all()) and bool((x <= b + 1e-14).all())
    # corners of the box are attained: the bounds are exact for monotone factors
    corners = torch.stack([act(torch.stack([lo[0::2] if i else hi[0::2], lo[1::2] if j else hi[1::2]], 1)
                                   .reshape(40, 1)) for i in (0, 1) for j in (0, 1)])
    if act.first.monotone and act.second.monotone:
        torch.testing.assert_close(corners.amin(0), a)
        torch.testing.assert_close(corners.amax(0), b)


def test_product_refuses_unbounded_or_block_factors():
    for bad in ("relu", "identity", "elu"):
        with pytest.raises(ConfigurationError, match="unbounded"):
            acts.Product("sigmoid", bad)
    with pytest.raises(ConfigurationError, match="componentwise"):
        acts.Product(acts.SoftMax(), "tanh")
    with pytest.raises(idl.errors.ShapeError):
        acts.Product()(torch.zeros(3, 1, dtype=F64))


def _product_model(seed: int, k: int, m: int, scale: float):
    """A = random, pairs of Product(sigmoid, tanh) then tanh states; scaled so lambda_pf(Gamma N(A))
    = scale (Thm 2.7)."""
    act = acts.Blockwise([(2 * k, acts.Product("sigmoid", "tanh")), (m, acts.Tanh())])
    n = 2 * k + m
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=g, dtype=F64)
    bs = act.blocks(n)
    pf = wp.pf_eigenvalue(wp.blip_norm_matrix(A.numpy(), bs.sizes, bs.norms, bs.gammas))
    return act, A * (scale / pf)


@pytest.mark.parametrize("seed", range(4))
def test_product_blip_certificate_theorem_2_7(seed):
    """lambda_pf(Gamma N(A)) < 1 certifies the model; Picard from different starts reaches the same
    point (uniqueness) and the solver's equilibrium satisfies the equation."""
    act, A = _product_model(seed, 3, 4, 0.9)
    n = A.shape[0]
    assert wp.check(A, act).holds["pf"]
    g = torch.Generator().manual_seed(100 + seed)
    b = torch.randn(n, 3, generator=g, dtype=F64) * 3
    ends = []
    for start in range(3):
        x = torch.randn(n, 3, generator=g, dtype=F64) * 10 * start
        for _ in range(3000):
            x = act(A @ x + b)
        ends.append(x)
    torch.testing.assert_close(ends[0], ends[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(ends[0], ends[2], rtol=0, atol=1e-12)
    model = idl.ImplicitModel.from_matrices(A, torch.eye(n, dtype=F64), torch.randn(2, n, dtype=F64),
                                            torch.zeros(2, n, dtype=F64), activation=act,
                                            wellposedness="pf", tol=1e-12)
    torch.testing.assert_close(model.equilibrium(b.T), ends[0].T, rtol=0, atol=1e-10)
    uu = b.T[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: model(v), (uu,), eps=1e-6, atol=1e-6)


def test_triangular_solve_with_products_equals_picard():
    """A strictly upper-triangular A with Product pairs: the level-by-level solve (each level's
    part of the block map applied alone, Activation.restrict) equals Picard iteration."""
    k, m = 4, 3
    act = acts.Blockwise([(2 * k, acts.Product("sigmoid", "tanh")), (m, acts.Tanh()),
                          (2, acts.Product("tanh", acts.Hardtanh(-2, 2))), (m, acts.SiLU())])
    n = 2 * k + m + 2 + m
    A = torch.triu(torch.randn(n, n, dtype=F64), diagonal=1)
    A[1::2][:k] = 0.0  # second slots of the first pairs feed nothing special: still fine
    for i in range(0, 2 * k, 2):  # keep pairs whole: no dependency inside a pair
        A[i, i + 1] = 0.0
    A[2 * k + m, 2 * k + m + 1] = 0.0
    B = torch.randn(n, 3, dtype=F64)
    model = idl.ImplicitModel.from_matrices(A, B, torch.randn(2, n, dtype=F64), torch.zeros(2, 3, dtype=F64),
                                            activation=act, wellposedness="triangular", solver="triangular")
    u = torch.randn(6, 3, dtype=F64)
    x = model.equilibrium(u)
    ref = torch.zeros(n, 6, dtype=F64)
    for _ in range(n + 2):
        ref = act(A @ ref + B @ u.T)
    torch.testing.assert_close(x, ref.T, rtol=0, atol=1e-13)
    uu = u[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: model(v), (uu,), eps=1e-6, atol=1e-6)


def test_restrict_equals_rows_of_the_whole_map():
    act = acts.Blockwise([(4, acts.Product()), (3, acts.GELU()), (4, acts.SoftMax(2)), (2, acts.Product())])
    z = torch.randn(13, 5, dtype=F64)
    full = act(z)
    for rows in ([0, 1, 4, 5], [2, 3, 6, 7, 8, 11, 12], list(range(13)), [4]):
        r = torch.tensor(rows)
        torch.testing.assert_close(act.restrict(r)(z[r]), full[r])
        v = torch.randn(len(rows), 5, dtype=F64)
        vfull = torch.zeros(13, 5, dtype=F64)
        vfull[r] = v
        torch.testing.assert_close(act.restrict(r).vjp(z[r], v), act.vjp(z, vfull)[r])
