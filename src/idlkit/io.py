"""Save and load implicit models: safetensors weights + JSON config, written atomically.

A checkpoint is one directory-free file pair ``<path>`` (safetensors, which
stores the JSON config in its metadata header). No pickle is involved, so
loading a tampered file cannot execute code; a truncated or corrupted file
raises :class:`~idlkit.errors.IdlError` naming the path.

Sparse matrices (the frozen CSR buffers of :meth:`ImplicitModel.from_matrices` /
:func:`idlkit.convert.from_torch`) are stored as their CSR components, three 1-D
safetensors entries ``"<name>.crow_indices"``, ``"<name>.col_indices"`` (int32 or int64, as
in the model) and ``"<name>.values"``; the JSON header maps ``"sparse"`` to ``{name: {"layout":
"sparse_csr", "shape": [rows, cols], "index_dtype": "int32" | "int64"}}``. Loading validates
the components (lengths, ``crow_indices`` monotone from 0 to nnz, column indices in range
and strictly increasing within each row, shape, dtypes) before building the tensor, so a
tampered file raises :class:`CheckpointError` and never yields an invalid sparse tensor;
no dense ``(n, n)`` matrix is allocated for a sparse model.

A :class:`~idlkit.compress.StagedImplicitModel` is stored as the single model it rebuilds
(:meth:`~idlkit.compress.StagedImplicitModel.to_implicit`) under the format
``"idlkit.StagedImplicitModel/1"`` with its split in the header (``"staging"``); :func:`load`
re-stages the loaded model (the split is a function of ``A``'s pattern) and refuses a header
whose split differs.

Integrity. :func:`write_tensors` stores the SHA-256 of the tensor payload (every tensor's name,
dtype, shape and bytes, in name order) in the header as ``"sha256"``; :func:`read_tensors`
recomputes it and raises :class:`CheckpointError` on a mismatch (a flipped bit anywhere in the
weights). Files written before the hash existed still load, with a :class:`CheckpointWarning`.
:func:`load` then checks the header against the stored tensors *before* building the model
(the dimensions the config claims must be those of the stored matrices, so a 1 KB file cannot
make it allocate a large model) and refuses NaN/Inf weights.

Writing. The file is written to a temporary sibling ``.<name>.<pid>.<random>.tmp`` and moved into
place with ``os.replace``, so the destination is always the old or the new file; temporaries
left by an interrupted writer (a process that no longer exists) are removed by the next save to
the same place. OS errors (a directory as the destination, a regular file as a parent, no
permission or space) raise :class:`CheckpointError` with the OS error as ``__cause__``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ._matrix import sorted_csr
from .compress import LowRankImplicitModel, StagedImplicitModel
from .errors import IdlError
from .model import ImplicitModel
from .rnn import ImplicitRNN

__all__ = ["save", "load", "write_tensors", "read_tensors", "CheckpointError", "CheckpointWarning"]

_FORMATS = ("idlkit.ImplicitModel/1", "idlkit.LowRankImplicitModel/1", "idlkit.ImplicitRNN/1",
            "idlkit.StagedImplicitModel/1")
_CSR_PARTS = ("crow_indices", "col_indices", "values")
_INDEX_DTYPES = {"int32": torch.int32, "int64": torch.int64}


class CheckpointError(IdlError):
    """A checkpoint file is missing, truncated, tampered, of another format, or cannot be written."""


class CheckpointWarning(UserWarning):
    """A checkpoint loads but cannot be fully verified (written before content hashes)."""


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.*.tmp`` siblings of ``path`` whose writer process is gone."""
    for tmp in path.parent.glob(f"{_tmp_prefix(path)}*.tmp"):
        pid_text = tmp.name[len(_tmp_prefix(path)):].split(".", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # the writer is gone: its temporary is stale
            tmp.unlink(missing_ok=True)
        except (PermissionError, OSError):
            continue  # alive (another user's process) or unknown: leave it


def _atomic_write(path: Path, data: bytes) -> None:
    if path.is_dir():
        raise CheckpointError(f"cannot write a checkpoint to {path}: it is a directory; pass a file "
                              f"path such as {path / 'model.safetensors'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}.", suffix=".tmp",
                                   dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write a checkpoint to {path}: {exc.strerror or exc} (is a "
                              f"parent a regular file, or the folder read-only?); choose another "
                              f"path") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write a checkpoint to {path}: {exc.strerror or exc}; the "
                              f"previous file (if any) is intact") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _as_path(path: object, what: str = "path") -> Path:
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise CheckpointError(f"{what} must be a file path (str or pathlib.Path), got {path!r} "
                              f"({type(path).__name__})")
    return Path(path)


def _payload_hash(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Atomically write ``tensors`` (safetensors) with the JSON-serialisable ``meta`` in its header
    and the SHA-256 of the tensors as ``meta["sha256"]``.

    Args:
        path: the file to write; replaced atomically (a temporary file, then ``os.replace``), so
            a failure leaves the previous file intact.
        tensors: ``{name: tensor}``, any shapes and dtypes; copied to contiguous CPU tensors.
        meta: JSON-serialisable header entries (its ``"sha256"`` key is overwritten).

    Returns:
        The written path.

    Raises:
        TypeError: ``meta`` is not JSON-serialisable.
        OSError: the folder cannot be written.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> _ = write_tensors(p, {"w": torch.arange(6.0).reshape(2, 3)}, {"note": "demo"})
        >>> tensors, meta = read_tensors(p)
        >>> tensors["w"].shape, meta["note"]
        (torch.Size([2, 3]), 'demo')
    """
    from safetensors.torch import save as st_save

    path = _as_path(path)
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = st_save(cpu, metadata={"idlkit": json.dumps({**meta, "sha256": _payload_hash(cpu)})})
    _atomic_write(path, data)
    return path


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of :func:`write_tensors`; a missing, truncated or tampered file (content hash
    mismatch) raises :class:`CheckpointError` (no pickle: nothing in the file is executed).

    Args:
        path: a file written by :func:`write_tensors` (or :func:`save`).

    Returns:
        ``(tensors, meta)``: the ``{name: tensor}`` dictionary and the header without its hash.

    Raises:
        CheckpointError: the file is missing, unreadable, not a safetensors file written by
            idlkit, truncated, or its content hash does not match.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
        >>> _ = write_tensors(p, {"w": torch.ones(2)}, {})
        >>> torch.equal(read_tensors(p)[0]["w"], torch.ones(2))
        True
        >>> _ = p.write_bytes(p.read_bytes()[:-1])                # truncated
        >>> read_tensors(p)
        Traceback (most recent call last):
            ...
        idlkit.io.CheckpointError: ...t.safetensors is not a valid idlkit ...
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = _as_path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, TypeError, AttributeError, OverflowError,
            json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a valid idlkit checkpoint (truncated or "
                              f"tampered?): {exc}") from exc
    if "idlkit" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not one written by idlkit (no "
                              f"'idlkit' entry in its metadata); pass a file written by idlkit's "
                              f"save or a Trainer checkpoint")
    try:
        meta = json.loads(metadata["idlkit"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a valid idlkit checkpoint (truncated or "
                              f"tampered?): {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the header is not a JSON object")
    stored = meta.pop("sha256", None)
    if stored is None:
        warnings.warn(f"{path} has no content hash (written by an older idlkit): its weights cannot "
                      f"be verified; save it again to add one", CheckpointWarning, stacklevel=3)
    elif stored != _payload_hash(tensors):
        raise CheckpointError(f"{path}: the tensor data does not match its SHA-256 (corrupted or "
                              f"tampered file); restore it from a backup or save the model again")
    return tensors, meta


def save(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (:class:`~idlkit.ImplicitModel`, :class:`~idlkit.LowRankImplicitModel`,
    :class:`~idlkit.ImplicitRNN` or :class:`~idlkit.compress.StagedImplicitModel`) to ``path``
    atomically.

    The file is a safetensors file whose metadata holds the JSON config
    (activation, solver, well-posedness settings, library version). Sparse CSR matrices are
    stored as their components (see the module docstring) and loaded back exactly. A staged
    model is stored as its :meth:`~idlkit.compress.StagedImplicitModel.to_implicit` (format
    ``idlkit.StagedImplicitModel/1``, the split in the header) and re-staged on load: the split
    is a function of ``A``'s pattern, and :func:`load` checks that it comes out the same.

    Args:
        model: the model to write.
        path: the file to write (replaced atomically).

    Returns:
        The path written.

    Examples:
        >>> import tempfile, pathlib
        >>> model = idlkit.ImplicitModel(3, 5, 2)
        >>> path = save(model, pathlib.Path(tempfile.mkdtemp()) / "model.safetensors")
        >>> u = torch.randn(4, 3)
        >>> torch.equal(load(path)(u), model(u))
        True
    """
    from . import __version__

    if not isinstance(model, ImplicitModel | LowRankImplicitModel | ImplicitRNN | StagedImplicitModel):
        raise CheckpointError(f"save() writes ImplicitModel, LowRankImplicitModel, ImplicitRNN and "
                              f"StagedImplicitModel, got {type(model).__name__}")
    staging = None
    if isinstance(model, StagedImplicitModel):
        staging = model.config()["staging"]
        model = model.to_implicit()
    fmt = (_FORMATS[1] if isinstance(model, LowRankImplicitModel)
           else _FORMATS[2] if isinstance(model, ImplicitRNN) else _FORMATS[0])
    if staging is not None:
        fmt = _FORMATS[3]
    # an ImplicitModel made of sparse matrices without bias has no parameters at all
    dtype = model.A.dtype if isinstance(model, ImplicitModel) else next(model.parameters()).dtype
    cfg: dict = {"format": fmt, "version": __version__, "config": model.config(),
                 "dtype": str(dtype).replace("torch.", "")}
    if staging is not None:
        cfg["staging"] = staging
    tensors, sparse = _split_sparse(model.state_dict())
    if sparse:
        cfg["sparse"] = sparse
    return write_tensors(path, tensors, cfg)


def _split_sparse(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """``state`` with each sparse CSR matrix replaced by its components ``<name>.crow_indices``,
    ``<name>.col_indices``, ``<name>.values``; returns those tensors and the header entries
    ``{name: {"layout", "shape", "index_dtype"}}`` of the sparse ones."""
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict] = {}
    for k, v in state.items():
        if v.layout == torch.strided:
            tensors[k] = v
            continue
        if v.layout != torch.sparse_csr or v.dim() != 2 or v.values().dim() != 1:
            raise CheckpointError(f"cannot save {k}: only dense tensors and 2-D sparse CSR "
                                  f"matrices are supported, got layout {v.layout} of shape "
                                  f"{tuple(v.shape)}")
        parts = (v.crow_indices(), v.col_indices(), v.values())
        tensors.update({f"{k}.{name}": t for name, t in zip(_CSR_PARTS, parts, strict=True)})
        sparse[k] = {"layout": "sparse_csr", "shape": list(v.shape),
                     "index_dtype": str(parts[0].dtype).replace("torch.", "")}
    return tensors, sparse


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Read a model written by :func:`save`.

    Args:
        path: a file written by :func:`save`.
        map_location: device of the loaded tensors.

    Returns:
        The model, of the class that was saved.

    Examples:
        >>> import tempfile, pathlib
        >>> path = save(idlkit.ImplicitModel(3, 5, 2), pathlib.Path(tempfile.mkdtemp()) / "m.safetensors")
        >>> m = load(path)
        >>> type(m).__name__, m(torch.randn(4, 3)).shape
        ('ImplicitModel', torch.Size([4, 2]))
    """
    path = _as_path(path)
    _device(map_location)
    tensors, cfg = read_tensors(path)
    if isinstance(cfg, dict) and cfg.get("format") == _FORMATS[3]:
        model = _load_model(path, tensors, {**cfg, "format": _FORMATS[0]}, map_location)
        staged = StagedImplicitModel.from_implicit(model)  # type: ignore[arg-type]
        if staged.config()["staging"] != cfg.get("staging"):
            raise CheckpointError(f"{path}: the stored split {cfg.get('staging')!r} is not the split "
                                  f"of the stored matrices (tampered file?)")
        return staged
    return _load_model(path, tensors, cfg, map_location)


def _device(map_location: object) -> torch.device:
    try:
        return torch.device(map_location)  # type: ignore[arg-type]
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"map_location must name a device such as 'cpu' or 'cuda:0', got "
                              f"{map_location!r}") from exc


def _load_model(path: Path, tensors: dict[str, torch.Tensor], cfg: dict,
                map_location: str | torch.device) -> torch.nn.Module:
    """:func:`load` after the file is read: one of the first three formats."""
    device = _device(map_location)
    if cfg.get("format") not in _FORMATS[:3]:
        fmt = cfg.get("format") if isinstance(cfg, dict) else None
        raise CheckpointError(f"{path} has format {fmt!r}, expected one of {list(_FORMATS)}")
    cls = {_FORMATS[0]: ImplicitModel, _FORMATS[1]: LowRankImplicitModel,
           _FORMATS[2]: ImplicitRNN}[cfg["format"]]
    dtype = getattr(torch, str(cfg.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{path}: unknown dtype {cfg.get('dtype')!r} in the config")
    config = cfg.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the model config is missing or not a JSON object")
    sparse = cfg.get("sparse", {})
    if not isinstance(sparse, dict):
        raise CheckpointError(f"{path}: the 'sparse' header entry is not a JSON object")
    _check_finite(path, tensors)
    if sparse:
        if cls is not ImplicitModel:
            raise CheckpointError(f"{path}: sparse matrices are only stored for ImplicitModel, "
                                  f"not {cls.__name__}")
        return _load_sparse(path, tensors, config, sparse, dtype).to(device)
    expected = _expected_shapes(path, cfg["format"], config)
    got = {k: tuple(t.shape) for k, t in tensors.items()}
    if got != expected:  # checked before anything is allocated
        diff = sorted(f"{k}: stored {got.get(k)}, config {expected.get(k)}"
                      for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        raise CheckpointError(f"{path}: the stored tensors do not match the config "
                              f"({'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''}); the file "
                              f"is tampered or of another model")
    try:
        model = cls(**config, dtype=dtype)
    except (TypeError, ValueError, KeyError, IdlError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({type(exc).__name__}: {exc})") from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config: {exc}") from exc
    return model.to(device)


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all()))
    if bad:
        raise CheckpointError(f"{path}: NaN/Inf in the stored weights {bad[:8]}; the model was saved "
                              f"after a diverged step or the file is corrupted: load an earlier checkpoint")


def _dims(path: Path, config: dict, *names: str) -> list[int]:
    out = []
    for name in names:
        v = config.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise CheckpointError(f"{path}: invalid model config ({name} must be a positive int, got {v!r})")
        out.append(v)
    return out


def _expected_shapes(path: Path, fmt: str, config: dict) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes the config of a dense checkpoint claims (computed, not allocated)."""
    bias = config.get("bias", True)
    if not isinstance(bias, bool):
        raise CheckpointError(f"{path}: invalid model config (bias must be a bool, got {bias!r})")
    if fmt == _FORMATS[2]:  # ImplicitRNN: a cell on [u_t, h_{t-1}] and an optional linear head
        p, n = _dims(path, config, "input_size", "hidden")
        out = config.get("output_size")
        out = None if out is None else _dims(path, config, "output_size")[0]
        r = config.get("recurrent_size", out if out is not None else n)
        r = _dims(path, {"recurrent_size": r}, "recurrent_size")[0]
        shapes = {"cell.A": (n, n), "cell.B": (n, p + r), "cell.C": (r, n), "cell.D": (r, p + r)}
        if bias:
            shapes.update({"cell.b": (n,), "cell.d": (r,)})
        if out is not None:
            shapes.update({"head.weight": (out, r), "head.bias": (out,)})
        return shapes
    p, n, q = _dims(path, config, "in_features", "hidden", "out_features")
    shapes = {"B": (n, p), "C": (q, n), "D": (q, p)}
    if fmt == _FORMATS[1]:
        k = _dims(path, config, "rank")[0]
        shapes.update({"L": (n, k), "R": (n, k)})
    else:
        shapes["A"] = (n, n)
    if bias:
        shapes.update({"b": (n,), "d": (q,)})
    return shapes


def _load_sparse(path: Path, tensors: dict[str, torch.Tensor], config: dict, sparse: dict,
                 dtype: torch.dtype) -> ImplicitModel:
    """An :class:`ImplicitModel` with the sparse matrices ``sparse`` (header entries) rebuilt
    from their CSR components and the other tensors as parameters, as
    :meth:`ImplicitModel.from_matrices` builds it (no dense ``(n, n)`` allocation)."""
    bias = config.get("bias", True)
    if not isinstance(bias, bool):
        raise CheckpointError(f"{path}: invalid model config (bias must be a bool, got {bias!r})")
    try:
        model = ImplicitModel(**config, dtype=dtype, _allocate=False)
    except (TypeError, ValueError, KeyError, IdlError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from exc
    n, p, q = model.hidden, model.in_features, model.out_features
    shapes = {"A": (n, n), "B": (n, p), "C": (q, n), "D": (q, p)}
    if bias:
        shapes.update(b=(n,), d=(q,))
    unknown = sorted(str(k) for k in sparse if k not in ("A", "B", "C", "D"))
    if unknown:
        raise CheckpointError(f"{path}: sparse entries {unknown} are not matrices of the model "
                              f"(expected a subset of A, B, C, D)")
    expected = {f"{k}.{part}" for k in sparse for part in _CSR_PARTS}
    expected |= {k for k in shapes if k not in sparse}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise CheckpointError(f"{path}: weights do not match the config: missing {missing}, "
                              f"unexpected {extra}")
    for k, shape in shapes.items():
        if k in sparse:
            model.register_buffer(k, _csr_from_parts(path, k, sparse[k], tensors, shape, dtype))
            continue
        t = tensors[k]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise CheckpointError(f"{path}: {k} has shape {tuple(t.shape)} and dtype {t.dtype}, "
                                  f"expected a floating tensor of shape {shape}")
        setattr(model, k, torch.nn.Parameter(t.to(dtype)))
    if not bias:
        model.register_parameter("b", None)
        model.register_parameter("d", None)
    return model


def _csr_from_parts(path: Path, name: str, spec: object, tensors: dict[str, torch.Tensor],
                    shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The CSR matrix ``name`` from its stored components, validated before it is built."""

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{path}: sparse matrix {name}: {msg} (tampered file?)")

    if not isinstance(spec, dict) or spec.get("layout") != "sparse_csr":
        raise bad(f"unsupported header entry {spec!r}, expected layout 'sparse_csr'")
    stored = spec.get("shape")
    if (not isinstance(stored, list) or len(stored) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in stored)):
        raise bad(f"invalid shape {stored!r}")
    if tuple(stored) != shape:
        raise bad(f"shape {tuple(stored)} does not match the config, expected {shape}")
    index_dtype = _INDEX_DTYPES.get(spec.get("index_dtype"))  # type: ignore[arg-type]
    if index_dtype is None:
        raise bad(f"index_dtype must be one of {list(_INDEX_DTYPES)}, got {spec.get('index_dtype')!r}")
    crow, col, val = (tensors[f"{name}.{part}"] for part in _CSR_PARTS)
    for part, t in zip(_CSR_PARTS, (crow, col, val), strict=True):
        if t.dim() != 1:
            raise bad(f"{part} must be 1-D, got shape {tuple(t.shape)}")
    if crow.dtype != index_dtype or col.dtype != index_dtype:
        raise bad(f"index dtypes {crow.dtype}, {col.dtype} do not match index_dtype "
                  f"{spec['index_dtype']!r}")
    if val.dtype != dtype:
        raise bad(f"values have dtype {val.dtype}, the model {dtype}")
    rows, cols = shape
    nnz = col.numel()
    if crow.numel() != rows + 1:
        raise bad(f"crow_indices has {crow.numel()} entries, expected rows + 1 = {rows + 1}")
    if val.numel() != nnz:
        raise bad(f"col_indices has {nnz} entries but values {val.numel()}")
    if int(crow[0]) != 0 or int(crow[-1]) != nnz:
        raise bad(f"crow_indices must run from 0 to nnz = {nnz}, got {int(crow[0])} .. "
                  f"{int(crow[-1])}")
    if bool((crow[1:] < crow[:-1]).any()):
        raise bad("crow_indices is not monotone (non-decreasing)")
    if nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
        raise bad(f"col_indices out of range [0, {cols}): {int(col.min())} .. {int(col.max())}")
    if not sorted_csr(crow.numpy(), col.numpy()):
        raise bad("col_indices are not strictly increasing within each row (unsorted or "
                  "duplicate entries)")
    try:
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above cover torch's invariants
        raise bad(f"invalid CSR components: {exc}") from exc
