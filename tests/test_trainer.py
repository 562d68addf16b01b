"""Projected-gradient Trainer (problem 6.4): learns, stays well-posed, is reproducible,
stops early, applies penalties, and refuses bad input with typed errors."""

import math

import numpy as np
import pytest
import torch

import idlkit
from idlkit import train
from idlkit.errors import ConfigurationError, InputError, NonFiniteError, ShapeError


@pytest.fixture(scope="module")
def digits():
    d = idlkit.datasets.load("digits")
    return (torch.as_tensor(d.x_train), torch.as_tensor(d.y_train),
            torch.as_tensor(d.x_test), torch.as_tensor(d.y_test))


def _model(seed=0, n=32, **kw):
    torch.manual_seed(seed)
    return idlkit.ImplicitModel(64, n, 10, "relu", kappa=0.9, **kw)


def test_learns_digits_and_stays_wellposed(digits):
    Xtr, ytr, Xte, yte = digits
    m = _model()
    seen = []
    res = train.Trainer(lr=5e-3, epochs=4, batch_size=64,
                        log=lambda r: seen.append(m.certificate().holds["inf"])).fit(
        m, (Xtr, ytr), (Xte, yte))
    assert len(res.history) == 4 and all(seen)
    assert res.history[-1].val_accuracy > 0.85
    assert res.history[-1].train_loss < res.history[0].train_loss
    assert res.history[0].forward_iterations >= 1 and res.history[0].backward_iterations >= 1


def test_same_seed_same_weights(digits):
    Xtr, ytr, _, _ = digits
    runs = []
    for _ in range(2):
        m = _model(seed=3)
        train.Trainer(lr=1e-2, epochs=2, batch_size=128, seed=7).fit(m, (Xtr[:400], ytr[:400]))
        runs.append({k: v.clone() for k, v in m.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    m = _model(seed=3)
    train.Trainer(lr=1e-2, epochs=2, batch_size=128, seed=8).fit(m, (Xtr[:400], ytr[:400]))
    assert not torch.equal(m.A, runs[0]["A"])


def test_early_stopping_restores_the_best_epoch(digits):
    Xtr, ytr, Xte, yte = digits
    g = torch.Generator().manual_seed(0)
    noise_labels = torch.randint(0, 10, yte.shape, generator=g)  # validation cannot improve for long
    m = _model()
    res = train.Trainer(lr=2e-2, epochs=30, batch_size=64, patience=2).fit(
        m, (Xtr, ytr), (Xte, noise_labels))
    assert res.stopped_early and len(res.history) < 30
    best = min(r.val_loss for r in res.history)
    assert res.history[res.best_epoch - 1].val_loss == best
    loss_now, _ = train.Trainer(batch_size=64).evaluate(m, (Xte, noise_labels))
    assert loss_now == pytest.approx(best, rel=1e-6)


def test_penalties_shrink_the_model(digits):
    Xtr, ytr, _, _ = digits
    sizes = {}
    for w in (0.0, 1e-2):
        m = _model(seed=1)
        train.Trainer(lr=1e-2, epochs=2, batch_size=64, penalties=[("l1", w), ("lipschitz", w)]).fit(
            m, (Xtr, ytr))
        sizes[w] = float(sum(getattr(m, k).abs().sum() for k in "ABCD"))
    assert sizes[1e-2] < 0.8 * sizes[0.0]


def test_float64_and_regression_and_custom_pieces():
    g = torch.Generator().manual_seed(0)
    U = torch.rand(200, 1, generator=g, dtype=torch.float64) * 10 - 5
    Y = 5 * torch.cos(math.pi * U) * torch.exp(-U.abs() / 2)  # paper 000 §7.1's function
    torch.manual_seed(0)
    m = idlkit.ImplicitModel(1, 20, 1, "relu", kappa=0.5)
    res = train.Trainer(loss="squared_error", optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
                        epochs=20, batch_size=50, dtype=torch.float64, schedule="cosine",
                        penalties=[(lambda model: model.D.abs().sum(), 1e-3)]).fit(m, (U, Y), (U, Y))
    assert m.A.dtype == torch.float64
    assert res.history[-1].val_loss < res.history[0].val_loss
    assert math.isnan(res.history[-1].val_accuracy)
    assert res.history[-1].lr < res.history[0].lr  # cosine schedule


@pytest.mark.parametrize("kw", [dict(optimizer="lbfgs"), dict(loss="hinge"), dict(schedule="warm"),
                                dict(penalties=[("trace", 1.0)]), dict(penalties=[("l1", -1.0)]),
                                dict(epochs=0), dict(lr=0.0), dict(patience=0),
                                dict(dtype=torch.float16)])
def test_bad_settings(kw):
    with pytest.raises(ConfigurationError):
        train.Trainer(**kw)


def test_bad_data(digits):
    Xtr, ytr, _, _ = digits
    m = _model()
    t = train.Trainer(epochs=1)
    bad = Xtr[:10].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        t.fit(m, (bad, ytr[:10]))
    with pytest.raises(InputError, match="out of range"):
        t.fit(m, (Xtr[:10], ytr[:10] + 10))
    with pytest.raises(ShapeError):
        t.fit(m, (Xtr[:10, :50], ytr[:10]))
    with pytest.raises(ShapeError):
        t.fit(m, (Xtr[:10], ytr[:9]))
    with pytest.raises(InputError):
        t.fit(m, Xtr)
    with pytest.raises(ConfigurationError):
        train.Trainer(patience=2).fit(m, (Xtr[:10], ytr[:10]))
    assert np.isfinite(float(m.A.sum()))


@pytest.mark.parametrize("optimizer,schedule", [("adam", "cosine"), ("sgd", "step")])
def test_resume_is_bit_identical(digits, tmp_path, optimizer, schedule):
    Xtr, ytr, Xte, yte = digits
    data, val = (Xtr[:300], ytr[:300]), (Xte[:100], yte[:100])
    kw = dict(optimizer=optimizer, schedule=schedule, lr=1e-2, momentum=0.9, batch_size=64, seed=5)
    straight = _model(seed=2)
    full = train.Trainer(epochs=4, **kw).fit(straight, data, val)
    ckpt = tmp_path / "run.safetensors"

    class Interrupt(Exception):
        pass

    def stop_in_epoch_3(rec):
        if rec.epoch == 3:
            raise Interrupt  # the run dies after epoch 3's work, before its checkpoint

    with pytest.raises(Interrupt):
        train.Trainer(epochs=4, log=stop_in_epoch_3, **kw).fit(_model(seed=2), data, val,
                                                               checkpoint=ckpt)
    resumed = _model(seed=9)  # different initial weights: all must come from the checkpoint
    res = train.Trainer(epochs=4, **kw).fit(resumed, data, val, checkpoint=ckpt, resume=True)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [r.train_loss for r in res.history] == [r.train_loss for r in full.history]
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_errors(digits, tmp_path):
    Xtr, ytr, _, _ = digits
    ckpt = tmp_path / "run.safetensors"
    train.Trainer(epochs=1, batch_size=128).fit(_model(), (Xtr[:200], ytr[:200]), checkpoint=ckpt)
    with pytest.raises(idlkit.io.CheckpointError, match="shapes"):
        train.Trainer(epochs=2).fit(_model(n=16), (Xtr[:200], ytr[:200]), checkpoint=ckpt, resume=True)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(idlkit.io.CheckpointError):
        train.Trainer(epochs=2).fit(_model(), (Xtr[:200], ytr[:200]), checkpoint=ckpt, resume=True)
    idlkit.save(_model(), tmp_path / "model.safetensors")  # a model file is not a Trainer checkpoint
    with pytest.raises(idlkit.io.CheckpointError, match="not a Trainer checkpoint"):
        train.Trainer(epochs=2).fit(_model(), (Xtr[:200], ytr[:200]),
                                    checkpoint=tmp_path / "model.safetensors", resume=True)


def test_epoch_time_excludes_validation(digits):
    Xtr, ytr, Xte, yte = digits
    rec_plain = train.Trainer(epochs=1, seed=0).fit(_model(), (Xtr[:200], ytr[:200])).history[0]
    assert rec_plain.val_seconds == 0.0 and rec_plain.seconds > 0
    res = train.Trainer(epochs=1, seed=0).fit(_model(), (Xtr[:200], ytr[:200]), (Xte, yte))
    assert res.history[0].val_seconds > 0
