"""Tests of idlkit.datasets: offline, on tiny fake files (the real MNIST only if present)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from idlkit import datasets
from idlkit.datasets import Dataset, DatasetError, load
from idlkit.errors import ConfigurationError, IdlError

# the real data, found only through $IDLKIT_DATA (read before the fixture below hides it)
SHARED = Path(os.environ.get("IDLKIT_DATA") or "/nonexistent-IDLKIT_DATA-unset")
HAS_PIL = importlib.util.find_spec("PIL") is not None


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real data directory, a private cache, and a network that fails if touched."""
    cache = tmp_path / "cache"
    monkeypatch.delenv("IDLKIT_DATA", raising=False)
    monkeypatch.setenv("IDLKIT_CACHE", str(cache))

    def no_network(url: str, fh: object, timeout: float) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(datasets, "_fetch", no_network)
    return cache


def _fake_npz(path: Path, hw: tuple[int, int], num_classes: int, n_train: int = 12, n_test: int = 5,
              **override: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        "y_train": rng.integers(0, num_classes, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        "y_test": rng.integers(0, num_classes, n_test).astype(np.uint8),
    }
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


NPZ_CASES = [("mnist", "mnist.npz", (28, 28), 10), ("fashion_mnist", "fashion_mnist.npz", (28, 28), 10),
             ("gtsrb", "gtsrb32_gray.npz", (32, 32), 43)]


# ---------------------------------------------------------------------------- digits

def test_digits_shapes_and_normalization() -> None:
    ds = load("digits")
    assert isinstance(ds, Dataset)
    assert ds.num_classes == 10 and ds.name == "digits"
    assert ds.x_train.shape[1] == 64 and ds.x_test.shape[1] == 64
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_digits_split_is_deterministic() -> None:
    a, b, c = load("digits", seed=3), load("digits", seed=3), load("digits", seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


def test_digits_unflattened_and_split() -> None:
    ds = load("digits", split="test", flatten=False, normalize=False, dtype=np.float64)
    assert ds.x_train is None and ds.y_train is None
    assert ds.x_test.shape[1:] == (1, 8, 8) and ds.x_test.dtype == np.float64
    assert ds.x_test.max() == 16.0


# ---------------------------------------------------------------------------- npz datasets

@pytest.mark.parametrize(("name", "fname", "hw", "k"), NPZ_CASES)
def test_npz_via_root(tmp_path: Path, name: str, fname: str, hw: tuple[int, int], k: int) -> None:
    path = _fake_npz(tmp_path / "data" / fname, hw, k)
    ds = load(name, root=tmp_path / "data", download=False)
    assert ds.num_classes == k and ds.source == str(path)
    assert ds.x_train.shape == (12, hw[0] * hw[1]) and ds.x_test.shape == (5, hw[0] * hw[1])
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    with np.load(path) as f:
        np.testing.assert_allclose(ds.x_train[0], f["x_train"][0].reshape(-1) / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(ds.y_test, f["y_test"])


@pytest.mark.parametrize(("name", "fname", "hw", "k"), NPZ_CASES)
def test_npz_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, fname: str,
                     hw: tuple[int, int], k: int) -> None:
    _fake_npz(tmp_path / "env" / fname, hw, k)
    monkeypatch.setenv("IDLKIT_DATA", str(tmp_path / "env"))
    ds = load(name, split="train", flatten=False, normalize=False, dtype=np.float64, as_torch=True,
              download=False)
    assert isinstance(ds.x_train, torch.Tensor) and ds.x_test is None
    assert ds.x_train.shape == (12, 1, *hw) and ds.x_train.dtype == torch.float64
    assert ds.y_train.dtype == torch.int64
    assert ds.x_train.max() > 1.0  # not normalized
    tds = ds.torch_dataset("train")
    x0, y0 = tds[0]
    assert x0.shape == (1, *hw) and len(tds) == 12
    with pytest.raises(ConfigurationError):
        ds.torch_dataset("test")


def test_root_takes_precedence_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_npz(tmp_path / "a" / "mnist.npz", (28, 28), 10, n_train=3)
    _fake_npz(tmp_path / "b" / "mnist.npz", (28, 28), 10, n_train=4)
    monkeypatch.setenv("IDLKIT_DATA", str(tmp_path / "b"))
    assert load("mnist", root=tmp_path / "a", download=False).x_train.shape[0] == 3
    assert load("mnist", download=False).x_train.shape[0] == 4


def test_cache_dir_is_searched(_isolated_env: Path) -> None:
    _fake_npz(_isolated_env / "gtsrb32_gray.npz", (32, 32), 43)
    assert load("gtsrb", download=False).num_classes == 43


def test_missing_file_names_file_and_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          _isolated_env: Path) -> None:
    monkeypatch.setenv("IDLKIT_DATA", str(tmp_path / "envdir"))
    with pytest.raises(DatasetError) as info:
        load("fashion_mnist", root=tmp_path / "rootdir", download=False)
    msg = str(info.value)
    assert "fashion_mnist.npz" in msg
    for d in (tmp_path / "rootdir", tmp_path / "envdir", _isolated_env):
        assert str(d) in msg
    assert isinstance(info.value, IdlError)


def test_failed_download_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"mnist\.npz.*(?s:.*)download failed"):
        load("mnist", root=tmp_path, download=True)


def test_checksum_mismatch_deletes_temp(monkeypatch: pytest.MonkeyPatch, _isolated_env: Path) -> None:
    def wrong_bytes(url: str, fh: io.BufferedWriter, timeout: float) -> None:
        fh.write(b"not the mnist you are looking for")

    monkeypatch.setattr(datasets, "_fetch", wrong_bytes)
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load("mnist", download=True)
    assert not any(_isolated_env.iterdir())  # neither the temp file nor a final file


def test_good_download_is_moved_into_place(monkeypatch: pytest.MonkeyPatch, _isolated_env: Path) -> None:
    _fake_npz(_isolated_env.parent / "src" / "mnist.npz", (28, 28), 10)
    payload = (_isolated_env.parent / "src" / "mnist.npz").read_bytes()

    fake = datasets.RemoteFile(url="https://example.invalid/mnist.npz",
                               sha256=hashlib.sha256(payload).hexdigest(), local_sha256=None, note="")
    monkeypatch.setitem(datasets.REGISTRY, "mnist.npz", fake)
    monkeypatch.setattr(datasets, "_fetch", lambda url, fh, timeout: fh.write(payload))
    ds = load("mnist", download=True)
    assert ds.source == str(_isolated_env / "mnist.npz")
    assert [p.name for p in _isolated_env.iterdir()] == ["mnist.npz"]


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"y_train": np.full(12, 10, np.uint8)}, "labels"),
        ({"x_train": np.zeros((12, 27, 28), np.uint8)}, "shape"),
        ({"y_test": np.zeros(4, np.uint8)}, "y_test"),
        ({"y_train": np.zeros(12, np.float32)}, "integer"),
    ],
)
def test_corrupt_contents(tmp_path: Path, override: dict[str, np.ndarray], problem: str) -> None:
    path = _fake_npz(tmp_path / "mnist.npz", (28, 28), 10, **override)
    with pytest.raises(DatasetError, match=problem) as info:
        load("mnist", root=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_wrong_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="missing arrays"):
        load("mnist", root=tmp_path, download=False)


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_npz(tmp_path: Path, keep: float) -> None:
    path = _fake_npz(tmp_path / "mnist.npz", (28, 28), 10)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(DatasetError, match="mnist.npz") as info:
        load("mnist", root=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "gtsrb32_gray.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError, match="gtsrb32_gray.npz"):
        load("gtsrb", root=tmp_path, download=False)


def test_unknown_name_and_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="mnist") as info:
        load("imagenet")
    for n in datasets.DATASETS:
        assert n in str(info.value)
    with pytest.raises(ConfigurationError):
        load("digits", split="valid")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        load("digits", dtype=np.int32)
    with pytest.raises(ConfigurationError):
        load("newsgroups20", sparse=True, as_torch=True)


# ---------------------------------------------------------------------------- 20 newsgroups

def _add_file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _fake_news(path: Path) -> Path:
    docs = {
        "sci.space": [b"orbit rocket launch nasa", b"the moon orbit shuttle", b"space station rocket fuel"],
        "rec.autos": [b"car engine wheel", b"the engine of my car\xe9", b"brake wheel tire car"],
    }
    with tarfile.open(path, "w:gz") as tf:
        for part in ("train", "test"):
            for group, texts in docs.items():
                for i, text in enumerate(texts):
                    _add_file(tf, f"20news-bydate-{part}/{group}/{1000 + i}", text)
    return path


def test_newsgroups_tfidf(tmp_path: Path) -> None:
    _fake_news(tmp_path / "20news-bydate.tar.gz")
    ds = load("newsgroups20", root=tmp_path, download=False)
    assert ds.num_classes == 2
    assert ds.x_train.shape[0] == 6 and ds.x_test.shape[0] == 6
    assert ds.x_train.shape[1] == ds.x_test.shape[1] > 5
    assert isinstance(ds.x_train, np.ndarray) and ds.x_train.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1), 1.0, rtol=1e-5)
    assert sorted(np.bincount(ds.y_train)) == [3, 3]

    small = load("newsgroups20", root=tmp_path, download=False, max_features=4, sparse=True)
    assert small.x_train.shape == (6, 4) and hasattr(small.x_train, "tocsr")
    t = load("newsgroups20", split="test", root=tmp_path, download=False, as_torch=True)
    assert t.x_test.shape[0] == 6 and t.x_train is None and isinstance(t.x_test, torch.Tensor)


def test_newsgroups_corrupt_archive(tmp_path: Path) -> None:
    raw = _fake_news(tmp_path / "src.tar.gz").read_bytes()
    (tmp_path / "20news-bydate.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="20news-bydate.tar.gz"):
        load("newsgroups20", root=tmp_path, download=False)


# ---------------------------------------------------------------------------- CIFAR-10

@pytest.mark.skipif(not HAS_PIL, reason="Pillow is not installed (pip install pillow): JPEG decoding "
                    "untested")
def test_cifar_jpeg_decodes(tmp_path: Path, _isolated_env: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "cifar10_jpeg_q75.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for part, n in (("train", 3), ("test", 2)):
            for cls in ("airplane", "cat", "truck"):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
                    _add_file(tf, f"{part}/{cls}/{i:04d}.jpg", buf.getvalue())
    ds = load("cifar10", root=tmp_path, download=False, flatten=False)
    assert ds.x_train.shape == (9, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert sorted(set(ds.y_train.tolist())) == [0, 3, 9]
    assert list(_isolated_env.glob("cifar10-*.npz"))  # decoded arrays were cached
    again = load("cifar10", root=tmp_path, download=False)
    assert again.x_train.shape == (9, 3072)


@pytest.mark.skipif(HAS_PIL, reason="only meaningful without Pillow")
def test_cifar_without_pillow_says_how_to_install(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "cifar10_jpeg_q75.tar.gz", "w:gz") as tf:
        _add_file(tf, "train/cat/0.jpg", b"x")
    with pytest.raises(DatasetError, match="pip install pillow"):
        load("cifar10", root=tmp_path, download=False)


# ---------------------------------------------------------------------------- real data

@pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(), reason=f"no real MNIST at {SHARED}/mnist.npz")
def test_real_mnist() -> None:
    ds = load("mnist", root=SHARED, download=False)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.y_train.min() == 0 and ds.y_train.max() == 9
