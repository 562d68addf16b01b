"""pgd_attack: stays in the clipped l_inf ball, beats FGSM on a trained digits model, never breaks a
certified bound (CROWN, LP), matches an exhaustive vertex search on affine margins and a dense grid
search on a 2-input ReLU model, and rejects bad input with typed errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import idlkit as idl
from idlkit.errors import ConfigurationError, InputError
from idlkit.robust import ATTACKS, Budget, attack, output_bounds, pgd_attack, success_rate
from idlkit.robust.attacks import margins

F64 = torch.float64


def _mlp(seed: int, sizes: tuple[int, ...]) -> tuple[torch.nn.Sequential, idl.ImplicitModel]:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1]).to(F64)
    return net, idl.convert.from_torch(net, torch.zeros(1, sizes[0], dtype=F64))


# ----------------------------------------------------------------------------- the set


@given(seed=st.integers(0, 10_000), p=st.integers(1, 6), eps=st.floats(0.0, 0.8),
       clip=st.booleans(), steps=st.integers(0, 6), restarts=st.integers(1, 3))
def test_never_outside_the_clipped_ball(seed, p, eps, clip, steps, restarts):
    torch.manual_seed(seed)
    model = idl.ImplicitModel(p, 5, 3, dtype=F64, kappa=0.9)
    g = torch.Generator().manual_seed(seed)
    U = torch.rand(7, p, generator=g, dtype=F64) if clip else torch.randn(7, p, generator=g, dtype=F64)
    Y = torch.randint(0, 3, (7,), generator=g)
    box = (0.0, 1.0) if clip else None
    r = pgd_attack(model, U, Y, Budget(epsilon=eps, clip=box), steps=steps, restarts=restarts,
                   step_size=None if seed % 2 else 0.7 * eps + 1e-3, generator=g)
    assert ((r.u_adv - U).abs() <= eps * (1 + 1e-12) + 1e-15).all()
    if clip:
        assert r.u_adv.min() >= 0 and r.u_adv.max() <= 1
    # value and success are the model's margin at the returned point (solved again here)
    with torch.no_grad():
        m = margins(model(r.u_adv), Y)
    torch.testing.assert_close(r.value, m)
    assert torch.equal(r.success, m > 0)
    assert r.bound is None and r.extra["method"] == "pgd"


def test_single_sample_and_registry():
    _, model = _mlp(0, (3, 8, 4))
    u = torch.tensor([0.2, -0.1, 0.4], dtype=F64)
    r = attack(model, u, 2, 0.3, method="pgd", generator=torch.Generator().manual_seed(1))
    assert r.u_adv.shape == (3,) and r.value.dim() == 0 and ATTACKS["pgd"] is pgd_attack
    # same generator state, same attack: reproducible without global seeding
    r2 = pgd_attack(model, u, 2, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r.u_adv, r2.u_adv)


# ----------------------------------------------------------------------------- strength


@pytest.fixture(scope="module")
def digits_model():
    ds = idl.datasets.load("digits", as_torch=True, flatten=True)
    X, y = ds.x_train.float(), ds.y_train
    torch.manual_seed(0)
    model = idl.ImplicitModel(64, 32, 10)
    idl.train.Trainer(epochs=15, lr=3e-3, batch_size=64).fit(model, (X, y))
    return model, ds.x_test.float(), ds.y_test


@pytest.mark.parametrize("eps", [0.03, 0.1])
def test_at_least_as_strong_as_fgsm(digits_model, eps):
    model, Xt, yt = digits_model
    b = Budget(epsilon=eps, clip=(0.0, 1.0))
    fgsm = success_rate(model, "fgsm", Xt, yt, b)
    pgd = success_rate(model, "pgd", Xt, yt, b, steps=10, generator=torch.Generator().manual_seed(0))
    assert fgsm.clean_accuracy > 0.9 and fgsm.rate > 0.02  # a real model, a real attack
    assert pgd.rate >= fgsm.rate, (pgd.rate, fgsm.rate)
    assert pgd.rate >= fgsm.rate + 0.02 or eps < 0.05  # strictly stronger at the larger radius


# ----------------------------------------------------------------------------- certified bounds


@pytest.mark.parametrize("method", ["crown", "lp"])
def test_never_breaks_a_certified_bound(method):
    """Certified samples are never flipped, and the PGD margin never exceeds the certified upper
    bound of the margin ``max_{j != y} upper_j - lower_y`` (tried with many restarts and steps)."""
    _, model = _mlp(3, (4, 12, 10, 3))
    g = torch.Generator().manual_seed(5)
    U = 2 * torch.randn(24, 4, generator=g, dtype=F64)
    with torch.no_grad():
        Y = model(U).argmax(1)
    eps = 0.4
    ob = output_bounds(model, U, eps, method=method)
    up = ob.upper.scatter(1, Y[:, None], float("-inf")).max(1).values
    margin_bound = up - ob.lower.gather(1, Y[:, None])[:, 0]
    certified = margin_bound < 0
    r = pgd_attack(model, U, Y, eps, steps=60, restarts=6, loss="margin", generator=g)
    assert (r.value <= margin_bound + 1e-9).all(), (r.value - margin_bound).max()
    assert not (r.success & certified).any()
    assert int(certified.sum()) >= 5 and int(r.success.sum()) >= 5  # both kinds of sample occur
    # the attack is not idle: on the uncertified samples it gets within reach of the bound
    gap = (margin_bound - r.value)[~certified]
    assert float(gap.median()) < float(margin_bound[~certified].abs().median())


# ----------------------------------------------------------------------------- exhaustive references


@pytest.mark.parametrize("seed", range(4))
def test_affine_binary_margin_matches_vertex_enumeration(seed):
    """With an affine margin (C = 0, q = 2) the maximum over the box is attained at a vertex:
    enumerate all 2^p vertices and compare exactly."""
    p = 5
    g = torch.Generator().manual_seed(seed)
    A = torch.zeros(3, 3, dtype=F64)
    B = torch.randn(3, p, generator=g, dtype=F64)
    C = torch.zeros(2, 3, dtype=F64)
    D = torch.randn(2, p, generator=g, dtype=F64)
    model = idl.ImplicitModel.from_matrices(A, B, C, D)
    u0 = torch.randn(p, generator=g, dtype=F64)
    eps = 0.3
    V = u0 + eps * torch.tensor(list(itertools.product([-1.0, 1.0], repeat=p)), dtype=F64)
    with torch.no_grad():
        best = margins(model(V), torch.zeros(len(V), dtype=torch.long)).max()
    r = pgd_attack(model, u0, 0, eps, steps=10, generator=g)
    torch.testing.assert_close(r.value, best, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_two_input_model_against_grid_search(seed):
    """On a 2-input ReLU model the margin is maximised over a dense grid of the box (its vertices
    included): PGD's best margin never exceeds the true maximum (the grid's plus its resolution
    times a Lipschitz bound), PGD succeeds wherever the grid does, and it finds the maximum up to
    local optima (a local method: within 1 % of the margin's range on 3 samples of 4, 0.1 % on
    the median one)."""
    net, model = _mlp(10 + seed, (2, 16, 16, 3))
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(16, 2, generator=g, dtype=F64)
    with torch.no_grad():
        Y = net(U).argmax(1)
    eps, m = 0.4, 161
    t = torch.linspace(-eps, eps, m, dtype=F64)
    grid = torch.cartesian_prod(t, t)
    r = pgd_attack(model, U, Y, eps, steps=40, restarts=20, loss="margin", generator=g)
    lip = float(torch.linalg.matrix_norm(net[0].weight, 1) * torch.linalg.matrix_norm(net[2].weight, 1)
                * torch.linalg.matrix_norm(net[4].weight, 1))  # l_inf -> l_1 bound, loose but sound
    h = 2 * eps / (m - 1)
    gaps = []
    with torch.no_grad():
        for i in range(len(U)):
            vals = margins(net(U[i] + grid), Y[i].repeat(len(grid)))
            gmax, spread = float(vals.max()), float(vals.max() - vals.min())
            v = float(r.value[i])
            assert v <= gmax + lip * h / 2 + 1e-9
            gaps.append((gmax - v) / spread)
            if gmax > 1e-6:
                assert bool(r.success[i]), (i, v, gmax)
    gaps.sort()
    assert gaps[len(gaps) // 2] <= 1e-3 and gaps[(3 * len(gaps)) // 4] <= 1e-2, gaps


# ----------------------------------------------------------------------------- errors


def test_bad_input_is_typed():
    _, model = _mlp(0, (3, 6, 3))
    U = torch.zeros(2, 3, dtype=F64)
    Y = torch.tensor([0, 1])
    with pytest.raises(ConfigurationError, match="epsilon"):
        pgd_attack(model, U, Y, Budget(clip=(0.0, 1.0)))
    with pytest.raises(ConfigurationError, match="k must be None"):
        pgd_attack(model, U, Y, Budget(k=1, epsilon=0.1))
    with pytest.raises(ConfigurationError, match="steps"):
        pgd_attack(model, U, Y, 0.1, steps=-1)
    with pytest.raises(ConfigurationError, match="restarts"):
        pgd_attack(model, U, Y, 0.1, restarts=0)
    with pytest.raises(ConfigurationError, match="step_size"):
        pgd_attack(model, U, Y, 0.1, step_size=-0.1)
    with pytest.raises(ConfigurationError, match="loss"):
        pgd_attack(model, U, Y, 0.1, loss="hinge")
    with pytest.raises(InputError, match="outside clip"):
        pgd_attack(model, U + 5, Y, Budget(epsilon=0.1, clip=(0.0, 1.0)))
    with pytest.raises(InputError, match="labels"):
        pgd_attack(model, U, torch.tensor([0, 7]), 0.1)
