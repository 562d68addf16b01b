"""idlkit.compress.prune: exact state and input pruning (paper 000 §5.1-5.2), Thm 5.1 with tol.

Every pruned model is compared with the original on random inputs (the outputs must agree to
rounding), and the report with the roles planted in the matrices; the maximality of the result
(no prunable block left) and the identity of the kept blocks are checked independently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import idlkit as idl
from idlkit.activations import Blockwise, Centered, Product, SoftMax, get_activation
from idlkit.compress import (
    FeatureSelection,
    PruneReport,
    prune_inputs,
    prune_states,
    selected_features,
)
from idlkit.errors import ConfigurationError, NonFiniteError

ROLES = ("core", "const", "const2", "unused", "unused2", "closed", "onestep")
TIGHT = {"solver": "picard", "tol": 1e-14, "max_iter": 5000}


def _planted(act, sizes, roles, *, p=5, q=3, bias=True, sparse=False, dtype=torch.float64,
             scale=0.5, seed=0, wellposedness="inf", solver=None):
    """A model whose blocks (``sizes``) play the given ``roles``:

    core: reads core, closed, const, const2 states and the input; read by core and C.
    const: zero rows of (A, B) (case a). const2: reads only const states, zero B row (case a,
    second round). unused: zero columns of (A; C) (case b), reads core and unused2.
    unused2: read only by unused states, zero C column (case b, second round).
    closed: zero row of A, nonzero B row (case c). onestep: zero column of A, read by C (case d).
    """
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
    S = {r: [] for r in ROLES}
    for s0, size, r in zip(starts, sizes, roles, strict=True):
        S[r] += list(range(s0, s0 + size))
    S = {r: np.asarray(v, dtype=int) for r, v in S.items()}

    def rnd(*shape):
        return rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape)

    A = np.zeros((n, n))
    B = np.zeros((n, p))
    C = np.zeros((q, n))

    def put(rows, cols):
        if len(rows) and len(cols):
            A[np.ix_(rows, cols)] = rnd(len(rows), len(cols))

    core_reads = np.concatenate([S["core"], S["closed"], S["const"], S["const2"]])
    put(S["core"], core_reads)
    put(S["const2"], S["const"])
    put(S["unused"], np.concatenate([S["core"], S["unused2"]]))
    put(S["unused2"], S["core"])
    put(S["onestep"], S["core"])
    for r in ("core", "unused", "unused2", "closed", "onestep"):
        B[S[r]] = rnd(len(S[r]), p)
    for r in ("core", "const", "const2", "closed", "onestep"):
        C[:, S[r]] = rnd(q, len(S[r]))
    rows = np.abs(A).sum(axis=1).max(initial=0.0)
    if rows > 0:
        A *= scale / rows
    D = rnd(q, p)
    b = rng.normal(size=n) if bias else None
    d = rng.normal(size=q) if bias else None
    T = [torch.tensor(M, dtype=dtype) for M in (A, B, C, D)]
    if sparse:
        T = [M.to_sparse_csr() for M in T]
    bb = None if b is None else torch.tensor(b, dtype=dtype)
    dd = None if d is None else torch.tensor(d, dtype=dtype)
    kw = dict(TIGHT) if dtype == torch.float64 else {"solver": "picard", "tol": 1e-6, "max_iter": 2000}
    if solver is not None:
        kw["solver"] = solver
    model = idl.ImplicitModel.from_matrices(*T, bb, dd, activation=act, wellposedness=wellposedness,
                                            **kw)
    return model, S


def _roles(rng, nblocks, core=1):
    """A random role per block, at least ``core`` core blocks."""
    r = ["core"] * core + list(rng.choice(ROLES, nblocks - core))
    rng.shuffle(r)
    return r


def _dense(M):
    return M.to_dense() if M.layout != torch.strided else M


def _max_diff(m1, m2, U, U2=None):
    with torch.no_grad():
        return float((m1(U) - m2(U if U2 is None else U2)).abs().max())


def _inputs(model, m=64, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, model.in_features, generator=g, dtype=model.A.dtype) * scale


def _check_structure(model, small, rep, linear=False):
    """Independent checks of a prune result: partition of the states, the kept submatrices,
    maximality (no zero row of (A, B) and no zero column of (A; C) in a kept block), the
    declared well-posedness."""
    n = model.hidden
    assert sorted(rep.kept + rep.removed) == list(range(n))
    assert rep.n_before == n and rep.n_after == small.hidden == len(rep.kept)
    assert len(rep.reasons) == len(rep.rounds) == len(rep.removed)
    kept = torch.tensor(rep.kept, dtype=torch.long)
    A, B, C = (_dense(model.A), _dense(model.B), _dense(model.C))
    assert torch.equal(_dense(small.A), A[kept][:, kept])
    if not linear:  # substitutions change B, C, D
        assert torch.equal(_dense(small.B), B[kept])
        assert torch.equal(_dense(small.C), C[:, kept])
        assert torch.equal(_dense(small.D), _dense(model.D))
    sizes = small.activation.blocks(small.hidden).sizes
    A1, B1, C1 = _dense(small.A), _dense(small.B), _dense(small.C)
    s0 = 0
    for s in sizes:
        blk = slice(s0, s0 + s)
        assert bool((A1[blk] != 0).any() or (B1[blk] != 0).any()), "a constant block was left"
        assert bool((A1[:, blk] != 0).any() or (C1[:, blk] != 0).any()), "an unused block was left"
        s0 += s
    # every kept block reaches the output through A (an independent search, state level)
    reach = set(np.flatnonzero((C1 != 0).any(0).numpy()).tolist())
    frontier = list(reach)
    while frontier:
        i = frontier.pop()
        for j in np.flatnonzero((A1[i] != 0).numpy()).tolist():  # i reads j
            if j not in reach:
                reach.add(j)
                frontier.append(j)
    s0 = 0
    for s in sizes:
        assert reach & set(range(s0, s0 + s)), "an unobservable block was left"
        s0 += s
    cert = small.certificate()
    if small.wellposedness is not None and small.hidden:
        assert cert.holds[small.wellposedness]
    assert (small.sparse, small.A.dtype) == (model.sparse, model.A.dtype)
    assert rep.nnz_after["A"] == int((A1 != 0).sum())
    assert rep.nnz_before["A"] == int((A != 0).sum())


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_every_case_exact_float64(act, sparse, bias):
    roles = ["core"] * 4 + ["const"] * 2 + ["const2"] * 2 + ["unused"] * 2 + ["unused2"] * 2 + \
        ["closed"] * 2 + ["onestep"] * 2
    rng = np.random.default_rng(3)
    rng.shuffle(roles)
    model, S = _planted(act, [1] * len(roles), roles, bias=bias, sparse=sparse)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    U = _inputs(model)
    assert _max_diff(model, small, U) <= 1e-12
    assert isinstance(rep, PruneReport) and rep.exact
    want_removed = {int(i): "constant" for r in ("const", "const2") for i in S[r]}
    want_removed |= {int(i): "unused" for r in ("unused", "unused2") for i in S[r]}
    assert dict(zip(rep.removed, rep.reasons, strict=True)) == want_removed
    if act == "sigmoid" or bias:
        assert small.b is not None  # folded phi(b) (sigmoid: phi(0) = 1/2) needs biases
    else:
        assert small.b is None  # constants phi(0) = 0: nothing to fold, no bias made
    # second-round states went in round 2
    for i, r in zip(rep.removed, rep.rounds, strict=True):
        assert r == (2 if i in set(S["const2"]) | set(S["unused2"]) else 1)
    # cases (c) and (d), in the pruned model's numbering
    pos = {k: j for j, k in enumerate(rep.kept)}
    assert set(rep.closed_form) == {pos[int(i)] for i in S["closed"]}
    assert set(rep.one_step) == {pos[int(i)] for i in S["onestep"]}
    assert rep.n_iterated == len(S["core"])
    assert "exact=True" in str(rep)


@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_every_case_exact_float32(act, sparse, bias):
    rng = np.random.default_rng(5)
    model, _ = _planted(act, [1] * 20, _roles(rng, 20, core=5), sparse=sparse, dtype=torch.float32,
                        seed=5, bias=bias)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    assert small.A.dtype == torch.float32
    assert _max_diff(model, small, _inputs(model, scale=0.5)) <= 1e-5


def test_states_equal_on_kept_indices():
    model, _ = _planted("tanh", [1] * 16, _roles(np.random.default_rng(0), 16, core=4), seed=2)
    small, rep = prune_states(model, split=False)
    U = _inputs(model)
    with torch.no_grad():
        X, X1 = model.equilibrium(U), small.equilibrium(U)
    assert float((X[:, list(rep.kept)] - X1).abs().max()) <= 1e-12
    for i, why in zip(rep.removed, rep.reasons, strict=True):
        if why == "constant":  # a constant state is phi(b_i) of the folded biases: constant in u
            assert float(X[:, i].std()) <= 1e-14


def test_cascading_chains():
    """x_1 constant, x_2 reads only x_1, x_3 only x_2, ...: one state per round; likewise a
    chain read only from its end, with the end unused."""
    k, n, p = 5, 13, 2
    A = torch.zeros(n, n, dtype=torch.float64)
    B = torch.zeros(n, p, dtype=torch.float64)
    C = torch.zeros(1, n, dtype=torch.float64)
    for i in range(1, k):  # constant chain 0 <- 1 <- ... <- k-1, read by the core state 12
        A[i, i - 1] = 0.4
    A[12, k - 1] = 0.3
    for i in range(k, 2 * k - 1):  # unused chain: state i is read by i + 1 only; 2k-1 unused
        A[i + 1, i] = 0.4
        B[i] = 1.0
    B[2 * k - 1] = 1.0
    A[2 * k - 1, 12] = 0.2
    B[10:13] = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.3]], dtype=torch.float64)
    A[12, 10], A[10, 11], A[11, 12] = 0.3, 0.5, -0.4  # a core cycle 10 -> 11 -> 12
    C[0, 10:13] = 1.0
    C[0, 0] = 2.0  # the start of the constant chain feeds the output
    b = torch.linspace(-1, 1, n, dtype=torch.float64)
    model = idl.ImplicitModel.from_matrices(A, B, C, torch.ones(1, p, dtype=torch.float64), b,
                                            activation="tanh", **TIGHT)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    assert rep.kept == (10, 11, 12)
    rounds = dict(zip(rep.removed, rep.rounds, strict=True))
    assert [rounds[i] for i in range(k)] == [1, 2, 3, 4, 5]
    assert [rounds[i] for i in range(2 * k - 1, k - 1, -1)] == [1, 2, 3, 4, 5]
    assert _max_diff(model, small, _inputs(model)) <= 1e-12
    # the constants' values, folded: b_12 gained A[12, 4] x_4 and d gained C[0, 0] x_0
    x = torch.zeros(k, dtype=torch.float64)
    x[0] = torch.tanh(b[0])
    for i in range(1, k):
        x[i] = torch.tanh(0.4 * x[i - 1] + b[i])
    assert float(small.b[2] - (b[12] + 0.3 * x[k - 1])) == pytest.approx(0, abs=1e-15)
    assert float(small.d[0] - 2.0 * x[0]) == pytest.approx(0, abs=1e-15)


def test_nothing_to_prune_and_everything():
    model = idl.ImplicitModel(3, 6, 2, activation="tanh", **TIGHT).double()
    small, rep = prune_states(model, split=False)
    assert rep.removed == () and small.hidden == 6 and rep.rounds == ()
    assert _max_diff(model, small, _inputs(model)) == 0.0
    with torch.no_grad():
        model.C.zero_()  # nothing reaches the output: every state is unused
    with pytest.raises(ConfigurationError, match="would remove all 6 states"):
        prune_states(model, split=False)
    small, rep = prune_states(model, split=False, allow_empty=True)
    assert small.hidden == 0 and set(rep.reasons) == {"unobservable"}  # a dense A: cycles
    assert _max_diff(model, small, _inputs(model)) <= 1e-12


@pytest.mark.parametrize("kind", ["inf", "pf", "mu", "triangular"])
def test_wellposedness_kept(kind):
    roles = _roles(np.random.default_rng(7), 18, core=6)
    model, _ = _planted("relu", [1] * 18, roles, seed=7, wellposedness=None)
    A = model.A.detach().clone()
    if kind == "triangular":
        A = torch.triu(A, diagonal=1)
        with torch.no_grad():
            model.A.copy_(A)
    model = idl.ImplicitModel.from_matrices(A, model.B.detach(), model.C.detach(), model.D.detach(),
                                            model.b.detach(), model.d.detach(), wellposedness=kind,
                                            kappa=0.9, **TIGHT)
    small, rep = prune_states(model, split=False)
    assert small.wellposedness == kind and small.kappa == 0.9
    _check_structure(model, small, rep)
    c0, c1 = model.certificate(), small.certificate()
    assert c1.inf_norm <= c0.inf_norm and c1.pf <= c0.pf + 1e-12
    assert _max_diff(model, small, _inputs(model)) <= 1e-12


def test_settings_and_parameters_carried():
    model, _ = _planted("relu", [1] * 10, _roles(np.random.default_rng(1), 10, core=3), seed=1)
    model.B.requires_grad_(False)
    model.eval()
    small, rep = prune_states(model, split=False)
    assert small.settings is model.settings
    assert not small.B.requires_grad and small.A.requires_grad and not small.training
    assert rep.reason(rep.removed[0]) == rep.reasons[0] and rep.reason(rep.kept[0]) is None
    small(_inputs(model, m=4)).sum().backward()  # a fresh trainable model: implicit gradients
    assert small.A.grad is not None and small.A.grad.shape == (small.hidden, small.hidden)


# ----------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_softmax_blocks(sparse):
    rng = np.random.default_rng(11)
    roles = _roles(rng, 10, core=3)
    model, S = _planted(SoftMax(block_size=2), [2] * 10, roles, seed=11, sparse=sparse)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    assert _max_diff(model, small, _inputs(model)) <= 1e-12
    removed = set(rep.removed)
    for r in ("const", "const2", "unused", "unused2"):
        assert set(S[r].tolist()) <= removed
    assert small.hidden % 2 == 0


def test_blockwise_mixed():
    act = Blockwise([(4, "relu"), (6, SoftMax(block_size=2)), (4, Product("sigmoid", "tanh")),
                     (3, "tanh")])
    sizes = list(act.blocks(17).sizes)
    roles = _roles(np.random.default_rng(4), len(sizes), core=4)
    model, S = _planted(act, sizes, roles, seed=4)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    assert _max_diff(model, small, _inputs(model)) <= 1e-12
    assert small.activation.blocks(small.hidden).sizes == tuple(
        s for s, r in zip(sizes, roles, strict=True) if r not in ("const", "const2", "unused", "unused2"))


def test_partly_zero_block_is_kept():
    """A SoftMax block with one constant row and one live row couples both: kept whole."""
    roles = ["core", "core", "closed"]
    model, _ = _planted(SoftMax(block_size=2), [2, 2, 2], roles, seed=9)
    A, B = model.A.detach().clone(), model.B.detach().clone()
    A[0], B[0] = 0.0, 0.0  # state 0 alone looks constant, its partner 1 does not
    A[:, 3], A[:, 5] = 0.0, 0.0  # state 3, 5 columns of A zero ...
    C = model.C.detach().clone()
    C[:, 3] = 0.0  # ... state 3 alone looks unused, its partner 2 does not
    m = idl.ImplicitModel.from_matrices(A, B, C, model.D.detach(), model.b.detach(), model.d.detach(),
                                        activation=SoftMax(block_size=2), **TIGHT)
    small, rep = prune_states(m, split=False)
    assert rep.removed == () and small.hidden == 6
    assert _max_diff(m, small, _inputs(m)) <= 1e-12


# ----------------------------------------------------------------------------- realistic models


def test_thresholded_random_model():
    """A dense random model sparsified by magnitude (and a group-lasso-like zeroing of rows
    of B and columns of C): prune exactly what the thresholded pattern allows."""
    g = torch.Generator().manual_seed(0)
    n, p, q = 40, 6, 3
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = torch.where(A.abs() > 2.2, A, torch.zeros_like(A))
    A *= 0.6 / A.abs().sum(1).max()
    B = torch.randn(n, p, generator=g, dtype=torch.float64)
    C = torch.randn(q, n, generator=g, dtype=torch.float64)
    B[torch.rand(n, generator=g) < 0.4] = 0.0
    C[:, torch.rand(n, generator=g) < 0.4] = 0.0
    D = torch.randn(q, p, generator=g, dtype=torch.float64)
    b, d = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(q, generator=g, dtype=torch.float64)
    for act in ("relu", "tanh"):
        model = idl.ImplicitModel.from_matrices(A, B, C, D, b, d, activation=act, **TIGHT)
        small, rep = prune_states(model, split=False)
        _check_structure(model, small, rep)
        assert 0 < small.hidden < n
        assert _max_diff(model, small, _inputs(model)) <= 1e-12


def test_l1_trained_model():
    """A model trained with an l1 penalty (a few proximal steps make exact zeros), then pruned."""
    torch.manual_seed(0)
    model = idl.ImplicitModel(4, 12, 2, activation="relu", dtype=torch.float64, **TIGHT)
    U = torch.randn(64, 4, dtype=torch.float64)
    Y = torch.randn(64, 2, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    lam = 0.02
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(U), Y).backward()
        opt.step()
        with torch.no_grad():  # proximal step of lam * ||(A, B, C)||_1: soft thresholding
            for W in (model.A, model.B, model.C):
                W.copy_(torch.sign(W) * (W.abs() - 0.05 * lam * 40).clamp_min(0))
        model.project_()
    small, rep = prune_states(model, split=False, allow_empty=True)
    _check_structure(model, small, rep)
    assert rep.removed  # the penalty zeroed whole rows/columns
    assert _max_diff(model, small, U) <= 1e-12


def test_converted_mlp_with_dead_units():
    """A converted MLP (sparse, triangular) with dead hidden units: units with zero incoming
    weights are constants relu(bias), units with zero outgoing weights are unused."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6),
                              torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    with torch.no_grad():
        net[0].weight[[1, 5]] = 0.0  # constant units of layer 1
        net[2].weight[:, 3] = 0.0  # unit 3 of layer 1 read by nothing
        net[4].weight[:, [0, 4]] = 0.0  # units 0, 4 of layer 2 unused -> their inputs may cascade
        net[2].weight[[0, 4]] = 0.0
        net[2].weight[[0, 4], 2] = 1.0  # ... units 0, 4 of layer 2 were the only readers of unit 2
        net[2].weight[:, 2] = 0.0
        net[2].weight[0, 2] = 1.0
    model = idl.convert.from_torch(net, torch.randn(3, 4, dtype=torch.float64))
    model.set_solver(tol=1e-14)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    U = torch.randn(50, 4, dtype=torch.float64)
    with torch.no_grad():
        assert float((small(U) - net(U)).abs().max()) <= 1e-12
    assert small.hidden <= model.hidden - 5
    assert max(rep.rounds) >= 2  # unit 2 of layer 1 goes after unit 0 of layer 2


# ----------------------------------------------------------------------------- hypothesis


@given(st.integers(1, 12), st.integers(0, 2**31 - 1),
       st.sampled_from(["relu", "tanh", "leaky_relu", "mixed"]), st.booleans(), st.booleans(),
       st.floats(0.05, 0.9), st.booleans())
def test_random_patterns(n, seed, act, sparse, bias, density, linear):
    rng = np.random.default_rng(seed)
    if act == "mixed":  # identity states (substituted with linear=True) among tanh ones
        k = n // 2
        act = Blockwise([(k, "identity"), (n - k, "tanh")]) if 0 < k < n else "identity"
    p, q = 3, 2
    A = rng.normal(size=(n, n)) * (rng.random((n, n)) < density)
    A *= 0.5 / max(np.abs(A).sum(1).max(), 1e-300)
    B = rng.normal(size=(n, p)) * (rng.random((n, 1)) < 0.6)
    C = rng.normal(size=(q, n)) * (rng.random((1, n)) < 0.6)
    D = rng.normal(size=(q, p))
    T = [torch.tensor(M) for M in (A, B, C, D)]
    if sparse:
        T = [M.to_sparse_csr() for M in T]
    bb = torch.tensor(rng.normal(size=n)) if bias else None
    model = idl.ImplicitModel.from_matrices(*T, bb, activation=act, **TIGHT)
    small, rep = prune_states(model, linear=linear, split=False, allow_empty=True)
    _check_structure(model, small, rep, linear=linear)
    assert _max_diff(model, small, _inputs(model, m=16)) <= 1e-12
    if linear:
        A1 = _dense(small.A)
        for k, is_lin in enumerate(_lin_mask(small)):
            assert not is_lin or bool((A1[k] != 0).any() and (A1[:, k] != 0).any())
    # idempotent: a second pass finds nothing
    again, rep2 = prune_states(small, linear=linear, split=False, allow_empty=True)
    assert rep2.removed == () and again.hidden == small.hidden


# ----------------------------------------------------------------------------- tol and Thm 5.1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_tol_respects_thm_5_1(seed, act):
    """Entries of A below tol planted in would-be zero rows/columns: the pruned model is
    exactly the thresholded one, and its states and outputs differ from the original's by at
    most the model-error bound of Thm 5.1 (E = |A - A_tol|)."""
    rng = np.random.default_rng(seed)
    roles = _roles(rng, 24, core=6)
    model, S = _planted(act, [1] * 24, roles, seed=seed)
    tol = 0.03
    A = model.A.detach().clone()
    small_entries = torch.tensor(rng.uniform(-tol, tol, A.shape)) * torch.tensor(rng.random(A.shape) < 0.3)
    A = A + small_entries * (A == 0)
    A *= 0.5 / float(A.abs().sum(1).max())
    model = idl.ImplicitModel.from_matrices(A, model.B.detach(), model.C.detach(), model.D.detach(),
                                            model.b.detach(), model.d.detach(), activation=act, **TIGHT)
    small, rep = prune_states(model, tol=tol, split=False)
    assert rep.max_dropped["B"] == rep.max_dropped["C"] == 0.0 and 0 < rep.max_dropped["A"] <= tol
    assert not rep.exact
    # the thresholded model, built independently
    A_tol = torch.where(A.abs() <= tol, torch.zeros_like(A), A)
    thr = idl.ImplicitModel.from_matrices(A_tol, model.B.detach(), model.C.detach(), model.D.detach(),
                                          model.b.detach(), model.d.detach(), activation=act, **TIGHT)
    U = _inputs(model, m=32, seed=seed)
    assert _max_diff(thr, small, U) <= 1e-12
    E = idl.robust.perturbation_bound(model, A_tol)
    bound = idl.robust.model_error_bound(model, E, U)
    with torch.no_grad():
        X, Xt, X1 = model.equilibrium(U), thr.equilibrium(U), small.equilibrium(U)
        Y, Y1 = model(U), small(U)
    kept = list(rep.kept)
    assert bool(((Xt - X).abs() <= bound + 1e-12).all())
    assert bool(((X1 - X[:, kept]).abs() <= bound[:, kept] + 1e-12).all())
    out_bound = bound @ model.C.detach().abs().t()  # C is unchanged: |y - y0| <= |C| |x - x0|
    assert bool(((Y1 - Y).abs() <= out_bound + 1e-12).all())
    assert float((Y1 - Y).abs().max()) > 0  # the dropped entries did change something


def test_tol_zero_drops_nothing_nonzero():
    model, _ = _planted("relu", [1] * 8, _roles(np.random.default_rng(2), 8, core=2), seed=2)
    with torch.no_grad():
        model.A[0, 1] = 1e-300 if model.A[0, 1] == 0 else model.A[0, 1]
    _, rep = prune_states(model, tol=0.0, split=False)
    assert rep.exact and rep.max_dropped == {"A": 0.0, "B": 0.0, "C": 0.0}


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_selected_features_and_prune_inputs(sparse):
    g = torch.Generator().manual_seed(3)
    n, p, q = 7, 8, 3
    A = torch.randn(n, n, generator=g, dtype=torch.float64)
    A *= 0.5 / A.abs().sum(1).max()
    B = torch.randn(n, p, generator=g, dtype=torch.float64)
    D = torch.randn(q, p, generator=g, dtype=torch.float64)
    B[:, [1, 4, 6]] = 0.0
    D[:, [1, 6, 7]] = 0.0  # 4: zero in B only; 7: zero in D only: both are features
    C = torch.randn(q, n, generator=g, dtype=torch.float64)
    mats = [A, B, C, D]
    if sparse:
        mats = [M.to_sparse_csr() for M in mats]
    model = idl.ImplicitModel.from_matrices(*mats, torch.randn(n, dtype=torch.float64),
                                            activation="tanh", **TIGHT)
    sel = selected_features(model)
    assert isinstance(sel, FeatureSelection)
    assert sel.selected == (0, 2, 3, 4, 5, 7) and sel.dropped == (1, 6)
    BD = torch.cat([B, D]).numpy()
    for alpha in (1.0, 2.0, 3.0, math.inf):
        norms = selected_features(model, alpha=alpha).norms
        np.testing.assert_allclose(norms, np.linalg.norm(BD, ord=alpha, axis=0), rtol=1e-14)
    small, sel2 = prune_inputs(model)
    assert sel2 == sel and small.in_features == 6 and small.sparse == model.sparse
    assert (sel.p_before, sel.p_after) == (8, 6)
    U = _inputs(model)
    assert _max_diff(model, small, U, U[:, sel.index()]) <= 1e-12
    # with tol: columns whose entries are all small go; the result is the thresholded model
    Bs = B.clone()
    Bs[:, 0] = 1e-4
    D2 = D.clone()
    D2[:, 0] = -1e-4
    m2 = idl.ImplicitModel.from_matrices(A, Bs, C, D2, activation="tanh", **TIGHT)
    small2, sel3 = prune_inputs(m2, tol=1e-3)
    assert 0 not in sel3.selected and sel3.tol == 1e-3
    B_tol = torch.where(Bs.abs() <= 1e-3, 0.0, Bs)
    D_tol = torch.where(D2.abs() <= 1e-3, 0.0, D2)
    ref = idl.ImplicitModel.from_matrices(A, B_tol, C, D_tol, activation="tanh", **TIGHT)
    assert _max_diff(ref, small2, U, U[:, sel3.index()]) <= 1e-12


def test_prune_inputs_then_states_compose():
    model, _ = _planted("relu", [1] * 14, _roles(np.random.default_rng(8), 14, core=4), p=6, seed=8)
    with torch.no_grad():
        model.B[:, 2] = 0.0
        model.D[:, 2] = 0.0
    m1, sel = prune_inputs(model)
    m2, rep = prune_states(m1, split=False)
    U = _inputs(model)
    assert _max_diff(model, m2, U, U[:, sel.index()]) <= 1e-12


# ----------------------------------------------------------------------------- errors and wiring


def test_bad_input():
    model = idl.ImplicitModel(3, 4, 2)
    for tol in (-1.0, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ConfigurationError, match="tol"):
            prune_states(model, tol=tol, split=False)
        with pytest.raises(ConfigurationError, match="tol"):
            selected_features(model, tol=tol)
    with pytest.raises(ConfigurationError, match="from_torch"):
        prune_states(torch.nn.Linear(3, 2))
    with pytest.raises(ConfigurationError, match="ImplicitModel"):
        prune_inputs(torch.nn.Linear(3, 2))
    lr = idl.LowRankImplicitModel(3, 6, 2, rank=2)
    with pytest.raises(ConfigurationError, match="to_dense"):
        prune_states(lr, split=False)
    with pytest.raises(ConfigurationError, match="alpha"):
        selected_features(model, alpha=0.5)
    bad = idl.ImplicitModel(3, 4, 2, wellposedness=None)
    with torch.no_grad():
        bad.C[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="C"):
        prune_states(bad, split=False)
    with torch.no_grad():
        model.B.zero_()
        model.D.zero_()
    with pytest.raises(ConfigurationError, match="every column"):
        prune_inputs(model)


def test_public_names():
    assert idl.compress.prune_states is prune_states
    assert idl.compress.LowRankImplicitModel is idl.LowRankImplicitModel
    from idlkit.lowrank import LowRankImplicitModel

    assert LowRankImplicitModel is idl.LowRankImplicitModel
    assert get_activation("relu") is not None


def test_unobservable_cycle():
    """States 3, 4 read each other (a cycle) and the core, but nothing that reaches the
    output reads them: the column rule cannot peel them, the reachability pass removes them."""
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[0, 1], A[1, 2], A[2, 0] = 0.3, -0.4, 0.2
    A[3, 4], A[4, 3], A[3, 0] = 0.4, 0.4, 0.1
    B = torch.ones(5, 2, dtype=torch.float64)
    C = torch.zeros(1, 5, dtype=torch.float64)
    C[0, 1] = 1.0
    model = idl.ImplicitModel.from_matrices(A, B, C, torch.ones(1, 2, dtype=torch.float64),
                                            activation="tanh", **TIGHT)
    small, rep = prune_states(model, split=False)
    _check_structure(model, small, rep)
    assert rep.kept == (0, 1, 2) and dict(zip(rep.removed, rep.reasons, strict=True)) == {
        3: "unobservable", 4: "unobservable"}
    assert _max_diff(model, small, _inputs(model)) <= 1e-12


def test_edge_cases_blocks_and_empty():
    U = torch.randn(5, 3, dtype=torch.float64)
    m0 = idl.ImplicitModel(3, 0, 2, dtype=torch.float64)  # no state at all
    s, rep = prune_states(m0, split=False)
    assert s.hidden == 0 and rep.removed == () and _max_diff(m0, s, U) == 0.0
    # one SoftMax block over all states: removed only whole
    m = idl.ImplicitModel(3, 4, 2, activation="softmax", dtype=torch.float64, tol=1e-14)
    with torch.no_grad():
        m.A.zero_()
        m.B.zero_()  # a constant block softmax(b), folded into d
    s, rep = prune_states(m, split=False, allow_empty=True)
    assert s.hidden == 0 and rep.reasons == ("constant",) * 4
    assert _max_diff(m, s, U) <= 1e-14
    # a user's Centered(Blockwise(...)): restricted to the kept blocks, still centred
    act = Centered(Blockwise([(2, "sigmoid"), (4, SoftMax(block_size=2))]))
    m = idl.ImplicitModel(3, 6, 2, activation=act, dtype=torch.float64, tol=1e-14)
    with torch.no_grad():
        m.A[:, 0] = 0
        m.C[:, 0] = 0
        m.A[2:4] = 0
        m.B[2:4] = 0
    s, rep = prune_states(m, split=False)
    assert dict(zip(rep.removed, rep.reasons, strict=True)) == {0: "unused", 2: "constant", 3: "constant"}
    assert isinstance(s.activation, Centered) and s.activation.blocks(3).sizes == (1, 2)
    assert _max_diff(m, s, U) <= 1e-12


# ----------------------------------------------------------------------------- linear=True


def _lin_mask(model):
    from idlkit.activations import Identity, block_activations

    return [s == 1 and isinstance(a, Identity) for s, a in block_activations(model.activation, model.hidden)]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("seed", range(3))
def test_linear_substitution(sparse, seed):
    rng = np.random.default_rng(seed)
    n_lin, n_relu = 10, 10
    act = Blockwise([(n_lin, "identity"), (n_relu, "relu")])
    roles = _roles(rng, n_lin + n_relu, core=4)
    model, S = _planted(act, [1] * (n_lin + n_relu), roles, sparse=sparse, seed=seed)
    plain, rep0 = prune_states(model, split=False)
    small, rep = prune_states(model, linear=True, split=False)
    U = _inputs(model)
    assert _max_diff(model, small, U) <= 1e-12
    assert (small.sparse, small.B.layout, small.C.layout) == (model.sparse, model.B.layout, model.C.layout)
    why = dict(zip(rep.removed, rep.reasons, strict=True))
    for i in S["closed"]:
        assert why.get(int(i)) == ("linear_closed_form" if i < n_lin else None)
    for i in S["onestep"]:
        assert why.get(int(i)) == ("linear_one_step" if i < n_lin else None)
    assert small.hidden <= plain.hidden
    assert set(rep0.removed) <= set(rep.removed)
    # no identity state with a zero row or zero column of A is left
    A1 = _dense(small.A)
    for k, is_lin in enumerate(_lin_mask(small)):
        if is_lin:
            assert bool((A1[k] != 0).any() and (A1[:, k] != 0).any())
    assert small.certificate().holds["inf"]


def test_linear_chains():
    """Identity states in chains: x0 = B0 u; x1 = 0.5 x0 (closed form once x0 is substituted);
    x2 = relu(...) reads x1 and itself; x3 = 0.4 x2 + B3 u, x4 = 0.5 x3 read by the output only
    (one step, then x3 once x4 is substituted). The converters compose linear layers already, so
    identity states come from hand-built or fitted models."""
    act = Blockwise([(2, "identity"), (1, "relu"), (2, "identity")])
    A = torch.zeros(5, 5, dtype=torch.float64)
    A[1, 0], A[2, 1], A[2, 2], A[3, 2], A[4, 3] = 0.5, 0.3, 0.2, 0.4, 0.5
    B = torch.zeros(5, 3, dtype=torch.float64)
    B[0] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    B[2, 1], B[3, 2] = 1.0, -1.0
    C = torch.zeros(2, 5, dtype=torch.float64)
    C[:, 4] = torch.tensor([1.0, -3.0], dtype=torch.float64)
    C[0, 2] = 0.7
    D = torch.ones(2, 3, dtype=torch.float64)
    b = torch.tensor([0.1, -0.2, 0.3, 0.4, -0.5], dtype=torch.float64)
    model = idl.ImplicitModel.from_matrices(A, B, C, D, b, activation=act, **TIGHT)
    small, rep = prune_states(model, linear=True, split=False)
    assert rep.kept == (2,) and small.activation.blocks(1).sizes == (1,)
    got = {i: (w, r) for i, w, r in zip(rep.removed, rep.reasons, rep.rounds, strict=True)}
    assert got == {0: ("linear_closed_form", 1), 1: ("linear_closed_form", 2),
                   4: ("linear_one_step", 1), 3: ("linear_one_step", 2)}  # (c) then (d) per round
    # the substituted model, by hand: x2 = relu(0.2 x2 + 0.3 (0.5 (B0 u + b0) + b1) + B2 u + b2)
    B2 = 0.3 * 0.5 * B[0] + B[2]
    assert torch.allclose(_dense(small.B)[0], B2, rtol=0, atol=1e-15)
    assert float(small.b[0]) == pytest.approx(0.3 * (0.5 * 0.1 - 0.2) + 0.3, abs=1e-15)
    U = _inputs(model)
    assert _max_diff(model, small, U) <= 1e-12
    plain, rep0 = prune_states(model, split=False)  # without substitution nothing goes
    assert rep0.removed == () and set(rep0.closed_form) == {0} and set(rep0.one_step) == {4}


