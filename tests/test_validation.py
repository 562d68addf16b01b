"""all_finite: the fast sum check agrees with isfinite(t).all() on every input."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from idlkit._validation import all_finite

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
