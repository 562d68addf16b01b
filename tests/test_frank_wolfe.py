"""Frank-Wolfe training (paper 000 §6.2): closed-form LMOs against a linear program and vertex
enumeration, feasibility and sparsity of the iterates, nonnegative duality gap, decrease of the
loss (regression of §7.1 and digits), reproducibility and typed errors."""

import itertools
import math

import cvxpy as cp
import numpy as np
import pytest
import torch

import idlkit
from idlkit.errors import ConfigurationError, NonFiniteError, ShapeError, WellPosednessError
from idlkit.train.frank_wolfe import FWResult, frank_wolfe, fw_gap, lmo_inf_ball, lmo_l1_ball


def _lp_inf_ball(G: np.ndarray, r: float) -> float:
    S = cp.Variable(G.shape)
    prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(G, S))), [cp.sum(cp.abs(S), axis=1) <= r])
    prob.solve(solver=cp.CLARABEL)
    return float(prob.value)


def _lp_l1_ball(G: np.ndarray, r: float) -> float:
    S = cp.Variable(G.shape)
    prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(G, S))), [cp.sum(cp.abs(S)) <= r])
    prob.solve(solver=cp.CLARABEL)
    return float(prob.value)


# ----------------------------------------------------------------------------- oracles


@pytest.mark.parametrize("seed", range(4))
def test_lmo_inf_ball_matches_linear_program(seed):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((4, 5))
    G[1] = 0.0  # a zero row gives a zero row
    r = 0.3 + rng.random()
    S = lmo_inf_ball(torch.as_tensor(G), r).numpy()
    assert np.all(np.abs(S).sum(axis=1) <= r * (1 + 1e-15))
    assert np.all((S != 0).sum(axis=1) <= 1) and not S[1].any()
    assert float((G * S).sum()) == pytest.approx(_lp_inf_ball(G, r), abs=1e-6)
    assert float((G * S).sum()) == pytest.approx(-r * np.abs(G).max(axis=1).sum(), rel=1e-14)


def test_lmo_inf_ball_matches_vertex_enumeration():
    # the vertices of {||S||_inf <= r} pick one signed entry +-r (or nothing) in each row
    rng = np.random.default_rng(7)
    G, r = rng.standard_normal((3, 3)), 0.7
    row_vertices = [np.zeros(3)] + [s * r * np.eye(3)[j] for j in range(3) for s in (-1, 1)]
    best = min(float((G * np.stack(rows)).sum()) for rows in itertools.product(row_vertices, repeat=3))
    S = lmo_inf_ball(torch.as_tensor(G), r).numpy()
    assert float((G * S).sum()) == pytest.approx(best, rel=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_lmo_l1_ball_matches_linear_program_and_vertices(seed):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((3, 4))
    r = 0.5 + 2 * rng.random()
    S = lmo_l1_ball(torch.as_tensor(G), r).numpy()
    assert (S != 0).sum() == 1 and np.abs(S).sum() == pytest.approx(r, rel=1e-15)
    vertices = [s * r * np.eye(G.size)[k].reshape(G.shape) for k in range(G.size) for s in (-1, 1)]
    best = min(float((G * V).sum()) for V in vertices)
    assert float((G * S).sum()) == pytest.approx(best, rel=1e-14)
    assert float((G * S).sum()) == pytest.approx(_lp_l1_ball(G, r), abs=1e-6)


def test_lmo_edge_cases_and_errors():
    assert torch.equal(lmo_l1_ball(torch.zeros(2, 3), 1.0), torch.zeros(2, 3))
    assert lmo_inf_ball(torch.zeros(0, 0), 1.0).shape == (0, 0)
    assert torch.equal(lmo_l1_ball(torch.ones(2, 2), 0.0), torch.zeros(2, 2))
    S = lmo_inf_ball(torch.tensor([[1.0, -3.0], [2.0, 0.5]], dtype=torch.float64), 0.5)
    assert torch.equal(S, torch.tensor([[0.0, 0.5], [-0.5, 0.0]], dtype=torch.float64))
    with pytest.raises(ConfigurationError):
        lmo_inf_ball(torch.ones(2, 2), -1.0)
    with pytest.raises(ConfigurationError):
        lmo_l1_ball(torch.ones(2, 2), math.inf)
    with pytest.raises(ShapeError):
        lmo_l1_ball(torch.ones(3), 1.0)
    with pytest.raises(NonFiniteError):
        lmo_inf_ball(torch.tensor([[math.nan]]), 1.0)


def test_gap_is_nonnegative_for_feasible_points():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        G = torch.randn(4, 4, generator=g, dtype=torch.float64)
        M = torch.randn(4, 4, generator=g, dtype=torch.float64)
        M = M / M.abs().sum() * 0.9  # inside the l1 ball of radius 1
        assert fw_gap({"C": G}, {"C": M}, {"C": lmo_l1_ball(G, 1.0)}) >= 0
        M2 = M / M.abs().sum(dim=1, keepdim=True).max() * 0.5
        assert fw_gap({"A": G}, {"A": M2}, {"A": lmo_inf_ball(G, 0.5)}) >= 0


# ----------------------------------------------------------------------------- training


def _regression():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200, 1, generator=g, dtype=torch.float64) * 10 - 5
    y = 5 * torch.cos(math.pi * u) * torch.exp(-u.abs() / 2)  # paper 000 §7.1
    return u, y


def _reg_model(seed=0):
    torch.manual_seed(seed)
    return idlkit.ImplicitModel(1, 20, 1, "relu", kappa=0.5, dtype=torch.float64)


RADII = {"B": 2.0, "C": 5.0, "D": 1.0}


def _norms(m):
    return (float(m.A.detach().abs().sum(dim=1).max()),
            {k: float(getattr(m, k).detach().abs().sum()) for k in RADII})


@pytest.mark.parametrize("step_size", ["default", "line_search"])
def test_iterates_feasible_gap_nonnegative_and_loss_decreases(step_size):
    u, y = _regression()
    m = _reg_model()
    norms = []
    res = frank_wolfe(m, (u, y), loss="squared_error", steps=30, radii=RADII, step_size=step_size,
                      log=lambda rec: norms.append(_norms(m)))
    assert isinstance(res, FWResult) and len(res.history) == 30
    for a_norm, l1 in norms:
        assert a_norm <= 0.5 + 1e-9
        assert all(l1[k] <= RADII[k] + 1e-9 for k in RADII)
    assert m.certificate().holds["inf"]
    assert all(rec.gap >= -1e-12 for rec in res.history)
    assert res.final_loss < 0.7 * res.history[0].loss
    if step_size == "line_search":  # full batch + Armijo: monotone
        losses = [rec.loss for rec in res.history] + [res.final_loss]
        assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))
    else:
        assert [rec.gamma for rec in res.history[:3]] == [1.0, 2 / 3, 0.5]


def test_sparsity_of_A_grows_by_at_most_one_per_row_and_step():
    u, y = _regression()
    m = _reg_model()
    with torch.no_grad():  # a sparse start: two nonzeros per row
        mask = torch.zeros(20, 20, dtype=torch.bool)
        mask[:, :2] = True
        m.A.mul_(mask)
    init = (m.A != 0).sum(dim=1)
    rows = []
    res = frank_wolfe(m, (u, y), loss="squared_error", steps=10, radii=RADII, t0=3,
                      log=lambda rec: rows.append((m.A != 0).sum(dim=1)))
    for t, nnz in enumerate(rows):  # the log runs after the update of step t
        assert bool((nnz <= init + t + 1).all())
    assert res.history[0].max_row_nnz_A == 2 and res.nnz["A"] <= 20 * 12
    # with gamma_0 = 1 the initial point is replaced by a vertex: at most t nonzeros per row
    m = _reg_model()
    res = frank_wolfe(m, (u, y), loss="squared_error", steps=5, radii=RADII)
    assert int((m.A != 0).sum(dim=1).max()) <= 5 and res.nnz["B"] <= 5 and res.nnz["D"] <= 1


def test_digits_classification_minibatch_and_reproducible():
    d = idlkit.datasets.load("digits")
    X, y = torch.as_tensor(d.x_train)[:600], torch.as_tensor(d.y_train)[:600]
    radii = {"B": 50.0, "C": 50.0, "D": 20.0}
    out = []
    for _ in range(2):
        torch.manual_seed(0)
        m = idlkit.ImplicitModel(64, 32, 10, "relu", kappa=0.9)
        res = frank_wolfe(m, (X, y), steps=30, radii=radii, batch_size=128, seed=3)
        out.append((res, {k: v.clone() for k, v in m.state_dict().items()}))
    res, state = out[0]
    assert all(torch.equal(state[k], out[1][1][k]) for k in state)
    assert res.final_loss < res.history[0].loss - 0.2
    assert all(rec.gap >= -1e-6 for rec in res.history)
    assert float(state["A"].abs().sum(dim=1).max()) <= 0.9 + 1e-6
    assert res.nnz["C"] <= 30 and res.nnz["D"] <= 30


def test_blocks_not_named_are_not_updated():
    u, y = _regression()
    m = _reg_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    frank_wolfe(m, (u, y), loss="squared_error", steps=3, radii={"C": 5.0}, update_A=False)
    for k in ("A", "B", "D", "b", "d"):
        assert torch.equal(before[k], m.state_dict()[k])
    assert not torch.equal(before["C"], m.C)


def test_infeasible_start_projected_or_rejected():
    u, y = _regression()
    m = _reg_model()
    with torch.no_grad():
        m.A.mul_(10.0)
    with pytest.raises(WellPosednessError):
        frank_wolfe(m, (u, y), loss="squared_error", steps=1, radii=RADII, on_infeasible="raise")
    with pytest.raises(ConfigurationError):
        frank_wolfe(_reg_model(), (u, y), loss="squared_error", steps=1, radii={"B": 1e-3},
                    update_A=False, on_infeasible="raise")
    res = frank_wolfe(m, (u, y), loss="squared_error", steps=0, radii={"B": 0.1})
    assert res.history == () and float(m.A.detach().abs().sum(dim=1).max()) <= 0.5
    assert float(m.B.detach().abs().sum()) <= 0.1


def test_typed_errors():
    u, y = _regression()
    m = _reg_model()
    for kw in ({"loss": "hinge"}, {"radii": {"B": -1.0}}, {"radii": {"A": 1.0}}, {"steps": -1},
               {"batch_size": 0}, {"step_size": "exact"}, {"on_infeasible": "ignore"},
               {"kappa": 0.9}, {"kappa": 1.5}, {"t0": -1}):
        args = {"loss": "squared_error", "steps": 1, **kw}
        with pytest.raises(ConfigurationError):
            frank_wolfe(m, (u, y), **args)


def test_static_model_and_triangular_model():
    X = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    y = (X[:, 0] > 0).long()
    m = idlkit.ImplicitModel(3, 0, 2)  # n = 0: y = D u + d, A and C empty
    res = frank_wolfe(m, (X, y), steps=5, radii={"C": 1.0, "D": 2.0})
    assert res.nnz["D"] <= 5 and float(m.D.detach().abs().sum()) <= 2.0 + 1e-6
    with pytest.raises(ConfigurationError):
        frank_wolfe(idlkit.ImplicitModel(3, 4, 2, wellposedness="triangular"), (X, y), steps=1)
