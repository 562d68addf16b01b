"""certified_accuracy: a certified sample's prediction never changes inside the set (tried by
random, vertex and PGD points), the count follows the bound methods' order, and bad input is typed."""

from __future__ import annotations

import pytest
import torch

import idlkit as idl
from idlkit.errors import ConfigurationError, ShapeError
from idlkit.robust import certified_accuracy

F64 = torch.float64


def _model(seed: int = 0) -> tuple[torch.nn.Sequential, idl.ImplicitModel]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 12),
        torch.nn.ReLU(),
        torch.nn.Linear(12, 4),
    ).to(F64)
    return net, idl.convert.from_torch(net, torch.zeros(1, 5, dtype=F64))


def _attack(net, u0: torch.Tensor, y: int, eps: float, seed: int) -> bool:
    """Whether random, vertex or PGD points of the box change the prediction."""
    g = torch.Generator().manual_seed(seed)
    R = 2 * torch.rand(3000, u0.numel(), generator=g, dtype=F64) - 1
    R[:1500] = R[:1500].sign()
    with torch.no_grad():
        if bool((net(u0 + eps * R).argmax(1) != y).any()):
            return True
    for _restart in range(4):
        u = (u0 + eps * (2 * torch.rand(u0.shape, generator=g, dtype=F64) - 1)).requires_grad_(True)
        for _ in range(30):
            out = net(u[None])[0]
            margin = out[y] - torch.cat([out[:y], out[y + 1 :]]).max()
            (gr,) = torch.autograd.grad(margin, u)
            with torch.no_grad():
                u -= 0.25 * eps * gr.sign()
                u.copy_(torch.clamp(u, u0 - eps, u0 + eps))
            if float(margin) < 0:
                return True
    return False


@pytest.mark.parametrize("method", ["box", "ibp", "crown", "alpha-crown", "lp", "best"])
def test_certified_samples_cannot_be_attacked(method):
    net, model = _model(1)
    U = torch.randn(40, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    with torch.no_grad():
        Y = net(U).argmax(1)
    Y[::7] = (Y[::7] + 1) % 4  # some wrong labels: never certified
    eps = 0.005 if method == "box" else 0.08  # the Thm 4.1 box is much looser
    res = certified_accuracy(model, U, Y, eps, method=method)
    assert res.certified <= res.accuracy
    assert not bool((res.certified_mask & ~res.correct_mask).any())
    assert res.certified > 0
    for i in torch.nonzero(res.certified_mask).flatten().tolist():
        assert not _attack(net, U[i], int(Y[i]), eps, seed=i), (method, i)


def test_counts_follow_the_tightness_of_the_bounds_and_shrink_with_the_radius():
    _, model = _model(3)
    U = torch.randn(60, 5, generator=torch.Generator().manual_seed(4), dtype=F64)
    with torch.no_grad():
        Y = model(U).argmax(1)
    box = certified_accuracy(model, U, Y, 0.05, method="box")
    ibp = certified_accuracy(model, U, Y, 0.05, method="ibp")
    best = certified_accuracy(model, U, Y, 0.05, method="best")
    assert bool((box.certified_mask <= best.certified_mask).all()) and bool(
        (ibp.certified_mask <= best.certified_mask).all()
    )
    radii = [certified_accuracy(model, U, Y, e, method="crown").certified for e in (0.0, 0.02, 0.1, 0.5)]
    assert radii == sorted(radii, reverse=True) and radii[0] == 1.0
    small = certified_accuracy(model, U, Y, 0.05, method="crown", batch_size=7)
    assert torch.equal(
        small.certified_mask, certified_accuracy(model, U, Y, 0.05, method="crown").certified_mask
    )


def test_bad_input_is_typed():
    _, model = _model()
    U = torch.zeros(3, 5, dtype=F64)
    with pytest.raises(ShapeError, match="labels"):
        certified_accuracy(model, U, torch.tensor([0, 1, 9]), 0.1)
    with pytest.raises(ShapeError, match="integer"):
        certified_accuracy(model, U, torch.zeros(3), 0.1)
    with pytest.raises(ShapeError):
        certified_accuracy(model, U, torch.zeros(2, dtype=torch.long), 0.1)
    with pytest.raises(ConfigurationError, match="method"):
        certified_accuracy(model, U, torch.zeros(3, dtype=torch.long), 0.1, method="magic")
    with pytest.raises(ConfigurationError, match="cardinality"):
        certified_accuracy(model, U, torch.zeros(3, dtype=torch.long), 0.1, method="crown", k=2)
