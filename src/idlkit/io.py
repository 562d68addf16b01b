"""Save and load implicit models: safetensors weights + JSON config, written atomically.

A checkpoint is one directory-free file pair ``<path>`` (safetensors, which
stores the JSON config in its metadata header). No pickle is involved, so
loading a tampered file cannot execute code; a truncated or corrupted file
raises :class:`~idlkit.errors.IdlError` naming the path.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .errors import IdlError
from .lowrank import LowRankImplicitModel
from .model import ImplicitModel

__all__ = ["save", "load", "write_tensors", "read_tensors", "CheckpointError"]

_FORMATS = ("idlkit.ImplicitModel/1", "idlkit.LowRankImplicitModel/1")


class CheckpointError(IdlError):
    """A checkpoint file is missing, truncated, tampered or of another format."""


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Atomically write ``tensors`` (safetensors) with the JSON-serialisable ``meta`` in its header."""
    from safetensors.torch import save as st_save

    data = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                   metadata={"idlkit": json.dumps(meta)})
    path = Path(path)
    _atomic_write(path, data)
    return path


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of :func:`write_tensors`; a missing, truncated or tampered file raises
    :class:`CheckpointError` (no pickle: nothing in the file is executed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(json.loads(raw[8:8 + header_len]).get("__metadata__", {})["idlkit"])
    except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a valid idlkit checkpoint (truncated or "
                              f"tampered?): {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the header is not a JSON object")
    return tensors, meta


def save(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (:class:`~idlkit.ImplicitModel` or :class:`~idlkit.LowRankImplicitModel`)
    to ``path`` atomically.

    The file is a safetensors file whose metadata holds the JSON config
    (activation, solver, well-posedness settings, library version).
    """
    from . import __version__

    if not isinstance(model, ImplicitModel | LowRankImplicitModel):
        raise CheckpointError(f"save() writes ImplicitModel and LowRankImplicitModel, got "
                              f"{type(model).__name__}")
    fmt = _FORMATS[1] if isinstance(model, LowRankImplicitModel) else _FORMATS[0]
    cfg = {"format": fmt, "version": __version__, "config": model.config(),
           "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    return write_tensors(path, dict(model.state_dict()), cfg)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """Read a model written by :func:`save`."""
    path = Path(path)
    tensors, cfg = read_tensors(path)
    if cfg.get("format") not in _FORMATS:
        fmt = cfg.get("format") if isinstance(cfg, dict) else None
        raise CheckpointError(f"{path} has format {fmt!r}, expected one of {list(_FORMATS)}")
    cls = LowRankImplicitModel if cfg["format"] == _FORMATS[1] else ImplicitModel
    dtype = getattr(torch, str(cfg.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{path}: unknown dtype {cfg.get('dtype')!r} in the config")
    config = cfg.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the model config is missing or not a JSON object")
    try:
        model = cls(**config, dtype=dtype)
    except (TypeError, ValueError, IdlError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from exc
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config: {exc}") from exc
    return model.to(map_location)
