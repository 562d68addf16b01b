"""idlkit.compress.staged: explicit levels around a smaller fixed point (paper 000 §5.2 (c)-(d)).

References: the unsplit :class:`ImplicitModel` solved to 1e-14 (outputs, states, gradients),
the torch network a converted model came from, finite differences (gradcheck), a dense
brute-force check of the partition's defining properties, and numpy eigenvalues for the
principal-submatrix certificate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import idlkit as idl
from idlkit.activations import BlockMax, Blockwise, SoftMax
from idlkit.compress import StagedImplicitModel, prune_states, stage_partition
from idlkit.errors import ConfigurationError
from idlkit.io import CheckpointError

TIGHT = {"solver": "picard", "tol": 1e-14, "max_iter": 5000, "backward_tol": 1e-14,
         "backward_stop": "absolute"}
LOOSE = {"solver": "picard", "tol": 1e-6, "max_iter": 5000}


def _planted(sizes, parts, *, act="relu", p=4, q=3, bias=True, sparse=False, dtype=torch.float64,
             seed=0, wellposedness="inf", scale=0.5):
    """A model whose blocks (``sizes``) are planted in ``parts`` ("pre", "core", "post"), in a
    shuffled order. Pre blocks read earlier pre blocks; core blocks read themselves, the other
    core blocks and pre blocks; post blocks read at least one core state, pre, core and earlier
    post blocks. Returns the model and the planted state sets."""
    rng = np.random.default_rng(seed)
    n = int(sum(sizes))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
    idx = [np.arange(s, s + z) for s, z in zip(starts, sizes, strict=True)]
    rank = rng.permutation(len(sizes))  # the planted order inside each part
    A = np.zeros((n, n))

    def rnd(*shape):
        return rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape)

    blocks = {k: sorted((b for b in range(len(sizes)) if parts[b] == k), key=lambda b: rank[b])
              for k in ("pre", "core", "post")}
    for k, bl in enumerate(blocks["pre"]):
        for e in blocks["pre"][:k]:
            if rng.random() < 0.6:
                A[np.ix_(idx[bl], idx[e])] = rnd(len(idx[bl]), len(idx[e]))
    for bl in blocks["core"]:
        for e in blocks["core"] + blocks["pre"]:
            if e == bl or e in blocks["core"] or rng.random() < 0.5:
                A[np.ix_(idx[bl], idx[e])] = rnd(len(idx[bl]), len(idx[e]))
    for k, bl in enumerate(blocks["post"]):
        c = blocks["core"][rng.integers(len(blocks["core"]))]
        A[np.ix_(idx[bl], idx[c])] = rnd(len(idx[bl]), len(idx[c]))
        for e in blocks["pre"] + blocks["core"] + blocks["post"][:k]:
            if rng.random() < 0.4:
                A[np.ix_(idx[bl], idx[e])] = rnd(len(idx[bl]), len(idx[e]))
    A *= scale / max(np.abs(A).sum(axis=1).max(), 1e-300)
    B, C, D = rnd(n, p), rnd(q, n), rnd(q, p)
    C /= np.abs(C).sum(axis=1, keepdims=True)  # ||C||_inf = 1: the solver's tolerance reaches y as is
    T = [torch.tensor(M, dtype=dtype) for M in (A, B, C, D)]
    if sparse:
        T = [M.to_sparse_csr() for M in T]
    b = torch.tensor(rng.normal(size=n), dtype=dtype) if bias else None
    d = torch.tensor(rng.normal(size=q), dtype=dtype) if bias else None
    kw = TIGHT if dtype == torch.float64 else LOOSE
    model = idl.ImplicitModel.from_matrices(*T, b, d, activation=act, wellposedness=wellposedness, **kw)
    planted = {k: sorted(int(i) for bl in blocks[k] for i in idx[bl]) for k in blocks}
    return model, planted


def _inputs(model, m=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, model.in_features, generator=g, dtype=model.A.dtype) * 2


def _dense(M):
    return (M.to_dense() if M.layout != torch.strided else M).detach()


def _check_partition(A, staging, sizes):
    """The defining properties of the split, checked on the dense pattern."""
    A = _dense(A).numpy() != 0
    n = A.shape[0]
    order = staging.order
    assert sorted(order) == list(range(n))
    pos = np.empty(n, dtype=int)
    pos[list(order)] = np.arange(n)
    npre, ncore = staging.n_pre, staging.n_core
    core = set(staging.core)
    done = 0
    for lv in staging.pre:  # a pre level reads only earlier levels
        for i in lv:
            assert all(pos[j] < done for j in np.flatnonzero(A[i]))
        done += len(lv)
    for i in staging.core:  # the core reads pre and core states only
        assert all(pos[j] < npre + ncore for j in np.flatnonzero(A[i]))
    done = npre + ncore
    for lv in staging.post:  # a post level reads states computed before it
        for i in lv:
            assert all(pos[j] < done for j in np.flatnonzero(A[i]))
        done += len(lv)
    # maximal: every non-pre block reads a non-pre state; every core block is read by a core state
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
    rest = [i for i in range(n) if pos[i] >= npre]
    for s, z in zip(starts, sizes, strict=True):
        blk = list(range(s, s + z))
        if blk[0] in core or pos[blk[0]] >= npre + ncore:
            assert A[np.ix_(blk, rest)].any()
        if blk[0] in core:
            assert A[np.ix_(sorted(core), blk)].any()
        assert len({pos[i] >= npre for i in blk} | set()) == 1  # a block is not split


PARTS = ["pre", "core", "post", "core", "pre", "post", "pre", "post", "core", "pre"]


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", ["relu", "tanh", "leaky_relu", "sigmoid"])
def test_staged_equals_original(act, bias, dtype, sparse):
    sizes = [2, 3, 1, 2, 3, 2, 1, 2, 2, 3]
    model, planted = _planted(sizes, PARTS, act=act, bias=bias, dtype=dtype, sparse=sparse,
                              seed=hash((act, bias, sparse)) % 1000)
    staged = StagedImplicitModel.from_implicit(model)
    st_ = staged.staging
    assert sorted(i for lv in st_.pre for i in lv) == planted["pre"]
    assert list(st_.core) == planted["core"]
    assert sorted(i for lv in st_.post for i in lv) == planted["post"]
    _check_partition(model.A, st_, [1] * model.hidden)
    U = _inputs(model)
    atol = 1e-12 if dtype == torch.float64 else 1e-5  # float32: two solves to tol 1e-6 each
    with torch.no_grad():
        y0, x0 = model.forward_with_state(U)
        y1, x1 = staged.forward_with_state(U)
    torch.testing.assert_close(y1, y0, atol=atol, rtol=0)
    torch.testing.assert_close(x1, x0, atol=atol, rtol=0)
    torch.testing.assert_close(staged.equilibrium(U[0]).detach(), x0[0], atol=atol, rtol=0)
    assert staged.in_features == model.in_features and staged.out_features == model.out_features
    sizes_planted = tuple(len(planted[k]) for k in ("pre", "core", "post"))
    assert (staged.n_pre, staged.n_core, staged.n_post) == sizes_planted
    assert staged.core.hidden == staged.n_core and staged.core.in_features == model.in_features + staged.n_pre
    # sparse stays sparse, and the whole model comes back exactly
    for M in (staged.core.A, staged.core.B, staged.C_post, *(lv.A for lv in staged.pre)):
        assert (M.layout != torch.strided) == sparse
    back = staged.to_implicit()
    for k in ("A", "B", "C", "D"):
        assert (getattr(back, k).layout != torch.strided) == sparse
        assert torch.equal(_dense(getattr(back, k)), _dense(getattr(model, k)))
    if bias:
        for k in ("b", "d"):
            assert torch.equal(getattr(back, k).detach(), getattr(model, k).detach())
    else:
        assert back.b is None
    assert back.activation.config() == model.activation.config()


def test_block_activations_move_whole():
    """SoftMax / BlockMax blocks and a Blockwise map mixing maps: blocks are never split."""
    act = Blockwise([(4, "relu"), (6, SoftMax(block_size=3)), (4, BlockMax(block_size=2)), (3, "tanh"),
                     (3, SoftMax())])
    sizes = [1, 1, 1, 1, 3, 3, 2, 2, 1, 1, 1, 3]
    parts = ["pre", "core", "post", "pre", "core", "post", "pre", "core", "post", "core", "pre", "post"]
    model, planted = _planted(sizes, parts, act=act, wellposedness=None, scale=0.4, seed=3)
    staged = StagedImplicitModel.from_implicit(model)
    assert sorted(staged.staging.core) == planted["core"]
    _check_partition(model.A, staged.staging, sizes)
    U = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(staged(U), model(U), atol=1e-12, rtol=0)
        torch.testing.assert_close(staged.equilibrium(U), model.equilibrium(U), atol=1e-12, rtol=0)
    assert staged.to_implicit().activation.config() == act.config()


def test_partition_ignores_explicit_zeros_and_reads_blocks():
    # an explicit zero in a sparse A is not an edge; a SoftMax block reading itself is core
    A = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    S = torch.sparse_csr_tensor(torch.tensor([0, 1, 2, 2]), torch.tensor([2, 0]),
                                torch.tensor([0.0, 0.5]), (3, 3))
    relu = idl.activations.ReLU()
    assert stage_partition(A, relu) == stage_partition(S, relu)
    assert stage_partition(A, relu).pre == ((0, 2), (1,))
    sm = SoftMax(block_size=3)
    assert stage_partition(A, sm).core == (0, 1, 2)


def test_converted_mlp_is_fully_explicit():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 6), torch.nn.Tanh(),
                              torch.nn.Linear(6, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 2)).double()
    model = idl.convert.from_torch(net, torch.randn(1, 5, dtype=torch.float64))
    staged = StagedImplicitModel.from_implicit(model)
    assert staged.n_core == 0 and len(staged.pre) == 3 and staged.n_post == 0
    U = torch.randn(9, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(staged(U), net(U), atol=1e-12, rtol=0)


def _loss(m, U, w):
    return (m(U) * w).sum()


def test_gradients_match_the_unsplit_model():
    sizes = [1] * 14
    parts = ["pre", "core", "post", "core", "pre", "post", "pre", "core", "post", "pre", "core", "pre",
             "post", "pre"]
    model, _ = _planted(sizes, parts, act="tanh", seed=5)
    staged = StagedImplicitModel.from_implicit(model)
    U = _inputs(model, m=6).requires_grad_(True)
    w = torch.randn(6, model.out_features, dtype=torch.float64)
    g0 = torch.autograd.grad(_loss(model, U, w), [U, model.A, model.B, model.C, model.D, model.b, model.d])
    params = dict(staged.named_parameters())
    grads = torch.autograd.grad(_loss(staged, U, w), [U, *params.values()])
    g1 = dict(zip(["u", *params], grads, strict=True))
    torch.testing.assert_close(g1["u"], g0[0], atol=1e-10, rtol=0)
    gA, gB, gC, gD, gb, gd = g0[1:]
    st_ = staged.staging
    pre = [i for lv in st_.pre for i in lv]
    core = list(st_.core)
    p = model.in_features
    done = []
    for k, lv in enumerate(st_.pre):
        if done:
            torch.testing.assert_close(g1[f"pre.{k}.A"], gA[list(lv)][:, done], atol=1e-10, rtol=0)
        torch.testing.assert_close(g1[f"pre.{k}.B"], gB[list(lv)], atol=1e-10, rtol=0)
        torch.testing.assert_close(g1[f"pre.{k}.b"], gb[list(lv)], atol=1e-10, rtol=0)
        done += list(lv)
    torch.testing.assert_close(g1["core.A"], gA[core][:, core], atol=1e-10, rtol=0)
    torch.testing.assert_close(g1["core.B"], torch.cat([gB[core], gA[core][:, pre]], 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(g1["core.C"], gC[:, core], atol=1e-10, rtol=0)
    torch.testing.assert_close(g1["core.D"], torch.cat([gD, gC[:, pre]], 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(g1["core.d"], gd, atol=1e-10, rtol=0)
    done += core
    for k, lv in enumerate(st_.post):
        torch.testing.assert_close(g1[f"post.{k}.A"], gA[list(lv)][:, done], atol=1e-10, rtol=0)
        torch.testing.assert_close(g1[f"post.{k}.B"], gB[list(lv)], atol=1e-10, rtol=0)
        done += list(lv)
    post = [i for lv in st_.post for i in lv]
    torch.testing.assert_close(g1["C_post"], gC[:, post], atol=1e-10, rtol=0)
    assert p == model.in_features
    # and against finite differences, in the input
    assert torch.autograd.gradcheck(lambda u: staged(u), (U[:3].detach().clone().requires_grad_(True),))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["inf", "pf", "mu"]))
def test_core_certificate_holds_when_the_original_does(seed, declared):
    """A principal submatrix of a certified |A| is certified: checked with numpy eigenvalues."""
    rng = np.random.default_rng(seed)
    n = 9
    A = rng.normal(size=(n, n)) * (rng.random((n, n)) < 0.5)
    A[rng.integers(n)] = 0.0  # one zero row: a pre state
    v = {"inf": np.abs(A).sum(1).max(),
         "pf": max(abs(np.linalg.eigvals(np.abs(A)))),
         "mu": max(np.diag(A) + np.abs(A).sum(1) - np.abs(np.diag(A)))}[declared]
    if v <= 0:
        return
    A *= 0.9 / v
    T = [torch.tensor(M) for M in (A, rng.normal(size=(n, 2)), rng.normal(size=(1, n)),
                                   rng.normal(size=(1, 2)))]
    model = idl.ImplicitModel.from_matrices(*T, activation="relu", wellposedness=declared, kappa=0.95)
    assert model.certificate().holds[declared]
    staged = StagedImplicitModel.from_implicit(model)
    assert staged.core.certificate().holds[declared]
    Ac = A[np.ix_(staged.staging.core, staged.staging.core)]
    if Ac.size:
        assert max(abs(np.linalg.eigvals(np.abs(Ac)))) <= max(abs(np.linalg.eigvals(np.abs(A)))) + 1e-12


def test_prune_states_split():
    sizes = [1] * 10
    model, planted = _planted(sizes, PARTS, seed=11)
    with torch.no_grad():  # a dead state (zero column of (A; C)) and a constant one (zero row of (A, B))
        model.C[:, 0] = 0
        model.A[:, 0] = 0
        model.A[1] = 0
        model.B[1] = 0
    staged, rep = prune_states(model)
    plain, rep0 = prune_states(model, split=False)
    assert isinstance(staged, StagedImplicitModel) and isinstance(plain, idl.ImplicitModel)
    assert rep.split and not rep0.split and rep.staging == rep0.staging
    assert rep.n_pre + rep.n_core + rep.n_post == rep.n_after == plain.hidden == staged.hidden
    assert {rep.part(i) for i in range(rep.n_after)} <= {"pre", "core", "post"}
    assert rep.n_core == staged.n_core < rep.n_after
    assert "pre" in str(rep)
    U = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(staged(U), model(U), atol=1e-12, rtol=0)
        torch.testing.assert_close(plain(U), model(U), atol=1e-12, rtol=0)
    # everything removed: an error unless asked for, then the static affine map
    with torch.no_grad():
        model.C.zero_()
    with pytest.raises(ConfigurationError, match="allow_empty"):
        prune_states(model)
    empty, rep2 = prune_states(model, allow_empty=True)
    assert empty.hidden == 0 and rep2.n_after == 0
    with torch.no_grad():
        torch.testing.assert_close(empty(U), model(U), atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad", [dict(tol=-1.0), dict(split="yes"), dict(linear=1)])
def test_prune_states_bad_input(bad):
    model, _ = _planted([1] * 4, ["pre", "core", "post", "core"], seed=1)
    with pytest.raises(ConfigurationError):
        prune_states(model, **bad)
    with pytest.raises(ConfigurationError):
        StagedImplicitModel.from_implicit(torch.nn.Linear(2, 2))


def test_warm_start_and_single_sample():
    model, _ = _planted([1] * 10, PARTS, seed=2)
    staged = StagedImplicitModel.from_implicit(model)
    U = _inputs(model, m=4)
    with torch.no_grad():
        X = model.equilibrium(U)
        y = staged(U, x0=X)
        torch.testing.assert_close(y, model(U), atol=1e-12, rtol=0)
        assert staged.last_solve.iterations <= 2
        assert staged(U[1]).shape == (model.out_features,)


@pytest.mark.parametrize("sparse", [False, True])
def test_save_load(tmp_path, sparse):
    model, _ = _planted([1] * 10, PARTS, seed=4, sparse=sparse)
    staged = StagedImplicitModel.from_implicit(model)
    path = idl.save(staged, tmp_path / "s.safetensors")
    back = idl.load(path)
    assert isinstance(back, StagedImplicitModel) and back.staging == staged.staging
    U = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(back(U), staged(U), atol=0, rtol=0)
    # a header whose split disagrees with the matrices is refused
    from idlkit.io import read_tensors, write_tensors

    tensors, meta = read_tensors(path)
    meta["staging"]["core"] = meta["staging"]["core"][:-1]
    write_tensors(tmp_path / "t.safetensors", tensors, meta)
    with pytest.raises(CheckpointError):
        idl.load(tmp_path / "t.safetensors")
