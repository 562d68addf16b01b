"""Shared check of the converter tests: a converted model equals its network exactly."""

from __future__ import annotations

import torch
from torch import nn

import idlkit as idl
from idlkit.convert import from_torch, states

F64 = torch.float64
TOL = 1e-12


def check_outputs(net: nn.Module, x: torch.Tensor, tol: dict[torch.dtype, float],
                  **kw: object) -> idl.ImplicitModel:
    """The converted model's outputs equal ``net``'s to ``tol[x.dtype]`` (relative to the output
    scale) and the model is triangular (:func:`assert_triangular`)."""
    net.eval()
    model = from_torch(net, x, **kw)
    with torch.no_grad():
        y_net = net(x).reshape(x.shape[0], -1)
        y = model(x)
    scale = max(1.0, float(y_net.abs().max()))
    err = float((y - y_net).abs().max())
    assert err <= tol[x.dtype] * scale, f"max abs error {err:.3g} (output scale {scale:.3g})"
    assert_triangular(model)
    return model


def assert_triangular(model: idl.ImplicitModel) -> None:
    """A strictly upper triangular, certified, and solved in one sweep."""
    A = model.A.to_dense() if model.sparse else model.A
    assert not bool(torch.tril(A).ne(0).any()), "A is not strictly upper triangular"
    assert model.settings.method == "triangular" and model.wellposedness == "triangular"
    assert model.last_solve is not None and model.last_solve.method == "triangular"
    rep = model.certificate()
    assert rep.triangular and rep.holds["triangular"]


def check_exact(net: nn.Module, u: torch.Tensor, grad_tol: float = 1e-10) -> idl.ImplicitModel:
    """The converted model equals ``net`` (values, states, input gradients) to float64 round-off."""
    net = net.eval()
    model = from_torch(net, u)
    with torch.no_grad():
        y_net = net(u).reshape(u.shape[0], -1)
        y = model(u)
    scale = max(1.0, float(y_net.abs().max()))
    err = float((y - y_net).abs().max())
    assert err <= TOL * scale, f"max abs error {err:.3g} (output scale {scale:.3g})"
    # state conventions: X of states() is the model's equilibrium, Z its pre-activation
    Z, X = states(net, u)
    with torch.no_grad():
        X_model = model.equilibrium(u)
    assert X.shape == X_model.shape == (u.shape[0], model.hidden)
    assert float((X - X_model).abs().max()) <= TOL * max(1.0, float(X.abs().max()))
    A = model.A.to_dense() if model.sparse else model.A
    B = model.B.to_dense() if model.sparse else model.B
    b = model.b if model.b is not None else torch.zeros(model.hidden, dtype=F64)
    Z_model = X @ A.t() + u.reshape(u.shape[0], -1) @ B.t() + b
    assert float((Z - Z_model).abs().max()) <= TOL * max(1.0, float(Z.abs().max()))
    # triangular: A strictly upper triangular, certified, solved in one sweep
    assert not bool(torch.tril(A).ne(0).any())
    rep = model.certificate()
    assert rep.triangular and rep.holds["triangular"]
    assert model.last_solve is not None and model.last_solve.method == "triangular"
    # the implicit backward (through every block, Product pairs included) is torch's autograd
    u1 = u.clone().requires_grad_(True)
    u2 = u.clone().requires_grad_(True)
    w = torch.randn(y.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    g_model, = torch.autograd.grad((model(u1) * w).sum(), u1)
    g_net, = torch.autograd.grad((net(u2).reshape(u.shape[0], -1) * w).sum(), u2)
    gscale = max(1.0, float(g_net.abs().max()))
    assert float((g_model - g_net).abs().max()) <= grad_tol * gscale
    return model
