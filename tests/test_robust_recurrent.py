"""Robustness bounds on converted LSTM and GRU networks (paper 000 §3.6, §4; thesis ch. 4).

``from_torch`` turns an ``nn.LSTM`` / ``nn.GRU`` into a strictly block-triangular implicit model
whose gates are :class:`~idlkit.activations.Product` pairs (§2.4). Its certified bounds -- the
state and output box of Thm 4.1/4.2 (:func:`idlkit.robust.box_bounds`), the sensitivity matrix of
Thm 4.4 (``|y - y0| <= S |u - u0|`` for every input pair), and IBP -- are attacked with uniform and
vertex samples of the input box and with every iterate of a projected gradient ascent of each
state and output coordinate, up and down: at least 10^4 inputs per network, 0 violations. IBP is
compared with the box (it is tighter on these networks, as on feed-forward ones).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_robust_activations import box_samples, pgd_inputs
from torch import nn

import idlkit.robust as R
from idlkit.activations import Product
from idlkit.convert import from_torch

F64 = torch.float64
SIGMA = 0.2
TOL = 1e-9


class Seq(nn.Module):
    """A recurrent layer over ``(batch, T * p)`` inputs, a linear head on the last output."""

    def __init__(self, cell: type, p: int, hidden: int, T: int, layers: int) -> None:
        super().__init__()
        self.p, self.T = p, T
        self.rnn = cell(p, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], self.T, self.p))
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell,layers", [(nn.LSTM, 1), (nn.LSTM, 2), (nn.GRU, 1)])
def test_bounds_hold_on_converted_recurrent_networks(cell, layers):
    torch.manual_seed(0)
    p, T = 2, 4
    net = Seq(cell, p, 3, T, layers).double().eval()
    U0 = torch.randn(3, p * T, dtype=F64)
    model = from_torch(net, U0[:1])
    assert model.certificate().triangular
    assert any(isinstance(a, Product) for _, a in getattr(model.activation, "segments", ()))
    rng = np.random.default_rng(1)
    Us, own_s = box_samples(rng, U0, SIGMA, 3000)
    Up, own_p = pgd_inputs(model, U0, SIGMA, steps=8)
    U, own = torch.cat([Us, Up]), torch.cat([own_s, own_p])
    assert U.shape[0] >= 10_000
    with torch.no_grad():
        X, Y = model.equilibrium(U), model(U)
        torch.testing.assert_close(Y, net(U), rtol=1e-12, atol=1e-12)
    ib = R.interval_bounds(model, U0, SIGMA)
    bb = R.box_bounds(model, U0, SIGMA)
    S = R.sensitivity_matrix(model)
    viol = int(((X < ib.x_lower[own]) | (X > ib.x_upper[own])).sum())
    viol += int(((Y < ib.y_lower[own]) | (Y > ib.y_upper[own])).sum())
    viol += int(((X - bb.x0[own]).abs() > bb.sigma_x + TOL).sum())
    viol += int(((Y - bb.y0[own]).abs() > bb.sigma_y + TOL).sum())
    viol += int(((Y - bb.y0[own]).abs() > (U - U0[own]).abs() @ S.T + TOL).sum())
    assert viol == 0, f"{viol} violations in {U.shape[0]} trials"
    # IBP (interval products, level by level) is tighter than the Thm 4.2 box here
    assert torch.all(ib.y_upper - ib.y_lower <= 2 * bb.sigma_y * (1 + 1e-9))
    # and the bounds are not vacuous: the attacks reach a good part of the IBP width
    reach = Y.max(0).values - Y.min(0).values
    assert float((reach / (ib.y_upper - ib.y_lower).max(0).values).min()) > 0.1


def test_lp_relaxations_refuse_gates_with_a_typed_error():
    net = Seq(nn.LSTM, 2, 3, 3, 1).double().eval()
    u = torch.randn(1, 6, dtype=F64)
    model = from_torch(net, u)
    with pytest.raises(idl_errors().ConfigurationError, match="ReLU"):
        R.lp_state_bounds(model, u[0], 0.1)
    with pytest.raises(idl_errors().ConfigurationError, match="mu"):
        R.lipschitz_bound(model, "mu")


def idl_errors():
    import idlkit.errors as errors

    return errors
