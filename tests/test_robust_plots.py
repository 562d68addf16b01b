"""idlkit.plot.sensitivity_heatmaps (paper 000 Fig. 8, 15) and attack_images (Fig. 16-18) on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from idlkit import plot, robust  # noqa: E402
from idlkit.convert import from_torch  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double().eval()
    return from_torch(net, torch.rand(2, 16, dtype=torch.float64))


def test_sensitivity_heatmaps(tiny: torch.nn.Module, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plot.sensitivity_heatmaps(tiny, shape=(4, 4), classes=[0, 2], class_names=["a", "b", "c"])
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    S = robust.sensitivity_matrix(tiny).numpy()
    np.testing.assert_allclose(np.asarray(images[1].get_array()), S[2].reshape(4, 4))
    assert "c" in [ax.get_title().split("\n")[0] for ax in fig.axes]
    out = tmp_path / "heat.png"
    fig.savefig(out)
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    plt.close(fig)
    # all classes by default; (C, H, W) shapes are reduced over channels; a given S is used as is
    fig = plot.sensitivity_heatmaps(None, shape=(1, 4, 4), S=torch.as_tensor(S), ncols=2)
    assert sum(1 for ax in fig.axes if ax.images) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="shape"):
        plot.sensitivity_heatmaps(tiny, shape=(5, 5))
    with pytest.raises(ValueError, match="classes"):
        plot.sensitivity_heatmaps(tiny, shape=(4, 4), classes=[3])


def test_attack_images(tiny: torch.nn.Module, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(1)
    U = torch.rand(3, 16, generator=g, dtype=torch.float64)
    y = tiny(U).argmax(1)
    res = robust.sensitivity_attack(tiny, U, y, robust.Budget(k=2, clip=(0.0, 1.0)), mode="random",
                                    generator=g)
    fig = plot.attack_images(U, res.u_adv, shape=(4, 4), labels=y, clean_predictions=y,
                             predictions=tiny(res.u_adv).argmax(1))
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 9  # clean, adversarial, changed-pixel rows for 3 images
    marked = np.asarray(axes[7].images[0].get_array())  # third row, second image (row-major order)
    changed = (res.u_adv[1] != U[1]).numpy().reshape(4, 4)
    red = (marked[..., 0] == 1) & (marked[..., 1] == 0)
    np.testing.assert_array_equal(red, changed)
    out = tmp_path / "attack.png"
    fig.savefig(out)
    assert out.read_bytes()[:4] == b"\x89PNG"
    plt.close(fig)
    fig = plot.attack_images(U[0], res.u_adv[0], shape=(1, 4, 4), mark_changed=False, titles=["x"])
    assert sum(1 for ax in fig.axes if ax.images) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="same shape"):
        plot.attack_images(U, U[:2], shape=(4, 4))
    with pytest.raises(ValueError, match="labels"):
        plot.attack_images(U, U, shape=(4, 4), labels=[0])
