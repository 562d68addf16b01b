"""Checkpoints: round trip, corrupted files, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch

import idlkit
import idlkit.io as idlio
from idlkit.activations import BlockMax, Blockwise, LeakyReLU, SoftMax
from idlkit.errors import IdlError
from idlkit.io import CheckpointError

F64 = torch.float64

CONFIGS = {
    "relu-inf-f32": dict(activation="relu"),
    "leaky-mu-f64": dict(activation=LeakyReLU(0.2), wellposedness="mu", kappa=0.7,
                         dtype=F64, solver="averaged", tol=1e-9),
    "sigmoid-pf": dict(activation="sigmoid", wellposedness="pf", kappa=0.5, solver="picard"),
    "tanh-none-nobias": dict(activation="tanh", wellposedness=None, bias=False, dtype=F64,
                             backward_solver="picard", backward_tol=1e-8, anderson_m=3),
    "identity-tri": dict(activation="identity", wellposedness="triangular", solver="triangular",
                         dtype=F64),
    "softmax": dict(activation=SoftMax(2), dtype=F64, max_iter=77),
    "blockmax": dict(activation=BlockMax(3)),
    "blockwise": dict(activation=Blockwise([(2, "relu"), (4, SoftMax(2))]), dtype=F64,
                      on_nonconvergence="warn", alpha=0.5),
}


def _model(cfg: dict, seed: int = 0) -> idlkit.ImplicitModel:
    torch.manual_seed(seed)
    m = idlkit.ImplicitModel(5, 6, 3, **cfg)
    with torch.no_grad():  # move away from the initial values
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    m.project_()
    return m


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_identical_outputs(name, tmp_path):
    m = _model(CONFIGS[name])
    path = tmp_path / "model.idl"
    out = idlkit.save(m, path)
    assert os.fspath(out) == os.fspath(path)
    m2 = idlkit.load(path)
    assert isinstance(m2, idlkit.ImplicitModel)
    assert m2.config() == m.config()
    assert m2.A.dtype == m.A.dtype
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    u = torch.randn(4, 5, dtype=m.A.dtype)
    with torch.no_grad():
        assert torch.equal(m(u), m2(u))
        assert torch.equal(m.equilibrium(u), m2.equilibrium(u))
    assert m2.certificate().declared == m.certificate().declared
    # the file names no pickle: it is a safetensors file with an idlkit header
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert "idlkit" in header["__metadata__"]


def test_save_creates_parent_directories_and_accepts_str(tmp_path):
    m = _model(CONFIGS["relu-inf-f32"])
    path = tmp_path / "a" / "b" / "m.safetensors"
    idlkit.save(m, str(path))
    assert path.is_file()
    torch.testing.assert_close(idlkit.load(str(path)).A, m.A, rtol=0, atol=0)


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "m.idl"
    m1, m2 = _model(CONFIGS["relu-inf-f32"], 1), _model(CONFIGS["relu-inf-f32"], 2)
    idlkit.save(m1, path)
    idlkit.save(m2, path)
    assert torch.equal(idlkit.load(path).A, m2.A)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.idl"]


@pytest.mark.parametrize("cut", [0, 4, 8, 20, 0.5, 0.9, -1])
def test_truncated_file_raises_checkpoint_error(tmp_path, cut):
    path = tmp_path / "m.idl"
    idlkit.save(_model(CONFIGS["softmax"]), path)
    raw = path.read_bytes()
    n = int(len(raw) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(raw) + cut)
    bad = tmp_path / "truncated.idl"
    bad.write_bytes(raw[:n])
    with pytest.raises(CheckpointError) as exc:
        idlkit.load(bad)
    assert isinstance(exc.value, IdlError)
    assert "truncated.idl" in str(exc.value)


@pytest.mark.parametrize("payload", [
    b"not a checkpoint at all",
    bytes(range(256)) * 4,
    b"\xff" * 64,
    (16).to_bytes(8, "little") + b'{"a": "b"}      ',
    (2).to_bytes(8, "little") + b"{}",  # a valid, empty safetensors file
    b"\x80\x04\x95" + b"\x00" * 40,  # a pickle-looking prefix
])
def test_garbage_file_raises_checkpoint_error(tmp_path, payload):
    bad = tmp_path / "garbage.idl"
    bad.write_bytes(payload)
    with pytest.raises(CheckpointError):
        idlkit.load(bad)


def test_foreign_safetensors_and_tampered_config(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError):
        idlkit.load(other)
    save_file({"w": torch.zeros(2)}, other, metadata={"idlkit": "{not json"})
    with pytest.raises(CheckpointError):
        idlkit.load(other)
    save_file({"w": torch.zeros(2)}, other,
              metadata={"idlkit": json.dumps({"format": "something/9", "config": {}})})
    with pytest.raises(CheckpointError) as exc:
        idlkit.load(other)
    assert "something/9" in str(exc.value)
    # right format, weights that do not match the config
    m = _model(CONFIGS["relu-inf-f32"])
    path = tmp_path / "m.idl"
    idlkit.save(m, path)
    raw = path.read_bytes()
    hl = int.from_bytes(raw[:8], "little")
    meta = json.loads(json.loads(raw[8:8 + hl])["__metadata__"]["idlkit"])
    meta["config"]["hidden"] = 7
    save_file({k: v.detach() for k, v in m.state_dict().items()}, other,
              metadata={"idlkit": json.dumps(meta)})
    with pytest.raises(CheckpointError):
        idlkit.load(other)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError):
        idlkit.load(tmp_path / "nope.idl")
    with pytest.raises(CheckpointError):
        idlkit.load(tmp_path)  # a directory


def test_write_is_atomic_no_temp_files_left(tmp_path):
    path = tmp_path / "m.idl"
    for seed in range(3):
        idlkit.save(_model(CONFIGS["blockwise"], seed), path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.idl"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.idl"
    m1 = _model(CONFIGS["tanh-none-nobias"], 1)
    idlkit.save(m1, path)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(idlio.os, "replace", boom)
    with pytest.raises(idlio.CheckpointError, match="disk full") as info:
        idlkit.save(_model(CONFIGS["tanh-none-nobias"], 2), path)
    assert isinstance(info.value.__cause__, OSError)  # the OS error is kept as the cause
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.idl"]
    assert torch.equal(idlkit.load(path).A, m1.A)


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    """An exception while writing the bytes (e.g. KeyboardInterrupt) leaves no partial file."""
    path = tmp_path / "m.idl"
    m1 = _model(CONFIGS["relu-inf-f32"], 1)
    idlkit.save(m1, path)
    before = path.read_bytes()
    real_fsync = idlio.os.fsync

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(idlio.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        idlkit.save(_model(CONFIGS["relu-inf-f32"], 2), path)
    monkeypatch.setattr(idlio.os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.idl"]


def test_loaded_model_enforces_wellposedness(tmp_path):
    """A checkpoint whose A violates the declared condition loads, but cannot be run."""
    m = _model(CONFIGS["relu-inf-f32"])
    with torch.no_grad():
        m.A.fill_(0.5)
    path = tmp_path / "m.idl"
    idlkit.save(m, path)
    m2 = idlkit.load(path)
    with pytest.raises(idlkit.WellPosednessError):
        m2(torch.randn(2, 5))


@pytest.mark.parametrize("tamper", ["unknown_key", "config_not_dict", "bad_activation",
                                    "bad_kappa", "bad_dtype"])
def test_tampered_config_raises_checkpoint_error(tmp_path, tamper):
    from safetensors.torch import save_file

    m = _model(CONFIGS["relu-inf-f32"])
    path = tmp_path / "m.idl"
    idlkit.save(m, path)
    raw = path.read_bytes()
    hl = int.from_bytes(raw[:8], "little")
    meta = json.loads(json.loads(raw[8:8 + hl])["__metadata__"]["idlkit"])
    if tamper == "unknown_key":
        meta["config"]["bogus"] = 1
    elif tamper == "config_not_dict":
        meta["config"] = ["relu"]
    elif tamper == "bad_activation":
        meta["config"]["activation"] = {"name": "swishy"}
    elif tamper == "bad_kappa":
        meta["config"]["kappa"] = 3.0
    else:
        meta["dtype"] = "no_such_dtype"
    bad = tmp_path / "tampered.idl"
    save_file({k: v.detach() for k, v in m.state_dict().items()}, bad,
              metadata={"idlkit": json.dumps(meta)})
    with pytest.raises(CheckpointError) as exc:
        idlkit.load(bad)
    assert "tampered.idl" in str(exc.value)


def test_low_rank_round_trip(tmp_path):
    torch.manual_seed(0)
    m = idlkit.LowRankImplicitModel(5, 12, 3, rank=4, activation="tanh", dtype=torch.float64)
    path = idlkit.save(m, tmp_path / "lr.safetensors")
    back = idlkit.load(path)
    assert isinstance(back, idlkit.LowRankImplicitModel) and back.rank == 4
    u = torch.randn(7, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(back(u), m(u), rtol=0, atol=0)
    with pytest.raises(idlkit.io.CheckpointError):
        idlkit.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------- sparse models

def _sparse_model(dtype: torch.dtype, layout: str, bias: bool = True, seed: int = 0) -> idlkit.ImplicitModel:
    """A (block) triangular model from torch sparse matrices: A, B, D sparse (D without
    nonzeros), C dense; ``layout`` is the layout of the inputs (stored as int32 CSR by the
    model)."""
    g = torch.Generator().manual_seed(seed)
    n, p, q = 9, 5, 3

    def sp(rows: int, cols: int, density: float = 0.4, upper: bool = False) -> torch.Tensor:
        M = torch.randn(rows, cols, generator=g, dtype=dtype)
        M = M * (torch.rand(rows, cols, generator=g) < density)
        if upper:  # strictly upper block-triangular for blocks of 3 (finer blocks too)
            i = torch.arange(rows)
            M = M * (i[None, :] // 3 > i[:, None] // 3)
        return M.to_sparse_csr() if layout == "csr" else M.to_sparse()

    A, B = sp(n, n, 0.5, upper=True), sp(n, p)
    C = torch.randn(q, n, generator=g, dtype=dtype)
    D = sp(q, p, 0.0)
    b = torch.randn(n, generator=g, dtype=dtype) if bias else None
    act = Blockwise([(3, BlockMax(3)), (6, "relu")])
    return idlkit.ImplicitModel.from_matrices(A, B, C, D, b, activation=act,
                                              wellposedness="triangular", solver="triangular")


def _assert_same_model(m: idlkit.ImplicitModel, m2: idlkit.ImplicitModel) -> None:
    """Same config, tensors (layout, index dtype, components), outputs and certificate."""
    assert m2.config() == m.config()
    assert m2.activation.config() == m.activation.config()
    assert {k for k, _ in m2.named_parameters()} == {k for k, _ in m.named_parameters()}
    assert {k for k, _ in m2.named_buffers()} == {k for k, _ in m.named_buffers()}
    s1, s2 = m.state_dict(), m2.state_dict()
    assert set(s1) == set(s2)
    for k, v1 in s1.items():
        v2 = s2[k]
        assert (v2.layout, v2.dtype, v2.shape) == (v1.layout, v1.dtype, v1.shape), k
        if v1.layout == torch.sparse_csr:
            for part in ("crow_indices", "col_indices", "values"):
                a, b = getattr(v1, part)(), getattr(v2, part)()
                assert a.dtype == b.dtype and torch.equal(a, b), (k, part)
        else:
            assert torch.equal(v1, v2), k
    u = torch.randn(4, m.in_features, dtype=m.A.dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(m(u), m2(u))
        assert torch.equal(m.equilibrium(u), m2.equilibrium(u))
    c1, c2 = m.certificate(), m2.certificate()
    assert str(c2) == str(c1) and c2.holds == c1.holds and c2.declared == c1.declared


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_sparse_round_trip_exact(tmp_path, dtype, layout):
    m = _sparse_model(dtype, layout)
    assert m.sparse and m.A.layout == torch.sparse_csr and m.A.crow_indices().dtype == torch.int32
    assert m.D._nnz() == 0 and m.C.layout == torch.strided
    path = idlkit.save(m, tmp_path / "sparse.idl")
    m2 = idlkit.load(path)
    _assert_same_model(m, m2)
    assert m2.settings.method == "triangular" and m2.wellposedness == "triangular"
    # the header describes each sparse matrix; the file holds its CSR components
    tensors, meta = idlio.read_tensors(path)
    assert meta["sparse"]["A"] == {"layout": "sparse_csr", "shape": [9, 9], "index_dtype": "int32"}
    assert set(meta["sparse"]) == {"A", "B", "D"}
    assert {"A.crow_indices", "A.col_indices", "A.values", "C", "b", "d"} <= set(tensors)
    # gradients still flow to the dense parameters of the loaded model
    u = torch.randn(2, 5, dtype=dtype, requires_grad=True)
    m2(u).sum().backward()
    assert m2.C.grad is not None and u.grad is not None


def test_sparse_round_trip_no_bias_and_int64_indices(tmp_path):
    m = _sparse_model(F64, "csr", bias=False)
    del m.C  # all-sparse: replace the dense C parameter by a sparse buffer with int64 indices
    C = torch.randn(3, 9, dtype=F64).to_sparse_csr()
    m.register_buffer("C", torch.sparse_csr_tensor(C.crow_indices(), C.col_indices(), C.values(),
                                                   C.shape))
    assert m.C.crow_indices().dtype == torch.int64 and not list(m.parameters())
    path = idlkit.save(m, tmp_path / "m.idl")
    _assert_same_model(m, idlkit.load(path))


def test_converted_cnn_round_trip(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(2, 2, 3, padding=1),
                              torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(2, 1, 8, 8)
    m = idlkit.convert.from_torch(cnn.eval(), x, sparse=True)
    assert m.sparse and isinstance(m.activation, Blockwise)
    assert any(isinstance(a, BlockMax) for _, a in m.activation.segments)
    path = idlkit.save(m, tmp_path / "cnn.idl")
    m2 = idlkit.load(path)
    _assert_same_model(m, m2)
    assert isinstance(m2.activation, Blockwise)
    assert [(s, type(a)) for s, a in m2.activation.segments] == \
        [(s, type(a)) for s, a in m.activation.segments]
    with torch.no_grad():
        assert torch.equal(m2(x.flatten(1)), m(x.flatten(1)))
        torch.testing.assert_close(m2(x.flatten(1)), cnn(x))


def test_save_rejects_unsupported_sparse_layout(tmp_path):
    m = _sparse_model(torch.float32, "csr")
    m.A = m.A.to_sparse_coo()
    with pytest.raises(CheckpointError, match="CSR"):
        idlkit.save(m, tmp_path / "m.idl")
    assert not list(tmp_path.iterdir())


def _tamper_sparse(tensors: dict, meta: dict, case: str) -> str:
    """Corrupt the stored sparse ``A`` (9 x 9, int32) of :func:`_sparse_model`; returns a
    fragment of the expected error message."""
    crow, col, val = (tensors[f"A.{p}"] for p in ("crow_indices", "col_indices", "values"))
    nnz = col.numel()
    row = int(torch.nonzero(crow[1:] - crow[:-1] >= 2)[0])  # a row with two entries
    s = int(crow[row])
    if case == "crow_short":
        tensors["A.crow_indices"] = crow[:-1].clone()
        return "crow_indices has"
    if case == "col_short":
        tensors["A.col_indices"] = col[:-1].clone()
        return "entries"
    if case == "values_long":
        tensors["A.values"] = torch.cat([val, val[:1]])
        return "entries"
    if case == "col_out_of_range":
        col[s] = 9
        return "out of range"
    if case == "col_negative":
        col[s] = -1
        return "out of range"
    if case == "crow_nonmonotone":
        crow[1] = nnz + 1
        crow[2] = 0
        return "monotone"
    if case == "crow_not_from_zero":
        crow[0] = 1
        return "from 0 to nnz"
    if case == "crow_end":
        crow[-1] = nnz - 1
        return "from 0 to nnz"
    if case == "unsorted_cols":
        col[s], col[s + 1] = col[s + 1].clone(), col[s].clone()
        return "strictly increasing"
    if case == "duplicate_cols":
        col[s + 1] = col[s]
        return "strictly increasing"
    if case == "shape_mismatch":
        meta["sparse"]["A"]["shape"] = [9, 10]
        return "does not match the config"
    if case == "shape_invalid":
        meta["sparse"]["A"]["shape"] = "9x9"
        return "invalid shape"
    if case == "layout":
        meta["sparse"]["A"]["layout"] = "sparse_coo"
        return "layout"
    if case == "index_dtype":
        tensors["A.col_indices"] = col.long()
        return "index_dtype"
    if case == "index_dtype_header":
        meta["sparse"]["A"]["index_dtype"] = "float32"
        return "index_dtype"
    if case == "values_dtype":
        tensors["A.values"] = val.double()
        return "dtype"
    if case == "component_2d":
        tensors["A.col_indices"] = col.reshape(1, -1)
        return "1-D"
    if case == "missing_component":
        del tensors["A.values"]
        return "missing ['A.values']"
    if case == "dense_and_sparse":
        tensors["A"] = torch.zeros(9, 9)
        return "unexpected ['A']"
    if case == "sparse_bias":
        meta["sparse"]["b"] = dict(meta["sparse"]["A"])
        return "not matrices of the model"
    if case == "sparse_not_dict":
        meta["sparse"] = ["A"]
        return "not a JSON object"
    if case == "low_rank_format":
        meta["format"] = "idlkit.LowRankImplicitModel/1"
        return "only stored for ImplicitModel"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "crow_short", "col_short", "values_long", "col_out_of_range", "col_negative",
    "crow_nonmonotone", "crow_not_from_zero", "crow_end", "unsorted_cols", "duplicate_cols",
    "shape_mismatch", "shape_invalid", "layout", "index_dtype", "index_dtype_header",
    "values_dtype", "component_2d", "missing_component", "dense_and_sparse", "sparse_bias",
    "sparse_not_dict", "low_rank_format"])
def test_tampered_sparse_checkpoint_raises(tmp_path, case):
    m = _sparse_model(torch.float32, "csr")
    path = idlkit.save(m, tmp_path / "m.idl")
    tensors, meta = idlio.read_tensors(path)
    fragment = _tamper_sparse(tensors, meta, case)
    bad = idlio.write_tensors(tmp_path / "tampered.idl", tensors, meta)
    with pytest.raises(CheckpointError) as exc:
        idlkit.load(bad)
    msg = str(exc.value)
    assert "tampered.idl" in msg and fragment in msg, msg


def test_a_safetensors_file_not_written_by_idlkit_says_so(tmp_path):
    import safetensors.torch as st

    from idlkit.io import CheckpointError

    path = tmp_path / "plain.safetensors"
    st.save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not one written by idlkit"):
        idlkit.load(path)
