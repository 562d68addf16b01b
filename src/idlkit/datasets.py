"""Data loaders for experiments: digits, MNIST, Fashion-MNIST, GTSRB, 20 Newsgroups, CIFAR-10.

One entry point, :func:`load`, returns a frozen :class:`Dataset` of numpy arrays (or torch
tensors with ``as_torch=True``).

File lookup order (the first directory holding the file wins):

1. the ``root`` argument of :func:`load`;
2. ``$IDLKIT_DATA`` (the Makefile points it at ``../shared/datasets`` when that folder exists);
3. the cache directory, ``$IDLKIT_CACHE`` or else ``~/.cache/idlkit``;
4. a download into the cache directory from the canonical URL in :data:`REGISTRY`
   (only with ``download=True`` and only for files that have one). The download is
   written to a temporary file, its SHA-256 is checked against the registry, and only
   then is it moved into place with :func:`os.replace`; a mismatch deletes the
   temporary file and raises :class:`DatasetError`. The timeout is short (10 s), so a
   machine without network fails fast.

If nothing is found a :class:`DatasetError` names the missing file and every directory
that was searched. Files found on disk are not hash-checked (local copies are often
re-packed, see :data:`REGISTRY`); their format is validated instead: keys, dtypes,
shapes and label ranges, with a :class:`DatasetError` naming the file and the problem.

``digits`` is scikit-learn's bundled ``load_digits`` and needs no file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._validation import check_choice, check_scalar
from .errors import ConfigurationError, IdlError
from .synthetic import (
    ArithmeticTask,
    SpikySeries,
    addition_task,
    identity_task,
    rolling_argmax_task,
    rolling_average_task,
    shifted_range,
    spiky_series,
    subtraction_task,
)

__all__ = [
    "Dataset",
    "DatasetError",
    "RemoteFile",
    "REGISTRY",
    "DATASETS",
    "load",
    "search_dirs",
    "cache_dir",
    "shifted_range",
    "identity_task",
    "ArithmeticTask",
    "addition_task",
    "subtraction_task",
    "rolling_average_task",
    "rolling_argmax_task",
    "SpikySeries",
    "spiky_series",
]

Split = Literal["train", "test", "both"]

DOWNLOAD_TIMEOUT_S = 10.0


class DatasetError(IdlError):
    """A dataset file is missing, truncated, corrupted or of an unexpected layout."""


@dataclass(frozen=True)
class RemoteFile:
    """Where a dataset file comes from.

    ``url`` is the canonical download address (``None``: no canonical single-file source,
    the file must be put in place by hand). ``sha256`` is the checksum a download must have.
    ``local_sha256`` is the checksum of the copy in the project's ``shared/datasets``
    folder, recorded for reference (that copy is a re-pack, so it differs from ``sha256``).

    Attributes:
        url: the canonical download address, or ``None`` (put the file in place by hand).
        sha256: the checksum a download must have, or ``None``.
        local_sha256: the checksum of the re-packed copy in ``shared/datasets``, or ``None``.
        note: where the file comes from, in words.

    Examples:
        >>> rf = RemoteFile(url=None, sha256=None, local_sha256=None, note="bundled with scikit-learn")
        >>> rf.url is None, rf.note
        (True, 'bundled with scikit-learn')
    """

    url: str | None
    sha256: str | None
    local_sha256: str | None
    note: str


#: file name -> source. Only ``mnist.npz`` and ``20news-bydate.tar.gz`` have a canonical
#: single-file source with a published checksum (the Keras and scikit-learn ones).
#: Fashion-MNIST is canonically four idx.gz files, GTSRB-32-gray and the JPEG CIFAR-10 are
#: project-made derivatives: those must be copied in by hand and are checked by format.
REGISTRY: dict[str, RemoteFile] = {
    "mnist.npz": RemoteFile(
        url="https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
        sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        local_sha256="094b831e432331f1f6d6829ab9bfff4551410a81e1f816c9cce482d3e9b3ba57",
        note="Keras' mnist.npz (same keys); the shared copy has the same arrays, re-packed",
    ),
    "fashion_mnist.npz": RemoteFile(
        url=None, sha256=None,
        local_sha256="c2c37d617253c9f5a6fc23ba8553045734f3682da04a81934b27e6c7c2363beb",
        note="built from the canonical idx files (Debian dataset-fashion-mnist)",
    ),
    "gtsrb32_gray.npz": RemoteFile(
        url=None, sha256=None,
        local_sha256="1dfc11658e0f70aa9820eaffc18cb7ddbf353d91f508e33f2d8a007795beac8b",
        note="GTSRB resized to 32x32, grayscale 0.299R+0.587G+0.114B",
    ),
    "20news-bydate.tar.gz": RemoteFile(
        url="https://ndownloader.figshare.com/files/5975967",
        sha256="8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610",
        local_sha256="affe0286b56e1dcbe469c17121bfb0e5d6052681cca6cde83b16c5101b2fedfc",
        note="scikit-learn's figshare mirror of the 'bydate' archive",
    ),
    "cifar10_jpeg_q75.tar.gz": RemoteFile(
        url=None, sha256=None,
        local_sha256="2b0356f7987abb7c4f8324755bc9f966f8cdce8c11b39818543cbb92f9d82714",
        note="CIFAR-10 re-encoded as JPEG quality 75 (lossy)",
    ),
}


@dataclass(frozen=True)
class _NpzSpec:
    file: str
    image_shape: tuple[int, ...]  # per-sample shape stored in the file
    num_classes: int


_NPZ: dict[str, _NpzSpec] = {
    "mnist": _NpzSpec("mnist.npz", (28, 28), 10),
    "fashion_mnist": _NpzSpec("fashion_mnist.npz", (28, 28), 10),
    "gtsrb": _NpzSpec("gtsrb32_gray.npz", (32, 32), 43),
}

#: the names :func:`load` accepts
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist", "gtsrb", "newsgroups20", "cifar10")

_NEWS_FILE = "20news-bydate.tar.gz"
_CIFAR_FILE = "cifar10_jpeg_q75.tar.gz"
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset. Arrays of a split that was not requested are ``None``.

    ``x_*`` are numpy arrays (``(N, D)`` when flattened, ``(N, C, H, W)`` channels-first
    otherwise; a scipy CSR matrix for ``newsgroups20`` with ``sparse=True``) or torch tensors;
    ``y_*`` are int64 labels in ``[0, num_classes)``. ``source`` says where the data came from.

    Attributes:
        x_train: training inputs (array, CSR matrix or tensor), or ``None``.
        y_train: ``(N,)`` int64 training labels, or ``None``.
        x_test: test inputs, or ``None``.
        y_test: ``(N,)`` int64 test labels, or ``None``.
        num_classes: number of classes.
        name: the dataset's name (as given to :func:`load`).
        source: where the data came from.

    Examples:
        >>> ds = load("digits", split="test")
        >>> isinstance(ds, Dataset), ds.x_train is None, ds.x_test.shape[1], ds.name
        (True, True, 64, 'digits')
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    num_classes: int
    name: str
    source: str

    def torch_dataset(self, split: Literal["train", "test"] = "train") -> Any:
        """Return a :class:`torch.utils.data.TensorDataset` of ``(x, y)`` for ``split``.

        Args:
            split: ``"train"`` or ``"test"``.

        Returns:
            :class:`torch.utils.data.TensorDataset` of ``(x, y)``.

        Raises:
            ConfigurationError: another ``split``.
        """
        import torch
        from torch.utils.data import TensorDataset

        check_choice("split", split, ("train", "test"))
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        if x is None:
            raise ConfigurationError(f"the {split} split of {self.name!r} was not loaded; "
                                     f"call load(..., split={split!r} or 'both')")
        if not isinstance(x, torch.Tensor):
            if hasattr(x, "toarray"):
                x = x.toarray()
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(y, torch.Tensor):
            y = torch.from_numpy(np.ascontiguousarray(y))
        return TensorDataset(x, y)


# ---------------------------------------------------------------------------- locations

def cache_dir() -> Path:
    """The cache directory: ``$IDLKIT_CACHE`` if set, else ``~/.cache/idlkit``.

    Examples:
        >>> cache_dir().name in ("idlkit",) or "IDLKIT_CACHE" in os.environ
        True
    """
    env = os.environ.get("IDLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "idlkit"


def search_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched for dataset files, in order: ``root``, ``$IDLKIT_DATA``, cache.

    Args:
        root: a directory searched first, or ``None``.

    Returns:
        The directories as :class:`~pathlib.Path` (duplicates dropped), in search order.

    Examples:
        >>> str(search_dirs("/data/mine")[0])                  # root first, then $IDLKIT_DATA, the cache
        '/data/mine'
    """
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get("IDLKIT_DATA")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(cache_dir())
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _fetch(url: str, fh: Any, timeout: float) -> None:
    """Stream ``url`` into the binary file ``fh`` (the only function that touches the network)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URLs
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            fh.write(chunk)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(filename: str, dest_dir: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``filename`` from the registry into ``dest_dir`` atomically, checksum verified."""
    remote = REGISTRY[filename]
    assert remote.url is not None and remote.sha256 is not None
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            _fetch(remote.url, fh, timeout)
        got = _sha256(tmp)
        if got != remote.sha256:
            raise DatasetError(f"checksum mismatch for {filename} downloaded from {remote.url}: "
                               f"sha256 {got}, expected {remote.sha256}; the download was deleted")
        dest = dest_dir / filename
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _missing_message(filename: str, dirs: list[Path], extra: str = "") -> str:
    listing = "\n".join(f"  {i}. {d}" for i, d in enumerate(dirs, 1))
    remote = REGISTRY.get(filename)
    how = ""
    if remote is not None and remote.url is not None:
        how = f"\nIt can be downloaded from {remote.url} (sha256 {remote.sha256})."
    elif remote is not None:
        how = f"\nThere is no canonical download for it ({remote.note}); copy it in by hand."
    return (f"dataset file {filename!r} not found. Searched, in order:\n{listing}\n"
            f"Put {filename} in one of these directories (or pass root=..., or set IDLKIT_DATA)."
            f"{how}{extra}")


def _locate(filename: str, root: str | os.PathLike[str] | None, download: bool) -> Path:
    dirs = search_dirs(root)
    for d in dirs:
        p = d / filename
        if p.is_file():
            return p
    remote = REGISTRY.get(filename)
    if download and remote is not None and remote.url is not None:
        try:
            return _download(filename, cache_dir())
        except DatasetError:
            raise
        except (OSError, ValueError) as exc:  # URLError/timeouts are OSErrors
            raise DatasetError(_missing_message(
                filename, dirs, f"\nThe download failed: {type(exc).__name__}: {exc}")) from exc
    extra = "" if download else "\n(download=False: no download was attempted)"
    raise DatasetError(_missing_message(filename, dirs, extra))


# ---------------------------------------------------------------------------- readers

def _read_npz(path: Path, spec: _NpzSpec) -> dict[str, np.ndarray]:
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DatasetError(f"{path}: missing arrays {missing} (found {sorted(f.files)}); "
                                   f"expected keys {list(keys)}")
            arrays = {k: np.asarray(f[k]) for k in keys}
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: cannot read the npz file (truncated or corrupted?): "
                           f"{type(exc).__name__}: {exc}") from exc
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.shape[1:] != spec.image_shape or x.ndim != 1 + len(spec.image_shape):
            raise DatasetError(f"{path}: x_{part} has shape {x.shape}, expected (N, "
                               f"{', '.join(map(str, spec.image_shape))})")
        if not np.issubdtype(x.dtype, np.number):
            raise DatasetError(f"{path}: x_{part} has non-numeric dtype {x.dtype}")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DatasetError(f"{path}: y_{part} has shape {y.shape}, expected ({x.shape[0]},)")
        if not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{path}: y_{part} has dtype {y.dtype}, expected integer labels")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise DatasetError(f"{path}: y_{part} labels span [{int(y.min())}, {int(y.max())}], "
                               f"expected [0, {spec.num_classes - 1}]")
    return arrays


def _safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract ``tar_path`` into ``dest`` (regular files and folders only, no path escapes)."""
    dest.mkdir(parents=True, exist_ok=True)
    base = dest.resolve()
    try:
        with tarfile.open(tar_path, "r:*") as tf:
            for m in tf:
                target = (base / m.name).resolve()
                if base not in target.parents and target != base:
                    raise DatasetError(f"{tar_path}: member {m.name!r} escapes the extraction folder")
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    assert src is not None
                    target.write_bytes(src.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{tar_path}: cannot extract the archive (truncated or corrupted?): "
                           f"{type(exc).__name__}: {exc}") from exc


def _extracted(tar_path: Path, tag: str) -> Path:
    """Extract once into ``<cache>/<tag>-<sha12>/`` (keyed by content) and return that folder."""
    digest = _sha256(tar_path)[:12]
    dest = cache_dir() / f"{tag}-{digest}"
    marker = dest / ".complete"
    if not marker.is_file():
        _safe_extract(tar_path, dest)
        marker.write_text("ok\n")
    return dest


def _load_newsgroups(path: Path, max_features: int | None) -> tuple[Any, ...]:
    from sklearn.datasets import load_files
    from sklearn.feature_extraction.text import TfidfVectorizer

    folder = _extracted(path, "20news-bydate")
    train_dir, test_dir = folder / "20news-bydate-train", folder / "20news-bydate-test"
    for d in (train_dir, test_dir):
        if not d.is_dir():
            raise DatasetError(f"{path}: the archive has no folder {d.name}/")
    train = load_files(str(train_dir), encoding="latin1", shuffle=False)
    test = load_files(str(test_dir), encoding="latin1", shuffle=False)
    if list(train.target_names) != list(test.target_names):
        raise DatasetError(f"{path}: train and test have different groups: "
                           f"{train.target_names} vs {test.target_names}")
    vec = TfidfVectorizer(max_features=max_features)
    x_train = vec.fit_transform(train.data)
    x_test = vec.transform(test.data)
    return (x_train, np.asarray(train.target, np.int64), x_test, np.asarray(test.target, np.int64),
            len(train.target_names))


def _decode_cifar(path: Path) -> dict[str, np.ndarray]:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DatasetError("decoding the CIFAR-10 JPEG archive needs Pillow: pip install pillow") from exc
    out: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            items: dict[str, list[tuple[str, int, np.ndarray]]] = {"train": [], "test": []}
            for m in tf:
                parts = m.name.removeprefix("./").split("/")
                if not m.isfile() or len(parts) != 3 or not parts[2].lower().endswith(".jpg"):
                    continue
                split, cls, fname = parts
                if split not in items:
                    continue
                if cls not in _CIFAR_CLASSES:
                    raise DatasetError(f"{path}: unknown class folder {split}/{cls}/; expected "
                                       f"one of {list(_CIFAR_CLASSES)}")
                src = tf.extractfile(m)
                assert src is not None
                img = Image.open(io.BytesIO(src.read())).convert("RGB")
                arr = np.asarray(img, dtype=np.uint8)
                if arr.shape != (32, 32, 3):
                    raise DatasetError(f"{path}: {m.name} is {arr.shape}, expected 32x32 RGB")
                items[split].append((f"{cls}/{fname}", _CIFAR_CLASSES.index(cls), arr))
    except DatasetError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read the archive (truncated or corrupted?): "
                           f"{type(exc).__name__}: {exc}") from exc
    for split, rows in items.items():
        if not rows:
            raise DatasetError(f"{path}: no {split}/<class>/*.jpg images found")
        rows.sort(key=lambda r: r[0])  # deterministic order
        out[f"x_{split}"] = np.stack([r[2] for r in rows])
        out[f"y_{split}"] = np.array([r[1] for r in rows], dtype=np.int64)
    return out


def _load_cifar(path: Path) -> dict[str, np.ndarray]:
    """Decode the JPEG archive, caching the arrays as ``<cache>/cifar10-<sha12>.npz``."""
    cache = cache_dir() / f"cifar10-{_sha256(path)[:12]}.npz"
    spec = _NpzSpec(cache.name, (32, 32, 3), 10)
    if cache.is_file():
        try:
            return _read_npz(cache, spec)
        except DatasetError:
            cache.unlink(missing_ok=True)  # a broken cache is rebuilt
    arrays = _decode_cifar(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cifar10.", suffix=".npz", dir=cache.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, cache)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return arrays


def _load_digits(seed: int, test_size: float) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float64)  # (1797, 8, 8), values 0..16
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


# ---------------------------------------------------------------------------- entry point

def _prepare(x: np.ndarray, *, channels_last: bool, scale: float, flatten: bool, normalize: bool,
             dtype: Any) -> np.ndarray:
    x = np.asarray(x)
    if channels_last:  # (N, H, W, C) -> (N, C, H, W)
        x = np.transpose(x, (0, 3, 1, 2))
    else:  # (N, H, W) -> (N, 1, H, W)
        x = x[:, None]
    if flatten:
        x = x.reshape(x.shape[0], -1)
    x = x.astype(dtype)
    if normalize:
        x = x / np.asarray(scale, dtype=dtype)
    return np.ascontiguousarray(x)


def load(
    name: str,
    split: Split = "both",
    *,
    flatten: bool = True,
    normalize: bool = True,
    dtype: Any = np.float32,
    as_torch: bool = False,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    seed: int = 0,
    test_size: float = 0.2,
    max_features: int | None = 10000,
    sparse: bool = False,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    Args:
        name: ``digits``, ``mnist``, ``fashion_mnist``, ``gtsrb`` (32x32 gray, 43 classes),
            ``newsgroups20`` (TF-IDF) or ``cifar10`` (32x32 RGB, from JPEG).
        split: ``"train"``, ``"test"`` or ``"both"``; the arrays of the other split are ``None``.
        flatten: ``(N, D)`` features if true, else channels-first ``(N, C, H, W)``
            (``C = 1`` for grayscale). Ignored for ``newsgroups20``.
        normalize: scale pixels to ``[0, 1]`` (divide by 255, by 16 for ``digits``). TF-IDF rows
            are always L2-normalised by the vectorizer.
        dtype: floating dtype of the features; labels are always int64.
        as_torch: return torch tensors instead of numpy arrays.
        root: first directory searched (see the module docstring for the lookup order).
        download: allow a checksum-verified download into the cache when the file is absent.
        seed: seed of the deterministic stratified train/test split of ``digits``.
        test_size: fraction of ``digits`` in the test split.
        max_features: vocabulary size of the TF-IDF vectorizer (fitted on the train split only)
            for ``newsgroups20``; ``None`` keeps the whole vocabulary.
        sparse: return a scipy CSR matrix for ``newsgroups20`` (not with ``as_torch``).

    Raises:
        ConfigurationError: unknown name or split, or an invalid option combination.
        DatasetError: the file is missing (message lists the searched directories) or corrupt.

    Examples:
        >>> ds = load("digits", as_torch=True)                    # bundled with scikit-learn
        >>> ds.x_train.shape[1], ds.num_classes, ds.x_train.shape[0] + ds.x_test.shape[0]
        (64, 10, 1797)
    """
    if name not in DATASETS:
        raise ConfigurationError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    check_choice("split", split, ("train", "test", "both"))
    try:
        floating = np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ConfigurationError(f"dtype must be a floating numpy dtype such as np.float32 or "
                                 f"np.float64, got {dtype!r}")
    check_scalar("test_size", test_size, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_scalar("seed", seed, kind=int, low=0, high=2**32 - 1)
    if sparse and as_torch:
        raise ConfigurationError("sparse=True cannot be combined with as_torch=True")

    prep: Callable[[np.ndarray], np.ndarray]
    if name == "digits":
        arrays, num_classes, source = _load_digits(seed, test_size), 10, "sklearn.datasets.load_digits"

        def prep(x: np.ndarray) -> np.ndarray:
            return _prepare(x, channels_last=False, scale=16.0, flatten=flatten, normalize=normalize,
                            dtype=dtype)
    elif name in _NPZ:
        spec = _NPZ[name]
        path = _locate(spec.file, root, download)
        arrays, num_classes, source = _read_npz(path, spec), spec.num_classes, str(path)

        def prep(x: np.ndarray) -> np.ndarray:
            return _prepare(x, channels_last=False, scale=255.0, flatten=flatten, normalize=normalize,
                            dtype=dtype)
    elif name == "cifar10":
        path = _locate(_CIFAR_FILE, root, download)
        arrays, num_classes, source = _load_cifar(path), 10, str(path)

        def prep(x: np.ndarray) -> np.ndarray:
            return _prepare(x, channels_last=True, scale=255.0, flatten=flatten, normalize=normalize,
                            dtype=dtype)
    else:  # newsgroups20
        path = _locate(_NEWS_FILE, root, download)
        x_tr, y_tr, x_te, y_te, num_classes = _load_newsgroups(path, max_features)
        arrays, source = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, str(path)

        def prep(x: Any) -> Any:
            x = x.astype(dtype)
            return x.tocsr() if sparse else np.ascontiguousarray(x.toarray())

    out: dict[str, Any] = {"x_train": None, "y_train": None, "x_test": None, "y_test": None}
    for part in ("train", "test"):
        if split in (part, "both"):
            out[f"x_{part}"] = prep(arrays[f"x_{part}"])
            out[f"y_{part}"] = np.ascontiguousarray(arrays[f"y_{part}"], dtype=np.int64)
    if as_torch:
        import torch

        out = {k: None if v is None else torch.from_numpy(v) for k, v in out.items()}
    return Dataset(num_classes=num_classes, name=name, source=source, **out)
