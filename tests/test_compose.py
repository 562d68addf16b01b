"""Composition of implicit models (paper 000 §2.4) and basic operations (§3.1).

Every composed model is compared with the composition of its parts' outputs (each
part solved to 1e-13), the feedback connection with an independent plain-torch
fixed-point loop on the interconnection equations, and the certificates with the
block-triangular theory (Thm 2.8/2.9).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _ref import ref_block_softmax, ref_phi
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from idlkit import ImplicitModel
from idlkit import wellposed as wp
from idlkit.activations import Blockwise, LeakyReLU, ReLU, SoftMax
from idlkit.compose import (
    affine,
    batch_norm,
    cascade,
    concat,
    feedback,
    parallel,
    with_output_activation,
)
from idlkit.errors import ConfigurationError, IdlError, InputError, ShapeError, WellPosednessError

F64 = torch.float64
EXACT = dict(tol=1e-13, max_iter=3000)

# name -> (activation factory, hidden-size unit (None: the state size is fixed to 4))
ACTS = {
    "relu": (lambda: "relu", 1),
    "leaky_relu": (lambda: LeakyReLU(0.1), 1),
    "tanh": (lambda: "tanh", 1),
    "sigmoid": (lambda: "sigmoid", 1),
    "softmax": (lambda: SoftMax(2), 2),
    "softmax_blocks": (lambda: Blockwise([(2, "tanh"), (2, SoftMax(2))]), None),
}
NAMES = sorted(ACTS)


def make(p: int, n: int, q: int, name: str, bias: bool, seed: int, **kw) -> ImplicitModel:
    """A random float64 model certified by ``inf`` (kappa 0.8) with an exact solver."""
    factory, unit = ACTS[name]
    n = 4 if unit is None else n * unit
    torch.manual_seed(seed)
    opts = dict(EXACT, wellposedness="inf", kappa=0.8)
    opts.update(kw)
    m = ImplicitModel(p, n, q, activation=factory(), bias=bias, dtype=F64, **opts)
    with torch.no_grad():  # larger input weights and biases: make the nonlinearity matter
        m.B.mul_(2.0)
        if m.b is not None:
            m.b.mul_(2.0)
    return m


def inputs(p: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return 2.0 * torch.randn(batch, p, generator=g, dtype=F64)


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    assert a.shape == b.shape
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= tol, f"max abs error {err:.3g} > {tol:g}"


def assert_certified(m: ImplicitModel) -> None:
    rep = wp.check(m.A, m.activation)
    assert rep.wellposed, str(rep)
    assert wp.check(m.A, m.activation).wellposed


model_spec = st.tuples(st.sampled_from(NAMES), st.booleans(), st.integers(0, 3))
sizes = st.integers(1, 3)
batches = st.sampled_from([1, 4])
seeds = st.integers(0, 2**16)


# ----------------------------------------------------------------------------- cascade


@settings(max_examples=25)
@given(s1=model_spec, s2=model_spec, p=sizes, q1=sizes, q2=sizes, batch=batches, seed=seeds)
def test_cascade_equals_composition(s1, s2, p, q1, q2, batch, seed):
    m1 = make(p, s1[2], q1, s1[0], s1[1], seed)
    m2 = make(q1, s2[2], q2, s2[0], s2[1], seed + 7)
    c = cascade(m1, m2)
    u = inputs(p, batch, seed)
    with torch.no_grad():
        assert_close(c(u), m2(m1(u)))
        assert_close(c(u[0]), m2(m1(u[0])))  # 1-D input
    assert (c.in_features, c.hidden, c.out_features) == (p, m1.hidden + m2.hidden, q2)
    # structure of §2.4: x = (x2, x1), A = [[A2, B2 C1], [0, A1]]
    n2 = m2.hidden
    assert torch.equal(c.A[:n2, :n2], m2.A.detach())
    assert torch.equal(c.A[n2:, n2:], m1.A.detach())
    assert not bool(c.A[n2:, :n2].ne(0).any())
    assert (c.b is None) == (m1.b is None and m2.b is None)
    assert c.wellposedness is None
    assert_certified(c)


def test_cascade_matrices_are_the_papers():
    m1, m2 = make(3, 4, 2, "relu", False, 1), make(2, 3, 5, "tanh", False, 2)
    c = cascade(m1, m2)
    A1, B1, C1, D1 = (getattr(m1, k).detach() for k in "ABCD")
    A2, B2, C2, D2 = (getattr(m2, k).detach() for k in "ABCD")
    A = torch.cat([torch.cat([A2, B2 @ C1], 1), torch.cat([torch.zeros(4, 3, dtype=F64), A1], 1)])
    assert_close(c.A.detach(), A, 0.0)
    assert_close(c.B.detach(), torch.cat([B2 @ D1, B1]), 1e-15)
    assert_close(c.C.detach(), torch.cat([C2, D2 @ C1], 1), 1e-15)
    assert_close(c.D.detach(), D2 @ D1, 1e-15)
    assert c.b is None and c.d is None
    assert isinstance(c.activation, Blockwise)
    assert [(s, a.name) for s, a in c.activation.segments] == [(3, "tanh"), (4, "relu")]


def test_cascade_pf_is_max_of_parts():
    """Remark after Thm 2.9: the PF value of the block triangular A is the parts' max."""
    for seed in range(5):
        m1, m2 = make(3, 4, 3, "tanh", True, seed), make(3, 5, 2, "sigmoid", True, seed + 1)
        c = cascade(m1, m2)
        pf = wp.check(c.A, c.activation).pf
        parts = max(wp.check(m.A, m.activation).pf for m in (m1, m2))
        assert abs(pf - parts) <= 1e-10
        # the coupling block B2 C1 can push ||A||_inf above the parts' bound; pf ignores it
        assert pf < 1


def test_cascade_same_componentwise_activation_is_kept():
    c = cascade(make(2, 3, 2, "relu", True, 0), make(2, 2, 2, "relu", True, 1))
    assert isinstance(c.activation, ReLU)
    c = cascade(make(2, 2, 2, "softmax", True, 0), make(2, 2, 2, "softmax", True, 1))
    assert isinstance(c.activation, SoftMax) and c.activation.blocks(8).sizes == (2, 2, 2, 2)
    # SoftMax over a whole state must not merge into one block
    s1 = ImplicitModel(2, 3, 2, activation="softmax", dtype=F64)
    s2 = ImplicitModel(2, 2, 2, activation="softmax", dtype=F64)
    assert cascade(s1, s2).activation.blocks(5).sizes == (2, 3)
    # nested Blockwise maps are flattened (and the adjacent tanh segments merged)
    b = make(2, 1, 2, "softmax_blocks", True, 3)
    c = cascade(b, make(2, 2, 2, "tanh", True, 4))
    assert [(s, a.name) for s, a in c.activation.segments] == [(4, "tanh"), (2, "softmax")]
    c = cascade(make(2, 2, 2, "tanh", True, 4), b)
    assert [(s, a.name) for s, a in c.activation.segments] == [(2, "tanh"), (2, "softmax"),
                                                               (2, "tanh")]


def test_cascade_with_static_parts_and_chains():
    p = 3
    W = torch.randn(p, p, dtype=F64, generator=torch.Generator().manual_seed(0))
    bias = torch.randn(p, dtype=F64, generator=torch.Generator().manual_seed(1))
    a = affine(W, bias)
    m = make(p, 3, 2, "tanh", True, 2)
    u = inputs(p, 5, 0)
    with torch.no_grad():
        assert_close(cascade(a, m)(u), m(a(u)))
        assert_close(cascade(m, affine(W[:2, :2]))(u), m(u) @ W[:2, :2].T)
        aa = cascade(a, a)
        assert aa.hidden == 0
        assert_close(aa(u), a(a(u)))
        m2, m3 = make(2, 2, 4, "sigmoid", False, 3), make(4, 2, 3, "softmax", True, 4)
        chain = with_output_activation(cascade(cascade(cascade(a, m), m2), m3), "softmax")
        assert_close(chain(u), torch.softmax(m3(m2(m(a(u)))), dim=1))
    assert_certified(chain)


def test_triangular_solver_and_declaration_are_kept():
    t1 = make(3, 4, 2, "relu", True, 0, wellposedness="triangular", solver="triangular")
    t2 = make(2, 3, 2, "sigmoid", True, 1, wellposedness="triangular", solver="triangular")
    t3 = make(3, 3, 2, "softmax", False, 1, wellposedness="triangular", solver="triangular")
    for c in (cascade(t1, t2), concat(t1, t3), parallel(t1, t3),
              with_output_activation(t1, "softmax")):
        assert c.settings.method == "triangular"
        assert c.wellposedness == "triangular"
    u = inputs(3, 4, 0)
    with torch.no_grad():
        assert_close(cascade(t1, t2)(u), t2(t1(u)))
    # a part with a general solver: back to the parts' default
    g = make(2, 3, 2, "tanh", True, 2)
    c = cascade(t1, g)
    assert c.settings.method == "anderson" and c.wellposedness is None
    # settings (tol, max_iter, method) come from the first part with a state
    pic = make(3, 2, 2, "tanh", True, 3, solver="picard", tol=1e-12, max_iter=777)
    c = cascade(affine(torch.eye(3, dtype=F64)), cascade(pic, g))
    assert (c.settings.method, c.settings.tol, c.settings.max_iter) == ("picard", 1e-12, 777)


# ----------------------------------------------------------------------------- parallel, concat


@settings(max_examples=20)
@given(s1=model_spec, s2=model_spec, p=sizes, q=sizes, batch=batches, seed=seeds,
       w=st.tuples(st.floats(-2, 2), st.floats(-2, 2)))
def test_parallel_equals_weighted_sum(s1, s2, p, q, batch, seed, w):
    m1, m2 = make(p, s1[2], q, s1[0], s1[1], seed), make(p, s2[2], q, s2[0], s2[1], seed + 3)
    c = parallel(m1, m2, weights=w)
    u = inputs(p, batch, seed)
    with torch.no_grad():
        assert_close(c(u), w[0] * m1(u) + w[1] * m2(u))
    assert_certified(c)


@settings(max_examples=20)
@given(s1=model_spec, s2=model_spec, p=sizes, q1=sizes, q2=sizes, batch=batches, seed=seeds)
def test_concat_equals_concatenation(s1, s2, p, q1, q2, batch, seed):
    m1, m2 = make(p, s1[2], q1, s1[0], s1[1], seed), make(p, s2[2], q2, s2[0], s2[1], seed + 5)
    c = concat(m1, m2)
    u = inputs(p, batch, seed)
    with torch.no_grad():
        assert_close(c(u), torch.cat([m1(u), m2(u)], dim=1))
    assert c.out_features == q1 + q2
    assert_certified(c)


def test_parallel_default_weights_and_structure():
    m1, m2 = make(2, 3, 2, "relu", False, 0), make(2, 2, 2, "tanh", True, 1)
    c = parallel(m1, m2)
    assert_close(c.A.detach(), torch.block_diag(m1.A.detach(), m2.A.detach()), 0.0)
    u = inputs(2, 3, 0)
    with torch.no_grad():
        assert_close(c(u), m1(u) + m2(u))


# ----------------------------------------------------------------------------- feedback


def _scalar(a, b_, c, d, bias=None):
    t = lambda v: torch.tensor([[float(v)]], dtype=F64)  # noqa: E731
    bb = None if bias is None else torch.tensor([float(bias)], dtype=F64)
    return ImplicitModel.from_matrices(t(a), t(b_), t(c), t(d), bb, activation="relu", **EXACT)


def test_feedback_of_wellposed_parts_can_be_illposed():
    # each part x = relu(0.5 x + u) is well-posed (||A||_inf = 0.5); the loop gain is 4
    m1, m2 = _scalar(0.5, 1, 2, 0, bias=-1), _scalar(0.5, 1, 2, 0, bias=-1)
    assert wp.check(m1.A, "relu").wellposed
    with pytest.raises(WellPosednessError, match=r"lambda_pf = 2\.5"):
        feedback(m1, m2)
    loose = feedback(m1, m2, require_wellposed=False)
    A = loose.A.detach()
    assert_close(A, torch.tensor([[0.5, 2.0], [2.0, 0.5]], dtype=F64), 0.0)
    # and it really is ill-posed: for u = 0 the equilibrium equation has two solutions
    bvec = loose.b.detach()
    for x in (torch.zeros(2, dtype=F64), torch.full((2,), 2.0 / 3.0, dtype=F64)):
        assert_close(torch.relu(A @ x + bvec), x, 1e-15)


def test_feedback_singular_algebraic_loop_raises():
    one = torch.ones(1, 1, dtype=F64)
    with pytest.raises(WellPosednessError, match="singular"):
        feedback(affine(one), affine(one))
    two = torch.eye(2, dtype=F64)
    D1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    with pytest.raises(WellPosednessError, match="I - D_1 D_2"):
        feedback(affine(D1), affine(two * 0.5))


def test_feedback_zero_D_matrices_are_the_papers():
    m1, m2 = make(2, 3, 2, "tanh", False, 0), make(2, 2, 2, "relu", False, 1)
    with torch.no_grad():
        m1.D.zero_()
        m2.D.zero_()
        m2.C.mul_(0.1)
        m1.C.mul_(0.1)
    f = feedback(m1, m2)
    A1, B1, C1 = (getattr(m1, k).detach() for k in "ABC")
    A2, B2, C2 = (getattr(m2, k).detach() for k in "ABC")
    assert_close(f.A.detach(), torch.cat([torch.cat([A1, B1 @ C2], 1), torch.cat([B2 @ C1, A2], 1)]),
                 1e-15)
    assert_close(f.B.detach(), torch.cat([B1, torch.zeros(2, 2, dtype=F64)]), 0.0)
    assert_close(f.C.detach(), torch.cat([C1, torch.zeros(2, 2, dtype=F64)], 1), 1e-15)
    assert_close(f.D.detach(), torch.zeros(2, 2, dtype=F64), 0.0)


def _ref_feedback(m1, m2, phi1, phi2, u, iters=20000):
    """Independent fixed-point loop on the interconnection u1 = u + y2, u2 = y1 (plain torch)."""
    P = [{k: (None if getattr(m, k) is None else getattr(m, k).detach()) for k in "ABCDbd"}
         for m in (m1, m2)]
    for Pm in P:
        Pm["b"] = torch.zeros(Pm["A"].shape[0], dtype=F64) if Pm["b"] is None else Pm["b"]
        Pm["d"] = torch.zeros(Pm["C"].shape[0], dtype=F64) if Pm["d"] is None else Pm["d"]
    p1, p2 = P
    m = u.shape[0]
    x1, x2 = torch.zeros(m, m1.hidden, dtype=F64), torch.zeros(m, m2.hidden, dtype=F64)
    y1, y2 = torch.zeros(m, m1.out_features, dtype=F64), torch.zeros(m, m2.out_features, dtype=F64)
    for _ in range(iters):
        u1 = u + y2
        x1n = phi1(x1 @ p1["A"].T + u1 @ p1["B"].T + p1["b"])
        y1n = x1n @ p1["C"].T + u1 @ p1["D"].T + p1["d"]
        x2n = phi2(x2 @ p2["A"].T + y1n @ p2["B"].T + p2["b"])
        y2n = x2n @ p2["C"].T + y1n @ p2["D"].T + p2["d"]
        change = max(float((a - b).abs().max()) if a.numel() else 0.0
                     for a, b in ((x1, x1n), (x2, x2n), (y1, y1n), (y2, y2n)))
        x1, x2, y1, y2 = x1n, x2n, y1n, y2n
        if change <= 1e-15:
            return y1
    raise AssertionError("reference feedback loop did not converge")


@pytest.mark.parametrize("names", [("tanh", "relu"), ("sigmoid", "leaky_relu"), ("relu", "tanh")])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch", [1, 5])
def test_feedback_equals_independent_loop(names, bias, batch):
    seed = 11 * batch + 3 * bias
    m1 = make(3, 3, 2, names[0], bias, seed, kappa=0.5)
    m2 = make(2, 2, 3, names[1], bias, seed + 1, kappa=0.5)
    with torch.no_grad():  # a small loop gain, nonzero D_1 D_2 (algebraic loop)
        m2.C.mul_(0.4)
        m1.D.mul_(0.8)
        m2.D.mul_(0.5)
    assert float(torch.linalg.matrix_norm(m1.D.detach() @ m2.D.detach(), 2)) > 0.01
    f = feedback(m1, m2)
    assert (f.in_features, f.hidden, f.out_features) == (3, 5, 2)
    assert wp.check(f.A, f.activation).wellposed
    u = inputs(3, batch, seed)
    phi = {"relu": ref_phi("relu"), "tanh": ref_phi("tanh"), "sigmoid": ref_phi("sigmoid"),
           "leaky_relu": ref_phi("leaky_relu", 0.1)}
    with torch.no_grad():
        assert_close(f(u), _ref_feedback(m1, m2, phi[names[0]], phi[names[1]], u))


def test_feedback_open_loop_certified_blockwise():
    """C_2 = D_2 = 0: A is lower block triangular; y = m1(u). The softmax part is only
    certified by ``inf`` and the coupling B_2 C_1 is large, so only the block certificate
    (strongly connected components, Thm 2.9 + Remark 2.6) proves well-posedness."""
    m1 = make(3, 2, 2, "softmax", True, 5, kappa=0.95)
    with torch.no_grad():  # inf-certified (0.5 ||A||_inf = 0.9) but not pf-certified (1.8)
        m1.A.fill_(0.45)
    holds = wp.check(m1.A, m1.activation).holds
    assert {k: holds[k] for k in ("inf", "pf", "triangular")} == {"inf": True, "pf": False,
                                                                 "triangular": False}
    m2 = make(2, 3, 3, "tanh", False, 6)
    with torch.no_grad():
        m2.C.zero_()
        m2.D.zero_()
        m2.B.mul_(20.0)
    f = feedback(m1, m2)
    rep = wp.check(f.A, f.activation)
    assert rep.wellposed and not (rep.holds["inf"] or rep.holds["pf"]), str(rep)
    cert = wp.triangular_criterion(f.A, f.activation)
    assert cert.wellposed and len(cert.components) >= 2, cert
    u = inputs(3, 4, 0)
    with torch.no_grad():
        assert_close(f(u), m1(u))


def test_feedback_with_static_gain():
    """Static output feedback u_1 = u + K y_1 around a model with D_1 = 0."""
    m1 = make(2, 3, 2, "tanh", True, 8)
    with torch.no_grad():
        m1.D.zero_()
    K = 0.3 * torch.eye(2, dtype=F64)
    f = feedback(m1, affine(K))
    u = inputs(2, 3, 1)
    with torch.no_grad():
        y = _ref_feedback(m1, affine(K), ref_phi("tanh"), lambda z: z, u)
        assert_close(f(u), y)


# ----------------------------------------------------------------------------- §3.1


@pytest.mark.parametrize("phi_o", ["softmax", "sigmoid", "relu", "tanh", SoftMax(2)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", ["relu", "softmax_blocks"])
def test_output_activation(phi_o, bias, name):
    m = make(3, 2, 4, name, bias, 4)
    w = with_output_activation(m, phi_o)
    u = inputs(3, 5, 2)
    with torch.no_grad():
        y = m(u)
        ref = {"softmax": lambda v: torch.softmax(v, dim=1),
               "sigmoid": torch.sigmoid, "relu": torch.relu, "tanh": torch.tanh}
        expected = (ref[phi_o](y) if isinstance(phi_o, str)
                    else ref_block_softmax(y.T, 2).T)
        assert_close(w(u), expected)
        assert_close(w(u[:1]), expected[:1])
    q, n = 4, m.hidden
    assert_close(w.C.detach(), torch.cat([torch.eye(q, dtype=F64), torch.zeros(q, n, dtype=F64)], 1), 0.0)
    assert not bool(w.D.ne(0).any())
    assert not bool(w.A[:, :q].ne(0).any())  # [[0, C], [0, A]]
    assert_certified(w)


def test_output_activation_errors():
    m = make(3, 2, 4, "relu", True, 0)
    with pytest.raises(ShapeError, match="3"):
        with_output_activation(m, Blockwise([(3, "relu")]))
    with pytest.raises(ShapeError):
        with_output_activation(m, SoftMax(3))  # 3 does not divide q = 4
    with pytest.raises(ConfigurationError):
        with_output_activation(m, "nope")


def test_affine_and_batch_norm():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 4, generator=g, dtype=F64)
    b = torch.randn(3, generator=g, dtype=F64)
    u = torch.randn(6, 4, generator=g, dtype=F64)
    a = affine(W, b)
    assert a.hidden == 0 and (a.in_features, a.out_features) == (4, 3)
    with torch.no_grad():
        assert_close(a(u), u @ W.T + b, 1e-14)
        assert_close(affine(W)(u), u @ W.T, 1e-14)
        assert_close(a(u[0]), W @ u[0] + b, 1e-14)
    bn = torch.nn.BatchNorm1d(4, dtype=F64)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4, generator=g, dtype=F64))
        bn.running_var.copy_(torch.rand(4, generator=g, dtype=F64) + 0.5)
        bn.weight.copy_(torch.randn(4, generator=g, dtype=F64))
        bn.bias.copy_(torch.randn(4, generator=g, dtype=F64))
    bn.eval()
    m = batch_norm(bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
    plain = batch_norm(bn.running_mean, bn.running_var)
    with torch.no_grad():
        assert_close(m(u), bn(u), 1e-13)
        assert_close(plain(u), (u - bn.running_mean) / torch.sqrt(bn.running_var + 1e-5), 1e-13)


def test_affine_errors():
    W = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ShapeError):
        affine(W[0])
    with pytest.raises(InputError):
        affine(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"\(3,\)"):
        affine(W, torch.zeros(4, dtype=F64))
    with pytest.raises(InputError):
        affine(W, torch.zeros(3, dtype=torch.float32))
    with pytest.raises(ShapeError):
        batch_norm(torch.zeros(3, dtype=F64), torch.ones(4, dtype=F64))


# ----------------------------------------------------------------------------- gradients


def test_gradients_flow_through_compositions():
    m1 = make(2, 2, 2, "tanh", True, 0, backward_tol=1e-13)
    m2 = make(2, 2, 2, "sigmoid", True, 1, backward_tol=1e-13)
    for c in (cascade(m1, m2), parallel(m1, m2, (0.5, 2.0)), concat(m1, m2),
              with_output_activation(m1, "softmax")):
        u = inputs(2, 3, 0).requires_grad_(True)
        loss = (c(u) ** 2).sum()
        loss.backward()
        for name, prm in c.named_parameters():
            assert prm.grad is not None and bool(torch.isfinite(prm.grad).all()), name
        assert u.grad is not None


def test_gradcheck_cascade_and_feedback():
    m1 = make(2, 2, 2, "tanh", True, 3, backward_tol=1e-13)
    m2 = make(2, 2, 2, "sigmoid", True, 4, backward_tol=1e-13)
    with torch.no_grad():
        m2.C.mul_(0.3)
    names = ("A", "B", "C", "D", "b", "d")
    u0 = inputs(2, 2, 1)
    for c in (cascade(m1, m2), feedback(m1, m2)):
        u = u0.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda v, c=c: c(v), (u,), eps=1e-6, atol=1e-6, rtol=1e-5)
        params = tuple(getattr(c, k).detach().clone().requires_grad_(True) for k in names)

        def f(*ps, c=c):
            return functional_call(c, dict(zip(names, ps, strict=True)), (u0,))

        assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- errors, certificates


def test_bad_inputs_raise_typed_errors():
    m = make(3, 2, 2, "relu", True, 0)
    with pytest.raises(ShapeError, match=r"out_features=2.*in_features=3"):
        cascade(m, make(3, 2, 2, "relu", True, 1))
    with pytest.raises(ShapeError, match=r"in_features=3.*in_features=2"):
        parallel(m, make(2, 2, 2, "relu", True, 1))
    with pytest.raises(ShapeError, match=r"out_features=2.*out_features=3"):
        parallel(m, make(3, 2, 3, "relu", True, 1))
    with pytest.raises(ShapeError, match=r"in_features=3.*in_features=4"):
        concat(m, make(4, 2, 2, "relu", True, 1))
    with pytest.raises(ShapeError, match="feedback"):
        feedback(m, make(2, 2, 2, "relu", True, 1))
    m32 = ImplicitModel(2, 2, 2, dtype=torch.float32)
    for fn in (cascade, parallel, concat):
        with pytest.raises(InputError, match="float32"):
            fn(make(2, 2, 2, "relu", True, 0), m32)
    with pytest.raises(InputError):
        cascade(m, torch.nn.Linear(2, 2))
    with pytest.raises(InputError):
        with_output_activation("model", "relu")
    for bad in ((1.0,), (1.0, float("nan")), "ab"):
        with pytest.raises(ConfigurationError):
            parallel(m, make(3, 2, 2, "relu", True, 1), weights=bad)
    assert issubclass(ShapeError, IdlError) and issubclass(InputError, IdlError)


def test_float32_compositions():
    m1 = ImplicitModel(3, 4, 2, activation="tanh", dtype=torch.float32)
    m2 = ImplicitModel(2, 3, 2, activation="relu", dtype=torch.float32)
    c = cascade(m1, m2)
    assert c.A.dtype == torch.float32
    u = torch.randn(4, 3)
    with torch.no_grad():
        assert float((c(u) - m2(m1(u))).abs().max()) < 1e-4


def test_block_certificate():
    A = torch.tensor([[0.5, 2.0], [2.0, 0.5]], dtype=F64)
    cert = wp.triangular_criterion(A, "relu")
    assert not cert.wellposed and cert.failing and not cert.triangular
    # lower triangular with large coupling and negative diagonal: inf, pf and mu fail;
    # the 1 x 1 components are exactly well-posed (Remark 2.6: permutation invariance)
    L = torch.tensor([[-3.0, 0.0], [5.0, -3.0]], dtype=F64)
    rep = wp.check(L, "tanh")
    assert not (rep.holds["inf"] or rep.holds["pf"] or rep.holds["mu"]) and rep.wellposed
    cert = wp.triangular_criterion(L, "tanh")
    assert cert.wellposed and cert.components == ((0,), (1,)) and cert.exact
    assert wp.triangular_criterion(torch.zeros(0, 0, dtype=F64), "relu").wellposed
    # a BLIP partition is respected: one softmax block of size 2 cannot be split
    S = np.array([[0.0, 0.9, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    cert = wp.triangular_criterion(S, Blockwise([(2, SoftMax()), (1, "relu")]))
    assert cert.components == ((0, 1), (2,)) and cert.wellposed
