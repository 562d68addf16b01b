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
    with pytest.raises(OSError):
        idlkit.save(_model(CONFIGS["tanh-none-nobias"], 2), path)
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
        meta["config"]["activation"] = {"name": "swish"}
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
