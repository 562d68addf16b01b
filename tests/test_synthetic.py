"""Tests of idlkit.synthetic (thesis §5.2 extrapolation tasks): every target against a brute-force
Python loop, determinism, ranges, the spiky series' layout and statistics, and every error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idlkit import datasets
from idlkit.errors import ConfigurationError, ShapeError
from idlkit.synthetic import (
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

# ----------------------------------------------------------------------------- helpers

GENERATORS = {
    "identity": lambda seed: identity_task(64, 5, seed=seed),
    "addition": lambda seed: addition_task(64, 20, seed=seed),
    "subtraction": lambda seed: subtraction_task(64, 20, seed=seed),
    "rolling_average": lambda seed: rolling_average_task(64, 6, seed=seed),
    "rolling_argmax": lambda seed: rolling_argmax_task(64, 6, seed=seed),
}


def _spiky_small(seed: int = 0) -> SpikySeries:
    return spiky_series(1000, 400, n_regions=4, region_length=30, seed=seed)


# ----------------------------------------------------------------------------- re-export


def test_reexported_from_datasets() -> None:
    for name in (
        "shifted_range",
        "identity_task",
        "ArithmeticTask",
        "addition_task",
        "subtraction_task",
        "rolling_average_task",
        "rolling_argmax_task",
        "SpikySeries",
        "spiky_series",
    ):
        assert name in datasets.__all__
        assert getattr(datasets, name) is globals()[name]


# ----------------------------------------------------------------------------- shifted_range


def test_shifted_range_thesis_instance() -> None:
    # §5.3: identity task, train U(-5, 5), test U(-205, 205) at kappa = 200
    assert shifted_range(-5.0, 5.0, 200.0) == (-205.0, 205.0)
    assert shifted_range(1.0, 2.0, 0.0) == (1.0, 2.0)
    assert shifted_range(1, 2, 0.5) == (0.5, 2.5)


@settings(max_examples=50, deadline=None)
@given(
    low=st.floats(-1e3, 1e3),
    width=st.floats(1e-3, 1e3),
    shift=st.floats(0.0, 1e3),
)
def test_shifted_range_property(low: float, width: float, shift: float) -> None:
    high = low + width
    lo, hi = shifted_range(low, high, shift)
    assert lo == low - shift and hi == high + shift
    assert (lo + hi) / 2 == pytest.approx((low + high) / 2, abs=1e-9 * (1 + abs(low) + abs(high) + shift))


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_identical_different_seed_differs(name: str) -> None:
    gen = GENERATORS[name]
    a, b, c = gen(3), gen(3), gen(4)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


def test_spiky_determinism() -> None:
    a, b, c = _spiky_small(1), _spiky_small(1), _spiky_small(2)
    assert torch.equal(a.y, b.y) and torch.equal(a.spike, b.spike) and a.regions == b.regions
    assert not torch.equal(a.y, c.y)
    assert a.regions != c.regions


def test_global_rng_untouched() -> None:
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the legacy global state is the point)
    identity_task(10)
    addition_task(10)
    rolling_argmax_task(10)
    _spiky_small()
    ArithmeticTask.random("sub", 10, seed=5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


def test_dtype_keyword() -> None:
    U, Y = identity_task(5, 3, dtype=torch.float64)
    assert U.dtype == Y.dtype == torch.float64
    U, y = addition_task(5, 10, dtype=torch.float64)
    assert U.dtype == y.dtype == torch.float64
    S, labels = rolling_argmax_task(5, dtype=torch.float64)
    assert S.dtype == torch.float64 and labels.dtype == torch.int64
    S, Y = rolling_average_task(5)
    assert S.dtype == Y.dtype == torch.float32
    s = _spiky_small()
    assert s.y.dtype == s.x.dtype == torch.float32 and s.spike.dtype == torch.bool


# ----------------------------------------------------------------------------- identity


def test_identity_targets_and_range() -> None:
    U, Y = identity_task(500, 10, seed=1)
    assert U.shape == Y.shape == (500, 10)
    assert torch.equal(U, Y) and U.data_ptr() != Y.data_ptr()
    assert U.min() >= -5.0 and U.max() <= 5.0
    assert U.min() < -4.9 and U.max() > 4.9  # fills the support


def test_identity_shift_widens_spread() -> None:
    U0, _ = identity_task(2000, 10, seed=1)
    U1, _ = identity_task(2000, 10, shift=200.0, seed=1)
    assert U1.min() >= -205.0 and U1.max() <= 205.0
    assert U1.min() < -200.0 and U1.max() > 200.0  # beyond the training support
    assert U1.std() > 30 * U0.std()
    assert abs(float(U1.mean())) < 5.0  # centre kept


# ----------------------------------------------------------------------------- arithmetic


def test_arithmetic_target_hand_computed() -> None:
    U = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [0.0, -1.0, 10.0, 0.5, 2.0]])
    add = ArithmeticTask("add", 5, (0, 2), (1, 4))
    sub = ArithmeticTask("sub", 5, (0, 2), (1, 4))
    # row 0: a = 1+2+3 = 6, b = 2+3+4+5 = 14; row 1: a = 9, b = 11.5
    assert torch.equal(add.target(U), torch.tensor([[20.0], [20.5]]))
    assert torch.equal(sub.target(U), torch.tensor([[-8.0], [-2.5]]))


@pytest.mark.parametrize("op", ["add", "sub"])
@pytest.mark.parametrize("task_seed", [0, 7])
def test_arithmetic_sample_brute_force(op: str, task_seed: int) -> None:
    task = ArithmeticTask.random(op, 30, seed=task_seed)
    U, y = task.sample(40, low=2.0, high=5.0, shift=0.5, seed=3)
    assert U.shape == (40, 30) and y.shape == (40, 1)
    assert U.min() >= 1.5 and U.max() <= 5.5
    i, j = task.first
    k, l = task.second
    for r in range(U.shape[0]):
        a = sum(float(U[r, t]) for t in range(i, j + 1))
        b = sum(float(U[r, t]) for t in range(k, l + 1))
        expected = a + b if op == "add" else a - b
        assert float(y[r, 0]) == pytest.approx(expected, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("fn,op", [(addition_task, "add"), (subtraction_task, "sub")])
def test_convenience_functions_match_task(fn, op: str) -> None:
    U, y = fn(25, 40, low=1.0, high=2.0, seed=9, task_seed=4)
    U2, y2 = ArithmeticTask.random(op, 40, 4).sample(25, seed=9)
    assert torch.equal(U, U2) and torch.equal(y, y2)
    assert U.shape == (25, 40) and U.min() >= 1.0 and U.max() <= 2.0
    # task_seed changes the task, seed the samples
    _, y3 = fn(25, 40, seed=9, task_seed=5)
    U4, _ = fn(25, 40, seed=10, task_seed=4)
    assert not torch.equal(y, y3)
    assert not torch.equal(U, U4)


def test_addition_default_is_table_5_2_train_law() -> None:
    U, _ = addition_task(200)
    assert U.shape == (200, 100) and U.min() >= 1.0 and U.max() <= 2.0
    Ut, _ = addition_task(200, low=2.0, high=5.0, seed=1)
    assert Ut.min() >= 2.0 and Ut.max() <= 5.0 and Ut.max() > 4.9


def test_arithmetic_random_valid_and_deterministic() -> None:
    for seed in range(50):
        t = ArithmeticTask.random("add", 100, seed)
        assert 0 <= t.first[0] < t.first[1] < 100
        assert 0 <= t.second[0] < t.second[1] < 100
        assert t == ArithmeticTask.random("add", 100, seed)
    assert ArithmeticTask.random("add", 100, 0) != ArithmeticTask.random("add", 100, 1)


def test_arithmetic_random_covers_index_space() -> None:
    dim = 8
    pairs = set()
    firsts, lasts = set(), set()
    for seed in range(600):
        t = ArithmeticTask.random("sub", dim, seed)
        for a, b in (t.first, t.second):
            pairs.add((a, b))
            firsts.add(a)
            lasts.add(b)
    assert pairs == {(a, b) for a in range(dim) for b in range(a + 1, dim)}
    assert firsts == set(range(dim - 1)) and lasts == set(range(1, dim))


@settings(max_examples=40, deadline=None)
@given(
    op=st.sampled_from(["add", "sub"]),
    dim=st.integers(2, 12),
    task_seed=st.integers(0, 10_000),
    seed=st.integers(0, 10_000),
)
def test_arithmetic_target_property(op: str, dim: int, task_seed: int, seed: int) -> None:
    task = ArithmeticTask.random(op, dim, task_seed)
    U, y = task.sample(3, seed=seed, dtype=torch.float64)
    for r in range(3):
        a = sum(U[r, t].item() for t in range(task.first[0], task.first[1] + 1))
        b = sum(U[r, t].item() for t in range(task.second[0], task.second[1] + 1))
        assert y[r, 0].item() == pytest.approx(a + b if op == "add" else a - b, rel=1e-12, abs=1e-12)


def test_target_shape_error() -> None:
    task = ArithmeticTask("add", 5, (0, 1), (2, 3))
    with pytest.raises(ShapeError, match=r"\(n, 5\)"):
        task.target(torch.zeros(3, 4))
    with pytest.raises(ShapeError):
        task.target(torch.zeros(5))


# ----------------------------------------------------------------------------- rolling


def test_rolling_average_brute_force() -> None:
    S, Y = rolling_average_task(30, 7, low=-1.0, high=3.0, shift=2.0, seed=5)
    assert S.shape == (30, 7, 1) and Y.shape == (30, 7)
    assert S.min() >= -3.0 and S.max() <= 5.0
    for r in range(30):
        total = 0.0
        for j in range(7):
            total += float(S[r, j, 0])
            assert float(Y[r, j]) == pytest.approx(total / (j + 1), rel=1e-6, abs=1e-6)


def test_rolling_argmax_brute_force() -> None:
    S, labels = rolling_argmax_task(200, 10, seed=2)
    assert S.shape == (200, 10, 1) and labels.shape == (200, 10) and labels.dtype == torch.int64
    for r in range(200):
        for j in range(10):
            vals = [float(S[r, t, 0]) for t in range(j + 1)]
            assert int(labels[r, j]) == vals.index(max(vals))
    # final element covers every class 0 .. length-1
    assert set(labels[:, -1].tolist()) == set(range(10))


def test_rolling_argmax_ties_take_first_occurrence() -> None:
    # float16 in [0, 1) has few values, so ties at the maximum occur among 3000 x 10 draws
    S, labels = rolling_argmax_task(3000, 10, seed=0, dtype=torch.float16)
    s = S[:, :, 0]
    n_ties = 0
    for r in range(s.shape[0]):
        vals = s[r].tolist()
        m = max(vals)
        if vals.count(m) > 1:
            n_ties += 1
        assert int(labels[r, -1]) == vals.index(m)
    assert n_ties > 0  # the tie rule was really exercised


def test_rolling_shift_widens() -> None:
    S0, _ = rolling_average_task(1000, 5, seed=1)
    S1, _ = rolling_average_task(1000, 5, shift=3.0, seed=1)
    assert S0.min() >= 0.0 and S0.max() <= 1.0
    assert S1.min() >= -3.0 and S1.max() <= 4.0
    assert S1.min() < -2.5 and S1.max() > 3.5


def test_length_one() -> None:
    S, Y = rolling_average_task(4, 1)
    assert torch.equal(Y[:, 0], S[:, 0, 0])
    _, labels = rolling_argmax_task(4, 1)
    assert torch.equal(labels, torch.zeros(4, 1, dtype=torch.int64))


# ----------------------------------------------------------------------------- spiky series


def test_spiky_defaults_layout() -> None:
    s = spiky_series()
    T = 10_000
    assert s.x.shape == s.y.shape == s.spike.shape == (T,)
    assert s.n_train == 7000 and s.train.shape == (7000,) and s.test.shape == (3000,)
    assert torch.equal(torch.cat([s.train, s.test]), s.y)
    train = [r for r in s.regions if r[1] <= 7000]
    test = [r for r in s.regions if r[0] >= 7000]
    assert len(train) == 20 and len(test) == 9 and len(s.regions) == 29
    assert all(stop - start == 100 for start, stop in s.regions)
    assert all(0 <= start and stop <= T for start, stop in s.regions)
    for (_, stop0), (start1, _) in zip(s.regions, s.regions[1:], strict=False):
        assert stop0 <= start1  # sorted and non-overlapping
    mask = torch.zeros(T, dtype=torch.bool)
    for start, stop in s.regions:
        assert not mask[start:stop].any()
        mask[start:stop] = True
    assert torch.equal(mask, s.spike)
    assert int(s.spike.sum()) == 2900
    for t in (0, 1, 4321, T - 1):
        assert float(s.x[t]) == pytest.approx(t * 0.01, rel=1e-6)


def test_spiky_values_brute_force() -> None:
    s = spiky_series(600, 300, n_regions=3, region_length=40, seed=4, dtype=torch.float64)
    assert len(s.regions) == 3 + 2  # round(3 * 300 / 600) = round(1.5) = 2 (half up)
    for t in range(s.y.shape[0]):
        if bool(s.spike[t]):
            x = t * 0.01
            v = 5.0 * (math.sin(2 * x) + math.sin(23 * x) + math.sin(78 * x) + math.sin(100 * x))
            assert float(s.y[t]) == pytest.approx(max(-20.0, min(20.0, v)), abs=1e-9)


def test_spiky_regions_really_spiky_and_cap() -> None:
    s = spiky_series(seed=3)
    y = s.y
    for start, stop in s.regions:
        assert float(y[start:stop].abs().max()) > 3.0
    assert float(y[s.spike].abs().max()) <= 20.0
    outside = y[~s.spike].abs()
    assert float((outside < 3.0).float().mean()) > 0.99
    capped = spiky_series(seed=3, cap=4.0)
    ys = capped.y[capped.spike]
    assert float(ys.abs().max()) == pytest.approx(4.0)
    assert float((ys.abs() == 4.0).float().mean()) > 0.05  # the cap binds
    assert torch.equal(capped.y[~capped.spike], y[~s.spike])  # noise part unchanged


@pytest.mark.parametrize("noise_std", [0.5, 0.2])
def test_spiky_noise_std(noise_std: float) -> None:
    s = spiky_series(noise_std=noise_std, seed=1, dtype=torch.float64)
    resid = (s.y - torch.sin(s.x))[~s.spike]
    assert float(resid.std()) == pytest.approx(noise_std, rel=0.1)
    assert abs(float(resid.mean())) < 0.1 * noise_std


def test_spiky_region_placement_varies() -> None:
    starts = {spiky_series(seed=k).regions[0][0] for k in range(10)}
    assert len(starts) > 5


def test_windows_shapes_and_brute_force() -> None:
    s = spiky_series(50, 20, n_regions=1, region_length=5, seed=2, dtype=torch.float64)
    lookback, horizon = 7, 3
    (S_tr, y_tr), (S_te, y_te) = s.windows(lookback, horizon)
    T = 70
    starts = list(range(T - lookback - horizon + 1))
    train = [t for t in starts if t + lookback + horizon - 1 < 50]
    test = [t for t in starts if t + lookback + horizon - 1 >= 50]
    assert S_tr.shape == (len(train), lookback, 1) and y_tr.shape == (len(train), 1)
    assert S_te.shape == (len(test), lookback, 1) and y_te.shape == (len(test), 1)
    assert len(test) == 20  # every test point is a target exactly once
    for (S, yy), ts in (((S_tr, y_tr), train), ((S_te, y_te), test)):
        for row, t in enumerate(ts):
            assert [float(v) for v in S[row, :, 0]] == [float(s.y[t + q]) for q in range(lookback)]
            assert float(yy[row, 0]) == float(s.y[t + lookback + horizon - 1])
    # test inputs reach back into the train part
    assert float(S_te[0, 0, 0]) == float(s.y[50 - lookback - horizon + 1])


def test_windows_default_horizon() -> None:
    s = _spiky_small()
    (S_tr, y_tr), (S_te, y_te) = s.windows(20)
    assert S_tr.shape == (980, 20, 1) and S_te.shape == (400, 20, 1)
    assert torch.equal(y_tr[:, 0], s.y[20:1000]) and torch.equal(y_te[:, 0], s.test)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call,names",
    [
        (lambda: identity_task(0), ["n", "0"]),
        (lambda: identity_task(True), ["n", "True"]),
        (lambda: identity_task(3.0), ["n", "3.0"]),
        (lambda: identity_task(3, 0), ["dim", "0"]),
        (lambda: identity_task(3, low=1.0, high=1.0), ["low", "high"]),
        (lambda: identity_task(3, low=2.0, high=1.0), ["low", "high"]),
        (lambda: identity_task(3, shift=-1.0), ["shift", "-1.0"]),
        (lambda: identity_task(3, shift=float("inf")), ["shift", "inf"]),
        (lambda: identity_task(3, shift=float("nan")), ["shift", "nan"]),
        (lambda: identity_task(3, low=float("-inf")), ["low", "inf"]),
        (lambda: identity_task(3, seed=-1), ["seed", "-1"]),
        (lambda: identity_task(3, dtype=torch.int64), ["dtype", "int64"]),
        (lambda: shifted_range(0.0, 1.0, -0.5), ["shift", "-0.5"]),
        (lambda: shifted_range(3.0, 1.0, 0.0), ["low", "3.0"]),
        (lambda: addition_task(0), ["n", "0"]),
        (lambda: addition_task(5, 1), ["dim", "1"]),
        (lambda: subtraction_task(5, low=5.0, high=2.0), ["low", "high"]),
        (lambda: subtraction_task(5, shift=-2.0), ["shift", "-2.0"]),
        (lambda: addition_task(5, task_seed=-3), ["task_seed", "-3"]),
        (lambda: ArithmeticTask.random("mul", 10), ["op", "mul"]),
        (lambda: ArithmeticTask.random("add", 1), ["dim", "1"]),
        (lambda: ArithmeticTask.random("add", True), ["dim", "True"]),
        (lambda: ArithmeticTask("div", 5, (0, 1), (1, 2)), ["op", "div"]),
        (lambda: ArithmeticTask("add", 5, (2, 2), (1, 2)), ["first", "(2, 2)"]),
        (lambda: ArithmeticTask("add", 5, (3, 1), (1, 2)), ["first", "(3, 1)"]),
        (lambda: ArithmeticTask("add", 5, (0, 1), (1, 5)), ["second", "(1, 5)"]),
        (lambda: ArithmeticTask("add", 5, (-1, 1), (1, 2)), ["first[0]", "-1"]),
        (lambda: ArithmeticTask("add", 5, [0, 1], (1, 2)), ["first", "[0, 1]"]),
        (lambda: ArithmeticTask("add", 5, (0, 1.0), (1, 2)), ["first[1]", "1.0"]),
        (lambda: ArithmeticTask("add", 5, (0, 1), (1, 2)).sample(0), ["n", "0"]),
        (lambda: ArithmeticTask("add", 5, (0, 1), (1, 2)).sample(3, low=1.0, high=0.0), ["low", "high"]),
        (lambda: rolling_average_task(0), ["n", "0"]),
        (lambda: rolling_average_task(5, 0), ["length", "0"]),
        (lambda: rolling_average_task(5, shift=-0.1), ["shift", "-0.1"]),
        (lambda: rolling_argmax_task(5, False), ["length", "False"]),
        (lambda: rolling_argmax_task(5, low=1.0, high=0.0), ["low", "high"]),
        (lambda: spiky_series(0), ["n_train", "0"]),
        (lambda: spiky_series(100, 0), ["n_test", "0"]),
        (lambda: spiky_series(n_regions=-1), ["n_regions", "-1"]),
        (lambda: spiky_series(region_length=0), ["region_length", "0"]),
        (lambda: spiky_series(amplitude=0.0), ["amplitude", "0.0"]),
        (lambda: spiky_series(cap=-1.0), ["cap", "-1.0"]),
        (lambda: spiky_series(noise_std=-0.5), ["noise_std", "-0.5"]),
        (lambda: spiky_series(step=float("nan")), ["step", "nan"]),
        (lambda: spiky_series(n_regions=71), ["71", "100", "7100", "7000", "train"]),
        (lambda: spiky_series(1000, 150, n_regions=10), ["2", "100", "200", "150", "test"]),
        (lambda: _spiky_small().windows(0), ["lookback", "0"]),
        (lambda: _spiky_small().windows(5, 0), ["horizon", "0"]),
        (lambda: _spiky_small().windows(999, 2), ["lookback", "999", "horizon", "1000"]),
        (lambda: _spiky_small().windows(True), ["lookback", "True"]),
    ],
)
def test_configuration_errors(call, names: list[str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        call()
    msg = str(info.value)
    for name in names:
        assert name in msg, (name, msg)
    assert "pass" in msg  # names the fix


def test_regions_that_just_fit() -> None:
    s = spiky_series(200, 100, n_regions=2, region_length=100, seed=0)  # train fully spiky
    assert s.regions[:2] == ((0, 100), (100, 200))
    assert bool(s.spike[:200].all())
