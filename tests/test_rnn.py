"""ImplicitRNN (thesis §5.2) against an independent dense reference, finite differences and
an unrolled-autograd gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import idlkit as idl
from idlkit.errors import (
    ConfigurationError,
    InputError,
    NonFiniteError,
    ShapeError,
    WellPosednessError,
)
from idlkit.rnn import aggregate_solves

D64 = torch.float64


def make(mode: str = "seq2one", p: int = 2, n: int = 6, q: int | None = 3, r: int | None = 4,
         seed: int = 0, **kw: object) -> idl.ImplicitRNN:
    torch.manual_seed(seed)
    m = idl.ImplicitRNN(p, n, q, recurrent_size=r, mode=mode, tol=1e-12, max_iter=2000,
                        dtype=D64, **kw)
    with torch.no_grad():  # a cell with feedback, ||A||_inf = 0.6: a real equilibrium
        m.cell.A.copy_(torch.randn(n, n, dtype=D64))
        m.cell.A.mul_(0.6 / m.cell.A.abs().sum(1, keepdim=True))
    return m


def reference(m: idl.ImplicitRNN, s: np.ndarray, h0: np.ndarray | None = None) -> tuple:
    """Numpy recurrence, each step's equilibrium by Picard iteration to machine precision."""
    c = m.cell
    A, B, C, D = (t.detach().numpy() for t in (c.A, c.B, c.C, c.D))
    b, d = c.b.detach().numpy(), c.d.detach().numpy()
    batch, T, _ = s.shape
    h = np.zeros((batch, m.recurrent_size)) if h0 is None else h0.copy()
    hs = []
    for i in range(T):
        u = np.concatenate([s[:, i], h], axis=1)
        x = np.zeros((batch, m.hidden))
        for _ in range(400):
            x = np.maximum(x @ A.T + u @ B.T + b, 0.0)
        h = x @ C.T + u @ D.T + d
        hs.append(h)
    H = np.stack(hs, axis=1)
    if m.head is None:
        out = h if m.mode == "seq2one" else H
    else:
        W, w = m.head.weight.detach().numpy(), m.head.bias.detach().numpy()
        out = (h if m.mode == "seq2one" else H) @ W.T + w
    return out, H


@pytest.mark.parametrize("mode", ["seq2one", "seq2seq"])
@pytest.mark.parametrize("head", [True, False])
def test_forward_matches_dense_reference(mode: str, head: bool) -> None:
    m = make(mode, q=3 if head else None, r=4)
    rng = np.random.default_rng(1)
    s = rng.normal(size=(5, 7, 2))
    h0 = rng.normal(size=(5, 4))
    res = m.run(torch.tensor(s), h0=torch.tensor(h0))
    out, H = reference(m, s, h0)
    np.testing.assert_allclose(res.output.detach().numpy(), out, atol=1e-10)
    np.testing.assert_allclose(res.hidden.detach().numpy(), H, atol=1e-10)
    np.testing.assert_allclose(res.final.detach().numpy(), H[:, -1], atol=1e-10)
    assert res.state.shape == (5, m.hidden)
    assert m.last_solve is not None and m.last_solve.converged
    assert len(m.last_step_solves) == 7


def _unrolled_loss(m: idl.ImplicitRNN, s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same recurrence with every equilibrium unrolled (Picard, 300 steps, ||A|| 0.6)."""
    c = m.cell
    h = s.new_zeros(s.shape[0], m.recurrent_size)
    for i in range(s.shape[1]):
        u = torch.cat((s[:, i], h), 1)
        x = s.new_zeros(s.shape[0], m.hidden)
        for _ in range(300):
            x = torch.relu(x @ c.A.T + u @ c.B.T + c.b)
        h = x @ c.C.T + u @ c.D.T + c.d
    return ((m.head(h) - target) ** 2).sum()


def test_implicit_gradient_through_time_matches_unrolled_autograd() -> None:
    m = make("seq2one")
    torch.manual_seed(3)
    s = torch.randn(4, 6, 2, dtype=D64, requires_grad=True)
    target = torch.randn(4, 3, dtype=D64)
    loss = ((m(s) - target) ** 2).sum()
    params = [m.cell.A, m.cell.B, m.cell.C, m.cell.D, m.cell.b, m.cell.d, s]
    g_impl = torch.autograd.grad(loss, params)
    g_ref = torch.autograd.grad(_unrolled_loss(m, s, target), params)
    for name, a, b in zip("A B C D b d s".split(), g_impl, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8, msg=f"gradient of {name}")
    assert m.last_backward_solve is not None and m.last_backward_solve.converged


def test_gradient_matches_finite_differences() -> None:
    m = make("seq2seq", q=2, r=3, n=5)
    torch.manual_seed(4)
    s = torch.randn(3, 4, 2, dtype=D64)
    target = torch.randn(3, 4, 2, dtype=D64)

    def loss() -> torch.Tensor:
        return ((m(s) - target) ** 2).sum()

    g = torch.autograd.grad(loss(), [m.cell.B, m.cell.A])
    rng = np.random.default_rng(0)
    for P, gP in zip([m.cell.B, m.cell.A], g, strict=True):
        for _ in range(4):
            i, j = (int(rng.integers(k)) for k in P.shape)
            eps = 1e-6
            with torch.no_grad():
                P[i, j] += eps
                up = float(loss())
                P[i, j] -= 2 * eps
                down = float(loss())
                P[i, j] += eps
            fd = (up - down) / (2 * eps)
            assert abs(fd - float(gP[i, j])) <= 1e-6 * max(1.0, abs(fd)), (i, j, fd, gP[i, j])


def test_warm_start_saves_iterations_without_changing_the_answer() -> None:
    torch.manual_seed(0)
    cold = idl.ImplicitRNN(1, 30, 1, recurrent_size=6, warm_start=False, tol=1e-8,
                           dtype=D64, kappa=0.9)
    warm = idl.ImplicitRNN(1, 30, 1, recurrent_size=6, warm_start=True, tol=1e-8, dtype=D64,
                           kappa=0.9)
    warm.load_state_dict(cold.state_dict())
    with torch.no_grad():  # strong feedback: each solve takes many iterations
        cold.cell.A.copy_(0.9 * torch.sign(torch.randn(30, 30, dtype=D64)) / 30)
        warm.cell.A.copy_(cold.cell.A)
    t = torch.linspace(0, 1, 40, dtype=D64)
    s = torch.sin(t)[None, :, None].repeat(8, 1, 1)  # slowly varying: consecutive x close
    torch.testing.assert_close(warm(s), cold(s), atol=1e-7, rtol=0)
    assert warm.last_solve.iterations < cold.last_solve.iterations
    assert (warm.last_solve.per_sample_iterations
            <= cold.last_solve.per_sample_iterations).all()


def test_lengths_equal_running_each_sequence_alone() -> None:
    for mode in ("seq2one", "seq2seq"):
        m = make(mode)
        torch.manual_seed(5)
        s = torch.randn(3, 6, 2, dtype=D64)
        lengths = torch.tensor([6, 2, 4])
        res = m.run(s, lengths=lengths)
        per_sample = m.last_solve.per_sample_iterations
        steps = m.last_step_solves
        for k, L in enumerate(lengths.tolist()):
            alone = m.run(s[k:k + 1, :L])
            torch.testing.assert_close(res.final[k], alone.final[0], atol=1e-10, rtol=0)
            if mode == "seq2one":
                torch.testing.assert_close(res.output[k], alone.output[0], atol=1e-10, rtol=0)
            else:
                torch.testing.assert_close(res.output[k, :L], alone.output[0], atol=1e-10, rtol=0)
                assert bool((res.output[k, L:] == 0).all())
            # the depth of a padded sequence counts its own steps only
            assert int(per_sample[k]) == sum(int(i.per_sample_iterations[k]) for i in steps[:L])


def test_unbatched_sequence_equals_batch_of_one() -> None:
    m = make("seq2seq")
    s = torch.randn(5, 2, dtype=D64)
    torch.testing.assert_close(m(s), m(s[None])[0])
    assert m(s).shape == (5, 3)


def test_wellposedness_checked_at_every_step_and_projection() -> None:
    m = make()
    with torch.no_grad():
        m.cell.A.mul_(3.0)  # ||A||_inf = 1.8 > kappa
    s = torch.randn(2, 3, 2, dtype=D64)
    with pytest.raises(WellPosednessError, match="project_"):
        m(s)
    m.project_()
    assert m.certificate().inf_norm <= m.cell.kappa * (1 + 1e-12)
    m(s)  # well-posed again


def test_trainer_keeps_the_cell_wellposed_and_learns_rolling_average() -> None:
    g = torch.Generator().manual_seed(0)
    S = torch.rand(256, 8, 1, generator=g)
    Y = torch.cumsum(S, 1) / torch.arange(1, 9)[None, :, None]
    m = idl.ImplicitRNN(1, 12, 1, recurrent_size=4, mode="seq2seq", tol=1e-5, kappa=0.9)
    with torch.no_grad():
        base = float(((m(S) - Y) ** 2).mean())

    def loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((y_hat - y) ** 2).mean()

    idl.train.Trainer(loss=loss, lr=1e-2, epochs=15, batch_size=32).fit(m, (S, Y))
    assert m.cell.A.detach().abs().sum(1).max() <= 0.9 * (1 + 1e-5)
    with torch.no_grad():
        final = float(((m(S) - Y) ** 2).mean())
    assert final < 0.2 * base, (base, final)


def test_triangular_cell_is_the_feedback_free_ablation() -> None:
    torch.manual_seed(0)
    m = idl.ImplicitRNN(2, 6, 1, wellposedness="triangular", solver="triangular", dtype=D64)
    with torch.no_grad():
        m.cell.A.copy_(torch.randn(6, 6, dtype=D64))
    m.project_()
    assert bool((torch.tril(m.cell.A) == 0).all())
    s = torch.randn(3, 4, 2, dtype=D64)
    out = m(s)
    # reference: a strictly upper-triangular A is solved exactly by back substitution
    c = m.cell
    h = torch.zeros(3, m.recurrent_size, dtype=D64)
    for i in range(4):
        u = torch.cat((s[:, i], h), 1)
        x = torch.zeros(3, 6, dtype=D64)
        for _ in range(6):
            x = torch.relu(x @ c.A.T + u @ c.B.T + c.b)
        h = x @ c.C.T + u @ c.D.T + c.d
    torch.testing.assert_close(out, m.head(h))


def test_aggregate_solves_sums_depth() -> None:
    m = make()
    m(torch.randn(4, 5, 2, dtype=D64))
    steps = m.last_step_solves
    agg = m.last_solve
    assert agg.iterations == sum(i.iterations for i in steps)
    torch.testing.assert_close(agg.per_sample_iterations,
                               sum(i.per_sample_iterations for i in steps))
    assert agg.residual == max(i.residual for i in steps)
    with pytest.raises(InputError):
        aggregate_solves([])


@pytest.mark.parametrize("bad, err, match", [
    (torch.full((2, 3, 2), float("nan"), dtype=D64), NonFiniteError, "sample 0, step 0"),
    (torch.zeros(2, 0, 2, dtype=D64), InputError, "empty"),
    (torch.zeros(0, 3, 2, dtype=D64), InputError, "empty"),
    (torch.zeros(2, 3, 5, dtype=D64), ShapeError, "input_size = 2"),
    (torch.zeros(2, 3, 2, 1, dtype=D64), ShapeError, "expected a sequence"),
    (torch.zeros(2, 3, 2, dtype=torch.float32), InputError, "dtype"),
    ("abc", InputError, "torch.Tensor"),
])
def test_bad_sequences_raise_typed_errors(bad: object, err: type, match: str) -> None:
    m = make()
    with pytest.raises(err, match=match):
        m(bad)  # type: ignore[arg-type]


def test_nan_location_is_reported() -> None:
    m = make()
    s = torch.zeros(3, 4, 2, dtype=D64)
    s[2, 3, 1] = float("inf")
    with pytest.raises(NonFiniteError, match="sample 2, step 3"):
        m(s)


def test_bad_lengths_and_h0() -> None:
    m = make()
    s = torch.zeros(2, 3, 2, dtype=D64)
    with pytest.raises(InputError, match=r"\[1, 3\]"):
        m(s, lengths=torch.tensor([0, 3]))
    with pytest.raises(InputError, match=r"\[1, 3\]"):
        m(s, lengths=torch.tensor([4, 3]))
    with pytest.raises(ShapeError, match="lengths"):
        m(s, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ShapeError, match="h0"):
        m(s, h0=torch.zeros(2, 5, dtype=D64))


@pytest.mark.parametrize("kw", [dict(input_size=0), dict(hidden=True), dict(mode="seq"),
                                dict(output_size=0), dict(recurrent_size=-1)])
def test_bad_configuration(kw: dict) -> None:
    args = dict(input_size=1, hidden=4, output_size=1) | kw
    with pytest.raises(ConfigurationError):
        idl.ImplicitRNN(**args)  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path) -> None:
    m = make("seq2seq", activation="leaky_relu", solver="picard")
    path = idl.save(m, tmp_path / "rnn.safetensors")
    back = idl.load(path)
    assert isinstance(back, idl.ImplicitRNN) and back.config() == m.config()
    s = torch.randn(2, 5, 2, dtype=D64)
    torch.testing.assert_close(back(s), m(s), atol=1e-12, rtol=0)


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
@pytest.mark.parametrize("mode", ["seq2one", "seq2seq"])
def test_fused_recurrence_equals_the_stepwise_graph(mode: str, lengths: list | None) -> None:
    """The one-node recurrence (phi(0) = 0) and the step-by-step autograd graph give the same
    outputs, final state, depth and gradients (every parameter, the input and h0)."""
    m = make(mode, seed=3, backward_tol=1e-12)
    s = torch.randn(3, 5, 2, dtype=D64, requires_grad=True)
    h0 = torch.randn(3, 4, dtype=D64, requires_grad=True)
    L = None if lengths is None else torch.tensor(lengths)
    results = []
    for fused in (True, False):
        m.zero_grad()
        s.grad = h0.grad = None
        if fused:
            out = m.run(s, h0, L)
        else:  # the same run through the stepwise path
            s_, h0_, L_, _ = m._check_input(s, h0, L)
            hidden, h, x, records, valid = m._stepwise(s_, h0_, L_)
            y = h if mode == "seq2one" else hidden
            y = m.head(y)
            if mode == "seq2seq" and L_ is not None:
                y = y * (torch.arange(5)[None, :] < L_[:, None])[..., None].to(y.dtype)
            from idlkit.rnn import RNNOutput
            out = RNNOutput(y, hidden, h, x)
        loss = out.output.square().sum() + out.state.sin().sum() + out.hidden.cos().sum()
        loss.backward()
        grads = [p.grad.clone() for p in m.parameters()] + [s.grad.clone(), h0.grad.clone()]
        results.append((out, grads))
    (a, ga), (b, gb) = results
    for u, v in ((a.output, b.output), (a.state, b.state), (a.hidden, b.hidden), (a.final, b.final)):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-11)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-8, atol=1e-10)


def test_sigmoid_cell_takes_the_stepwise_path_with_exact_gradients() -> None:
    """phi(0) != 0 (sigmoid): the cell's shifted solve, one step at a time; gradients against
    finite differences."""
    m = make("seq2one", seed=4, activation="sigmoid", backward_tol=1e-12)
    s = torch.randn(2, 4, 2, dtype=D64)

    def f(t: torch.Tensor) -> torch.Tensor:
        return m(t).square().sum()

    assert torch.autograd.gradcheck(lambda t: f(t), (s.clone().requires_grad_(True),),
                                    eps=1e-6, atol=1e-6)
