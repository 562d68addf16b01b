"""States.save/load (safetensors), regen_states and evaluate (torchidl parity for SIM)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import idlkit as idl
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError
from idlkit.io import CheckpointError, read_tensors, write_tensors
from idlkit.sim import SIM, States, evaluate, extract_states, regen_states

torch.set_num_threads(1)
D64 = torch.float64


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def _U(m: int = 120, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, 6, dtype=D64, generator=torch.Generator().manual_seed(seed))


def _hooked() -> States:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 4), nn.Softmax(dim=1),
                        nn.Linear(4, 2)).double()
    return extract_states(net, torch.randn(15, 5, dtype=D64), rescale=False)


def _same(a: States, b: States) -> None:
    for k in ("Z", "X", "Y_hat", "U", "scale"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and torch.equal(x, y), k
    assert (a.depth is None) == (b.depth is None)
    if a.depth is not None:
        assert torch.equal(a.depth, b.depth)
    assert (a.divisor, a.gamma, a.kappa, a.baseline_nnz, a.method) == (
        b.divisor, b.gamma, b.kappa, b.baseline_nnz, b.method)
    assert a.activation.config() == b.activation.config()
    assert [(x.label, x.kind, x.size, x.offset, x.position, x.activation.config()) for x in a.layers] == [
        (x.label, x.kind, x.size, x.offset, x.position, x.activation.config()) for x in b.layers]


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("which", ["convert", "hooks", "float32"])
def test_states_round_trip_is_bit_exact(which, tmp_path: Path):
    if which == "hooks":
        st = _hooked()
        assert st.method == "hooks" and len(st.layers) == 2
    else:
        net = _mlp()
        st = extract_states(net if which == "convert" else net.float(), _U() if which == "convert"
                            else _U().float())
    path = st.save(tmp_path / "st.safetensors")
    back = States.load(path)
    _same(st, back)
    assert [p.name for p in tmp_path.iterdir()] == ["st.safetensors"]  # no temporary file left
    _, meta = read_tensors(path)
    assert meta["format"] == "idlkit.sim.States/1" and meta["m"] == st.m


def test_corrupt_state_files_are_refused(tmp_path: Path):
    st = extract_states(_mlp(), _U(30))
    good = st.save(tmp_path / "good.st")
    raw = good.read_bytes()
    (tmp_path / "trunc.st").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or tampered"):
        States.load(tmp_path / "trunc.st")
    (tmp_path / "junk.st").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        States.load(tmp_path / "junk.st")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        States.load(tmp_path / "missing.st")
    idl.save(idl.ImplicitModel(3, 4, 2), tmp_path / "model.st")
    with pytest.raises(CheckpointError, match="not an idlkit States file"):
        States.load(tmp_path / "model.st")

    tensors, meta = read_tensors(good)

    def rewrite(name: str, t: dict, m: dict) -> Path:
        return write_tensors(tmp_path / name, t, m)

    with pytest.raises(CheckpointError, match=r"array 'X' is torch.float32 \(30, 18\), the header says "
                                              r"torch.float64"):
        States.load(rewrite("dtype.st", {**tensors, "X": tensors["X"].float()}, meta))
    with pytest.raises(CheckpointError, match="array 'U'"):
        States.load(rewrite("shape.st", {**tensors, "U": tensors["U"][:, :5].contiguous()}, meta))
    with pytest.raises(CheckpointError, match="'scale' is missing"):
        States.load(rewrite("miss.st", {k: v for k, v in tensors.items() if k != "scale"}, meta))
    with pytest.raises(CheckpointError, match="unexpected arrays"):
        States.load(rewrite("extra.st", {**tensors, "W": torch.zeros(2)}, meta))
    with pytest.raises(CheckpointError, match="header is damaged"):
        States.load(rewrite("act.st", tensors, {**meta, "activation": {"name": "nope"}}))
    with pytest.raises(CheckpointError, match="header is damaged"):
        States.load(rewrite("keys.st", tensors, {k: v for k, v in meta.items() if k != "kappa"}))
    nan = tensors["Z"].clone()
    nan[[4, 7], 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"States.Z has NaN or Inf in 2 row\(s\) \(samples\) \[4, 7\]"):
        States.load(rewrite("nan.st", {**tensors, "Z": nan}, meta))
    json.dumps(meta)  # the header is plain JSON


def test_states_shape_checks_and_check_finite():
    st = _hooked()
    with pytest.raises(ShapeError, match="Z has shape"):
        States(st.Z[:, :3], st.X, st.Y_hat, st.U, st.scale, 1.0, None, 0.99, st.activation, 1)
    with pytest.raises(ShapeError, match="U has 14 rows"):
        States(st.Z, st.X, st.Y_hat, st.U[:14], st.scale, 1.0, None, 0.99, st.activation, 1)
    with pytest.raises(ShapeError, match="scale"):
        States(st.Z, st.X, st.Y_hat, st.U, st.scale[:3], 1.0, None, 0.99, st.activation, 1)
    X = st.X.clone()
    X[9, st.layers[0].offset] = float("inf")  # in the softmax block (top: the last call)
    bad = States(st.Z, X, st.Y_hat, st.U, st.scale, 1.0, None, 0.99, st.activation, 1, None, "hooks",
                 st.layers)
    with pytest.raises(NonFiniteError, match=r"\[9\] in block\(s\) \['4'\]"):
        bad.check_finite()
    assert st.check_finite() is st


# ----------------------------------------------------------------------------- regen_states


def _fitted(beta: float = 0.05):
    net, U = _mlp(), _U()
    st = extract_states(net, U)
    model, _ = SIM(objective="l1", beta=beta, backend="serial").fit_states(st, bias=True)
    return net, U, st, model


def test_regen_reduces_output_error_and_equals_least_squares():
    net, U, st, model = _fitted()
    Y_hat = st.Y_hat
    new, rep = regen_states(model, U, Y_hat)
    # measured before and after, on the model's own equilibrium states X'
    with torch.no_grad():
        Xp = model.equilibrium(U)
        before = torch.linalg.norm(model(U) - Y_hat) / torch.linalg.norm(Y_hat)
        after = torch.linalg.norm(new(U) - Y_hat) / torch.linalg.norm(Y_hat)
    assert rep.output_error_before == pytest.approx(float(before), rel=1e-9)
    assert rep.output_error_after == pytest.approx(float(after), rel=1e-6)
    assert rep.output_error_after < 0.5 * rep.output_error_before
    assert rep.mse_after < rep.mse_before and rep.bias and rep.m == U.shape[0]
    # direct least-squares reference on F = (X', U, 1)
    F = torch.cat([Xp, U, torch.ones(U.shape[0], 1, dtype=D64)], dim=1).numpy()
    W = np.linalg.lstsq(F, Y_hat.numpy(), rcond=None)[0].T
    n, p = model.hidden, model.in_features
    for got, ref in ((new.C, W[:, :n]), (new.D, W[:, n:n + p]), (new.d, W[:, -1])):
        np.testing.assert_allclose(idl._matrix.as_dense_array(got), ref, rtol=1e-8, atol=1e-10)
    # A, B, b, the activation and the settings are the model's own; the model is not modified
    for k in ("A", "B", "b"):
        np.testing.assert_array_equal(idl._matrix.as_dense_array(getattr(new, k)),
                                      idl._matrix.as_dense_array(getattr(model, k)))
    assert new.activation is model.activation and new.settings.config() == model.settings.config()
    assert rep.rank == np.linalg.matrix_rank(F) and rep.columns == F.shape[1]


def test_regen_ridge_and_without_bias():
    _, U, st, model = _fitted()
    new, rep = regen_states(model, U, st.Y_hat, ridge=1e-2, bias=False)
    assert new.d is None or torch.count_nonzero(new.d) == 0
    with torch.no_grad():
        F = torch.cat([model.equilibrium(U), U], dim=1).numpy()
    m = F.shape[0]
    W = np.linalg.solve(F.T @ F + 1e-2 * m * np.eye(F.shape[1]), F.T @ st.Y_hat.numpy()).T
    np.testing.assert_allclose(idl._matrix.as_dense_array(new.C), W[:, :model.hidden], rtol=1e-8, atol=1e-10)
    assert rep.ridge == 1e-2 and not rep.bias


def test_regen_keeps_the_sparsity_pattern_on_request():
    _, U, st, model = _fitted()
    new, rep = regen_states(model, U, st.Y_hat, support="keep")
    old = np.hstack([idl._matrix.as_dense_array(model.C), idl._matrix.as_dense_array(model.D)])
    got = np.hstack([idl._matrix.as_dense_array(new.C), idl._matrix.as_dense_array(new.D)])
    assert not np.any(got[old == 0])  # nothing outside the old support
    with torch.no_grad():
        F = torch.cat([model.equilibrium(U), U, torch.ones(U.shape[0], 1, dtype=D64)], dim=1).numpy()
    for i in range(old.shape[0]):  # row i: least squares on its own support (and d)
        cols = np.flatnonzero(np.append(old[i] != 0, True))
        w = np.linalg.lstsq(F[:, cols], st.Y_hat[:, i].numpy(), rcond=None)[0]
        np.testing.assert_allclose(np.append(got[i], idl._matrix.as_dense_array(new.d)[i])[cols], w,
                                   rtol=1e-8, atol=1e-10)
    # (SIM's own relaxed-lasso refit may already be this optimum: equal up to rounding)
    assert rep.output_error_after <= rep.output_error_before * (1 + 1e-12) and rep.support == "keep"


def test_regen_bad_inputs():
    _, U, st, model = _fitted()
    with pytest.raises(ShapeError, match=r"expected \(m, q\) = \(120, 3\)"):
        regen_states(model, U, st.Y_hat[:100])
    with pytest.raises(ShapeError, match="in_features = 6"):
        regen_states(model, U[:, :5], st.Y_hat)
    with pytest.raises(InputError, match="ImplicitModel"):
        regen_states(nn.Linear(6, 3), U, st.Y_hat)  # type: ignore[arg-type]
    Y = st.Y_hat.clone()
    Y[[3, 11]] = float("nan")
    with pytest.raises(NonFiniteError, match=r"Y_hat has NaN or Inf in 2 row\(s\) \(samples\) \[3, 11\]"):
        regen_states(model, U, Y)
    with pytest.raises(InputError, match="float outputs"):
        regen_states(model, U, st.Y_hat.argmax(1))
    with pytest.raises(ConfigurationError, match="ridge"):
        regen_states(model, U, st.Y_hat, ridge=-1.0)
    with pytest.raises(ConfigurationError, match="support"):
        regen_states(model, U, st.Y_hat, support="sparse")


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_figures_equal_direct_computations():
    net, U, st, model = _fitted()
    labels = st.Y_hat.argmax(1).roll(5)  # labels that disagree with the teacher somewhere
    with torch.no_grad():
        Yp, Xp = model(U), model.equilibrium(U)
        Yt = net(U)
    A = idl._matrix.as_dense_array(model.A)
    nnz = sum(int(np.count_nonzero(idl._matrix.as_dense_array(getattr(model, k))))
              for k in ("A", "B", "C", "D", "b", "d"))
    ev = evaluate(model, U, labels, teacher=st)
    assert ev.m == 120
    assert ev.accuracy == pytest.approx(float((Yp.argmax(1) == labels).double().mean()))
    assert ev.teacher_accuracy == pytest.approx(float((Yt.argmax(1) == labels).double().mean()))
    assert ev.agreement == pytest.approx(float((Yp.argmax(1) == Yt.argmax(1)).double().mean()))
    assert ev.output_error == pytest.approx(float(torch.linalg.norm(Yp - Yt) / torch.linalg.norm(Yt)),
                                            rel=1e-9)
    assert ev.state_error == pytest.approx(float(torch.linalg.norm(Xp - st.X) / torch.linalg.norm(st.X)),
                                           rel=1e-9)
    assert ev.nnz == nnz and ev.nnz_A == int(np.count_nonzero(A))
    assert ev.a_inf_norm == pytest.approx(float(np.abs(A).sum(1).max()), rel=1e-12)
    base = sum(int(torch.count_nonzero(p)) for p in net.parameters())
    assert ev.baseline_nnz == base
    assert ev.sparsity == pytest.approx((1 - nnz / base) * 100)
    assert ev.mse is None and "accuracy" in ev.summary()
    ev2 = evaluate(model, U, st.Y_hat, teacher=net)  # float targets -> MSE; a network teacher
    assert ev2.mse == pytest.approx(float(((Yp - st.Y_hat) ** 2).mean()), rel=1e-9)
    assert ev2.accuracy is None and ev2.state_error is None and ev2.baseline_nnz == base
    assert ev2.output_error == pytest.approx(ev.output_error, rel=1e-9)
    ev3 = evaluate(model, U)
    assert ev3.output_error is None and ev3.sparsity is None and ev3.nnz == nnz


def test_evaluate_bad_inputs():
    net, U, st, model = _fitted()
    with pytest.raises(InputError, match="other inputs"):
        evaluate(model, U + 1.0, teacher=st)
    with pytest.raises(ShapeError, match="teacher States"):
        evaluate(model, U[:50], teacher=st)
    with pytest.raises(ShapeError, match="rows"):
        evaluate(model, U, torch.zeros(10, dtype=torch.long))
    with pytest.raises(InputError, match="labels must lie"):
        evaluate(model, U, torch.full((120,), 7))
    with pytest.raises(InputError, match="teacher must be"):
        evaluate(model, U, teacher=st.X)  # type: ignore[arg-type]
    bad = U.clone()
    bad[17, 2] = float("inf")
    with pytest.raises(NonFiniteError, match=r"\[17\]"):
        evaluate(model, bad)
