"""idlkit._validation: all_finite against isfinite(t).all(); the scalar validators' accept/reject
tables (bool, NaN, inf, numpy scalars, bounds) and their messages (argument, value, fix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from idlkit import wellposed as wp
from idlkit._validation import (
    all_finite,
    check_choice,
    check_int,
    check_kappa,
    check_positive,
    check_probability,
    check_scalar,
    check_tol,
)
from idlkit.errors import ConfigurationError, InputError

_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.sampled_from([3e38, -3e38, float("nan"), float("inf"), -float("inf"), 0.0]))


@settings(max_examples=300, deadline=None)
@given(a=arrays(np.float32, st.integers(0, 40), elements=_values))
def test_all_finite_matches_isfinite(a):
    t = torch.from_numpy(a)
    assert all_finite(t) == bool(torch.isfinite(t).all())
    assert all_finite(t.double()) == bool(torch.isfinite(t.double()).all())


def test_overflowing_sum_of_finite_values_is_finite():
    t = torch.full((10,), 3e38, dtype=torch.float32)  # the sum overflows to inf
    assert not bool(torch.isfinite(t.sum()))
    assert all_finite(t)


def test_integer_and_empty_tensors():
    assert all_finite(torch.arange(5))
    assert all_finite(torch.empty(0))


# ----------------------------------------------------------------------------- scalar validators

_NOT_NUMBERS = [True, False, np.bool_(True), "0.5", None, [0.5], (0.5,), {"k": 1}, 1 + 0j,
                torch.tensor([0.5, 0.5]), np.array([0.5, 0.5])]
_NON_FINITE = [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf"), torch.tensor(math.nan)]


@pytest.mark.parametrize("value", _NOT_NUMBERS)
def test_check_scalar_rejects_non_numbers_naming_the_type(value):
    with pytest.raises(ConfigurationError) as info:
        check_scalar("alpha", value)
    msg = str(info.value)
    assert msg.startswith("alpha must be a finite number")
    assert repr(value) in msg and type(value).__name__ in msg and "pass e.g. alpha=" in msg


@pytest.mark.parametrize("value", _NON_FINITE)
def test_check_scalar_rejects_nan_and_inf(value):
    with pytest.raises(ConfigurationError, match=r"alpha must be a finite number, got .*; pass e\.g\."):
        check_scalar("alpha", value)


@pytest.mark.parametrize("value,want", [
    (0.5, 0.5), (2, 2.0), (np.float32(0.25), 0.25), (np.float64(-3.0), -3.0), (np.int64(7), 7.0),
    (np.int8(-1), -1.0), (np.array(0.75), 0.75), (torch.tensor(1.5, dtype=torch.float64), 1.5),
    (torch.tensor(3), 3.0), (1e300, 1e300),
])
def test_check_scalar_accepts_real_numbers_and_numpy_scalars(value, want):
    out = check_scalar("alpha", value)
    assert type(out) is float and out == want


@pytest.mark.parametrize("value", [1, np.int32(4), np.int64(0), torch.tensor(2)])
def test_check_scalar_int_accepts_integers(value):
    out = check_scalar("n", value, kind=int)
    assert type(out) is int and out == int(value)


@pytest.mark.parametrize("value", [2.0, np.float64(3.0), 1.5, True, "3", None, math.nan])
def test_check_scalar_int_rejects_non_integers(value):
    with pytest.raises(ConfigurationError, match=r"n must be an integer"):
        check_scalar("n", value, kind=int)


# (value, low, high, low_inclusive, high_inclusive, accepted)
_BOUNDS = [
    (0.0, 0, 1, True, True, True), (1.0, 0, 1, True, True, True),
    (0.0, 0, 1, False, True, False), (1.0, 0, 1, True, False, False),
    (0.5, 0, 1, False, False, True), (-1e-12, 0, None, True, True, False),
    (1e9, 0, None, False, True, True), (5.0, None, 5, True, True, True),
    (5.0, None, 5, True, False, False), (-1e9, None, 5, True, False, True),
    (3.0, 3, 3, True, True, True),
]


@pytest.mark.parametrize("value,low,high,lo_inc,hi_inc,ok", _BOUNDS)
def test_check_scalar_bounds_table(value, low, high, lo_inc, hi_inc, ok):
    call = lambda: check_scalar("x", value, low=low, high=high, low_inclusive=lo_inc,  # noqa: E731
                                high_inclusive=hi_inc)
    if ok:
        assert call() == value
        return
    with pytest.raises(ConfigurationError) as info:
        call()
    msg = str(info.value)
    # the message names the argument, the interval, the bad value and a valid example
    assert msg.startswith("x must be a finite number ") and f"got {value!r}" in msg
    ex = float(msg.split("e.g. x=")[1].split()[0].rstrip(";"))
    assert check_scalar("x", ex, low=low, high=high, low_inclusive=lo_inc, high_inclusive=hi_inc) == ex


def test_check_scalar_messages_and_options():
    with pytest.raises(ConfigurationError) as info:
        check_scalar("kappa", 1.5, low=0, high=1, low_inclusive=False, high_inclusive=False,
                     example=0.95, why="a contraction")
    assert str(info.value) == ("kappa must be a finite number in (0, 1), got 1.5; pass kappa in (0, 1), "
                               "e.g. kappa=0.95 (a contraction)")
    assert check_scalar("x", None, allow_none=True) is None
    with pytest.raises(ConfigurationError, match="or None"):
        check_scalar("x", "a", allow_none=True)
    with pytest.raises(InputError, match="x must be"):
        check_scalar("x", -1.0, low=0, error=InputError)
    with pytest.raises(TypeError):
        check_scalar("x", 1.0, kind=complex)


@pytest.mark.parametrize("value", [0.5, 1e-9, 0.999999, np.float32(0.95), np.float64(0.5)])
def test_check_kappa_open_unit_interval(value):
    assert check_kappa(value) == float(value)
    assert wp.check_kappa(value) == float(value)


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 1.5, -0.1, math.nan, math.inf, "0.5", None, True])
def test_check_kappa_rejections_name_value_and_fix(value):
    for check in (check_kappa, wp.check_kappa):
        with pytest.raises(ConfigurationError) as info:
            check(value)
        msg = str(info.value)
        assert msg.startswith("kappa must be a finite number in (0, 1)")
        assert f"got {value!r}" in msg and "pass kappa in (0, 1), e.g. kappa=0.95" in msg


def test_check_kappa_variants():
    # (0, 1]: SIM's bound; (0, inf): a radius or l1 budget
    assert check_kappa(1.0, high_inclusive=True) == 1.0
    with pytest.raises(ConfigurationError, match=r"in \(0, 1\]"):
        check_kappa(1.01, high_inclusive=True)
    assert check_kappa(50.0, high=None) == 50.0
    with pytest.raises(ConfigurationError, match=r"kappa must be a finite number > 0, got 0.0; "
                                                 r"pass kappa > 0, e.g. kappa=1.0"):
        check_kappa(0.0, high=None)
    with pytest.raises(ConfigurationError, match="kappa_output must be"):
        check_kappa(math.inf, "kappa_output", high=None)
    with pytest.raises(ConfigurationError, match=r"\(paper 002 uses 0\.99\)"):
        check_kappa(2, high_inclusive=True, example=0.99, why="paper 002 uses 0.99")


def test_check_positive_and_tol():
    assert check_positive("lr", 1e-3) == 1e-3
    assert check_positive("ridge", 0, allow_zero=True) == 0.0
    assert check_positive("n", np.int64(3), kind=int) == 3
    assert check_positive("x", None, allow_none=True) is None
    for bad in (0, -1.0, math.nan, True, "1"):
        with pytest.raises(ConfigurationError, match="lr must be a finite number > 0"):
            check_positive("lr", bad)
    with pytest.raises(ConfigurationError, match=r"ridge must be a finite number >= 0, got -1"):
        check_positive("ridge", -1, allow_zero=True)
    assert check_tol(0) == 0.0 and check_tol(np.float32(1e-6)) == pytest.approx(1e-6)
    with pytest.raises(ConfigurationError, match=r"tol must be a finite number > 0, got 0"):
        check_tol(0, allow_zero=False)
    with pytest.raises(ConfigurationError, match=r"inner_tol must be .* got -0\.1; pass inner_tol >= 0"):
        check_tol(-0.1, "inner_tol")


def test_check_probability():
    for v in (0, 0.0, 0.5, 1, np.float64(1.0)):
        assert check_probability("p", v) == float(v)
    for v in (-0.01, 1.01, math.nan, True):
        with pytest.raises(ConfigurationError, match=r"p must be a finite number in \[0, 1\]"):
            check_probability("p", v)
    with pytest.raises(ConfigurationError, match=r"dropout must be a finite number in \[0, 1\), got 1"):
        check_probability("dropout", 1, high_inclusive=False)
    with pytest.raises(ConfigurationError, match=r"in \(0, 1\]"):
        check_probability("k", 0.0, low_inclusive=False)


def test_check_int_bounds_and_none():
    assert check_int("n", np.int16(5), 1) == 5
    assert check_int("n", 5, 1, maximum=5) == 5
    assert check_int("n", None, 1, allow_none=True) is None
    with pytest.raises(ConfigurationError,
                       match=r"n must be an integer in \[1, 4\], got 5; pass n in \[1, 4\]"):
        check_int("n", 5, 1, maximum=4)
    with pytest.raises(ConfigurationError, match=r"got None of type NoneType"):
        check_int("n", None, 1)
    with pytest.raises(ConfigurationError, match=r"got True of type bool"):
        check_int("n", True, 0)


def test_check_choice():
    assert check_choice("method", "pf", ("auto", "pf", "neumann")) == "pf"
    assert check_choice("dtype", None, (None, torch.float32)) is None
    assert check_choice("dtype", torch.float32, (None, torch.float32)) is torch.float32
    with pytest.raises(ConfigurationError) as info:
        check_choice("method", "nope", ("auto", "pf", "neumann"))
    assert str(info.value) == ("method must be one of ['auto', 'pf', 'neumann'], got 'nope'; "
                               "pass e.g. method='auto'")
    for bad in (np.array([1, 2]), torch.tensor([1.0, 2.0]), ["auto"]):
        with pytest.raises(ConfigurationError, match="method must be one of"):
            check_choice("method", bad, ("auto", "pf"))
    with pytest.raises(InputError):
        check_choice("x", 3, (1, 2), error=InputError)


# ----------------------------------------------------------------------------- call sites


def test_call_sites_raise_configuration_errors_naming_the_fix():
    from idlkit import compose, synthetic
    from idlkit.sim.fit import SIM
    from idlkit.sim.lasso import constrained_lasso
    from idlkit.train.trainer import Trainer

    cases = [
        (lambda: wp.project_inf_ball(torch.eye(2), 0.0), "kappa must be a finite number > 0"),
        (lambda: wp.project_inf_ball(torch.eye(2), math.nan), "kappa must be"),
        (lambda: wp.project_mu_set(torch.eye(2), math.inf), "gamma must be a finite number"),
        (lambda: SIM(kappa=1.5), r"kappa must be a finite number in \(0, 1\], got 1.5"),
        (lambda: SIM(kappa=True), "of type bool"),
        (lambda: SIM(backend="nope"), "backend must be one of"),
        (lambda: SIM(prune_tol=1.0), r"prune_tol must be a finite number in \[0, 1\)"),
        (lambda: SIM(n_jobs=0), r"n_jobs must be an integer >= 1 or None"),
        (lambda: constrained_lasso(np.eye(2), np.ones(2), kappa=-1.0), "kappa must be a finite number > 0"),
        (lambda: Trainer(lr=0.0), "lr must be a finite number > 0"),
        (lambda: Trainer(epochs=2.0), "epochs must be an integer >= 1"),
        (lambda: synthetic.ArithmeticTask.random("mul"), "op must be one of"),
        (lambda: compose.batch_norm(torch.zeros(2), torch.ones(2), eps=-1.0), "eps must be"),
    ]
    for call, pattern in cases:
        with pytest.raises(ConfigurationError, match=pattern):
            call()
