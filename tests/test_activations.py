"""Activations: values, derivatives, VJP/JVP, Lipschitz constants, registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _ref import ref_block_max, ref_block_softmax, ref_phi
from hypothesis import given
from hypothesis import strategies as st

from idlkit import activations as acts
from idlkit.activations import (
    BlockMax,
    Blockwise,
    Centered,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    SoftMax,
    Tanh,
    get_activation,
)
from idlkit.errors import ConfigurationError, IdlError, ShapeError

# (instance factory, reference name, leaky slope, expected sup |phi'|, expected CONE)
COMPONENTWISE_CASES = {
    "relu": (ReLU, "relu", 0.0),
    "leaky_relu_0.2": (lambda: LeakyReLU(0.2), "leaky_relu", 0.2),
    "leaky_relu_3": (lambda: LeakyReLU(3.0), "leaky_relu", 3.0),
    "tanh": (Tanh, "tanh", 0.0),
    "sigmoid": (Sigmoid, "sigmoid", 0.0),
    "identity": (Identity, "identity", 0.0),
}
KINKED = {"relu", "leaky_relu_0.2", "leaky_relu_3"}


def _seeded(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# ----------------------------------------------------------------------------- componentwise


@pytest.mark.parametrize("case", sorted(COMPONENTWISE_CASES))
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 5.0, 30.0]),
       n=st.integers(1, 7), m=st.integers(1, 4))
def test_componentwise_value_matches_reference(case, seed, scale, n, m):
    factory, ref, slope = COMPONENTWISE_CASES[case]
    act = factory()
    z = _seeded(seed, n, m, scale=scale)
    expected = ref_phi(ref, slope)(z)
    torch.testing.assert_close(act(z), expected, rtol=1e-12, atol=1e-14)
    # float32 works and agrees too
    torch.testing.assert_close(act(z.float()), expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", sorted(COMPONENTWISE_CASES))
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.3, 1.0, 4.0]))
def test_componentwise_derivative_matches_autograd_and_finite_differences(case, seed, scale):
    factory, ref, slope = COMPONENTWISE_CASES[case]
    act = factory()
    z = _seeded(seed, 6, 3, scale=scale)
    if case in KINKED:  # keep finite differences away from the kink at 0
        z = torch.where(z.abs() < 1e-3, z.sign() * 1e-3 + (z == 0) * 1e-3, z)
    phi = ref_phi(ref, slope)
    zg = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(phi(zg).sum(), zg)
    d = act.derivative(z)
    torch.testing.assert_close(d, g, rtol=1e-10, atol=1e-12)
    h = 1e-6
    fd = (phi(z + h) - phi(z - h)) / (2 * h)
    torch.testing.assert_close(d, fd, rtol=1e-6, atol=1e-7)
    # vjp/jvp of a componentwise map are the entrywise product with phi'
    v = _seeded(seed + 1, 6, 3)
    torch.testing.assert_close(act.vjp(z, v), g * v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(act.jvp(z, v), g * v, rtol=1e-10, atol=1e-12)


def test_relu_derivative_at_zero_follows_torch():
    z = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(torch.relu(z).sum(), z)
    torch.testing.assert_close(ReLU().derivative(z.detach()), g)


@pytest.mark.parametrize("case", sorted(COMPONENTWISE_CASES))
def test_componentwise_lipschitz_constant_is_sup_of_slope(case):
    """``lipschitz`` equals sup |phi(x+h)-phi(x)|/h estimated on a fine grid (independent)."""
    factory, ref, slope = COMPONENTWISE_CASES[case]
    act = factory()
    phi = ref_phi(ref, slope)
    x = torch.linspace(-20, 20, 200_001, dtype=torch.float64)
    h = 1e-7
    est = float(((phi(x + h) - phi(x)) / h).abs().max())
    assert act.lipschitz == pytest.approx(est, rel=1e-5, abs=1e-6)
    assert act.lipschitz_inf == act.lipschitz


@pytest.mark.parametrize("case", sorted(COMPONENTWISE_CASES))
def test_componentwise_is_cone_matches_sampled_nonexpansiveness(case):
    """``is_cone`` iff |phi(u) - phi(v)| <= |u - v| entrywise on random pairs."""
    factory, ref, slope = COMPONENTWISE_CASES[case]
    act = factory()
    u = _seeded(0, 20_000, scale=3.0)
    v = u + _seeded(1, 20_000, scale=0.5)
    ratio = (act(u) - act(v)).abs() / (u - v).abs()
    nonexpansive = bool((ratio <= 1 + 1e-12).all())
    assert act.is_cone == nonexpansive
    assert act.componentwise


def test_leaky_relu_slope_validation():
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ConfigurationError):
            LeakyReLU(bad)
    act = get_activation("leaky_relu", negative_slope=0.3)
    z = torch.tensor([[-2.0], [1.5]], dtype=torch.float64)
    torch.testing.assert_close(act(z), torch.tensor([[-0.6], [1.5]], dtype=torch.float64))


# ----------------------------------------------------------------------------- jacobian helpers


def _full_jacobian(f, z: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``f`` at ``z`` (n, m) as an (n*m, n*m) matrix, by torch autograd."""
    J = torch.autograd.functional.jacobian(f, z)
    return J.reshape(z.numel(), z.numel())


def _check_vjp_jvp(act, ref_fn, z: torch.Tensor, v: torch.Tensor) -> None:
    J = _full_jacobian(ref_fn, z)
    vjp_ref = (J.t() @ v.reshape(-1)).reshape(z.shape)
    jvp_ref = (J @ v.reshape(-1)).reshape(z.shape)
    torch.testing.assert_close(act.vjp(z, v), vjp_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(act.jvp(z, v), jvp_ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- SoftMax


@given(seed=st.integers(0, 2**31 - 1), bs=st.integers(1, 4), L=st.integers(1, 3),
       m=st.integers(1, 3), scale=st.sampled_from([0.5, 2.0, 10.0]))
def test_softmax_value_vjp_jvp(seed, bs, L, m, scale):
    n = bs * L
    act = SoftMax(block_size=bs)
    z = _seeded(seed, n, m, scale=scale)
    v = _seeded(seed + 1, n, m)
    torch.testing.assert_close(act(z), ref_block_softmax(z, bs), rtol=1e-12, atol=1e-14)
    _check_vjp_jvp(act, lambda t: ref_block_softmax(t, bs), z, v)


def test_softmax_default_block_is_whole_state():
    z = _seeded(3, 5, 2)
    torch.testing.assert_close(SoftMax()(z), ref_block_softmax(z, 5))


def test_softmax_bad_block_size():
    with pytest.raises(ShapeError):
        SoftMax(block_size=2)(torch.zeros(5, 1))
    for bad in (0, -1, 1.5):
        with pytest.raises(ConfigurationError):
            SoftMax(block_size=bad)


@given(seed=st.integers(0, 2**31 - 1), bs=st.integers(1, 6),
       scale=st.sampled_from([0.01, 0.3, 1.0, 5.0, 50.0]),
       dscale=st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
def test_softmax_lipschitz_l1_and_linf(seed, bs, scale, dscale):
    act = SoftMax(block_size=bs)
    n = 2 * bs
    u = _seeded(seed, n, 64, scale=scale)
    v = u + _seeded(seed + 7, n, 64, scale=dscale)
    du, ds = (u - v), (act(u) - act(v))
    for k in range(2):  # per block
        blk = slice(k * bs, (k + 1) * bs)
        l1_in = du[blk].abs().sum(dim=0)
        l1_out = ds[blk].abs().sum(dim=0)
        assert bool((l1_out <= l1_in * (1 + 1e-12) + 1e-15).all())
    linf_in = du.abs().amax(dim=0)
    linf_out = ds.abs().amax(dim=0)
    assert bool((linf_out <= 0.5 * linf_in * (1 + 1e-12) + 1e-15).all())


def test_softmax_linf_constant_is_one_half_and_tight():
    act = SoftMax(block_size=2)
    assert act.lipschitz_inf == 0.5
    d = 1e-6
    u = torch.tensor([[d], [-d]], dtype=torch.float64)
    v = torch.zeros(2, 1, dtype=torch.float64)
    ratio = float((act(u) - act(v)).abs().max() / (u - v).abs().max())
    assert ratio > 0.499


def test_softmax_blocks():
    bs = SoftMax(block_size=3).blocks(6)
    assert bs.sizes == (3, 3) and bs.norms == (1.0, 1.0) and bs.gammas == (1.0, 1.0)


# ----------------------------------------------------------------------------- BlockMax


@given(seed=st.integers(0, 2**31 - 1), bs=st.integers(1, 4), L=st.integers(1, 3),
       m=st.integers(1, 3))
def test_blockmax_value_vjp_jvp(seed, bs, L, m):
    n = bs * L
    act = BlockMax(block_size=bs)
    z = _seeded(seed, n, m)  # continuous random values: no ties almost surely
    v = _seeded(seed + 1, n, m)
    torch.testing.assert_close(act(z), ref_block_max(z, bs), rtol=0, atol=0)
    _check_vjp_jvp(act, lambda t: ref_block_max(t, bs), z, v)


@given(seed=st.integers(0, 2**31 - 1), bs=st.integers(1, 5),
       dscale=st.sampled_from([1e-3, 0.1, 1.0, 10.0]))
def test_blockmax_linf_one_lipschitz(seed, bs, dscale):
    act = BlockMax(block_size=bs)
    u = _seeded(seed, 3 * bs, 64)
    v = u + _seeded(seed + 3, 3 * bs, 64, scale=dscale)
    lhs = (act(u) - act(v)).abs().amax(dim=0)
    rhs = (u - v).abs().amax(dim=0)
    assert bool((lhs <= rhs * (1 + 1e-12)).all())
    assert act.lipschitz_inf == 1.0
    bl = act.blocks(3 * bs)
    assert bl.sizes == (bs,) * 3 and bl.norms == (math.inf,) * 3 and bl.gammas == (1.0,) * 3


# ----------------------------------------------------------------------------- Blockwise


def _mixed_blockwise():
    segments = [(3, "tanh"), (4, SoftMax(2)), (2, BlockMax(2)), (2, LeakyReLU(0.1)),
                (1, "sigmoid")]
    phi_tanh, phi_leaky, phi_sig = ref_phi("tanh"), ref_phi("leaky_relu", 0.1), ref_phi("sigmoid")

    def ref(z):
        return torch.cat([phi_tanh(z[0:3]), ref_block_softmax(z[3:7], 2),
                          ref_block_max(z[7:9], 2), phi_leaky(z[9:11]), phi_sig(z[11:12])])

    return Blockwise(segments), ref


@given(seed=st.integers(0, 2**31 - 1), m=st.integers(1, 3))
def test_blockwise_mixed_value_vjp_jvp(seed, m):
    act, ref = _mixed_blockwise()
    z = _seeded(seed, 12, m, scale=2.0)
    z[9:11] = torch.where(z[9:11].abs() < 1e-3, torch.full_like(z[9:11], 0.5), z[9:11])
    v = _seeded(seed + 1, 12, m)
    torch.testing.assert_close(act(z), ref(z), rtol=1e-12, atol=1e-14)
    _check_vjp_jvp(act, ref, z, v)


def test_blockwise_structure_and_errors():
    act, _ = _mixed_blockwise()
    bl = act.blocks(12)
    assert bl.sizes == (1, 1, 1, 2, 2, 2, 1, 1, 1)
    assert bl.n == 12
    assert act.lipschitz_inf == 1.0
    with pytest.raises(ShapeError):
        act(torch.zeros(11, 1))
    with pytest.raises(ShapeError):
        act.blocks(13)
    with pytest.raises(ConfigurationError):
        Blockwise([])
    with pytest.raises(ConfigurationError):
        Blockwise([(0, "relu")])
    with pytest.raises(ConfigurationError):
        Blockwise([(2, act)])


# ----------------------------------------------------------------------------- Centered


@given(seed=st.integers(0, 2**31 - 1))
def test_centered_is_phi_minus_phi_zero(seed):
    z = _seeded(seed, 6, 2, scale=3.0)
    v = _seeded(seed + 1, 6, 2)
    cases = [(Sigmoid(), ref_phi("sigmoid")), (SoftMax(3), lambda t: ref_block_softmax(t, 3)),
             (Tanh(), ref_phi("tanh"))]
    for base, ref in cases:
        c = Centered(base)
        zero = torch.zeros(6, 1, dtype=torch.float64)
        torch.testing.assert_close(c(z), ref(z) - ref(zero), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(c(zero), torch.zeros_like(zero), rtol=0, atol=1e-15)
        torch.testing.assert_close(c.vjp(z, v), base.vjp(z, v))
        torch.testing.assert_close(c.jvp(z, v), base.jvp(z, v))
        assert c.lipschitz_inf == base.lipschitz_inf
    # nesting collapses; 1-D input broadcasts the offset correctly
    assert Centered(Centered(Sigmoid())).base.name == "sigmoid"
    z1 = _seeded(seed, 4)
    torch.testing.assert_close(Centered(Sigmoid())(z1), torch.sigmoid(z1) - 0.5)


def test_centered_method():
    assert ReLU().centered(4).name == "relu"
    assert isinstance(Sigmoid().centered(4), Centered)
    assert isinstance(SoftMax(2).centered(4), Centered)
    # the base-class signature is centered(n): it must work on a Centered map too
    c = Centered(Sigmoid())
    assert c.centered(4) is c


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["relu7", "gelux", "", "softmaxx"])
def test_get_activation_unknown_name(name):
    with pytest.raises(ConfigurationError) as exc:
        get_activation(name)
    assert repr(name) in str(exc.value) or name in str(exc.value)
    assert isinstance(exc.value, IdlError)


def test_get_activation_bad_arguments():
    with pytest.raises(ConfigurationError):
        get_activation("relu", foo=1)
    with pytest.raises(ConfigurationError):
        get_activation(3.0)
    with pytest.raises(ConfigurationError):
        get_activation(ReLU(), negative_slope=0.1)


@pytest.mark.parametrize("act", [ReLU(), LeakyReLU(0.3), Tanh(), Sigmoid(), Identity(),
                                 SoftMax(2), BlockMax(3), Centered(Sigmoid()),
                                 _mixed_blockwise()[0]], ids=repr)
def test_config_round_trip(act):
    again = get_activation(act.config())
    assert type(again) is type(act)
    n = 12 if isinstance(act, Blockwise) else 6
    z = _seeded(5, n, 3)
    torch.testing.assert_close(again(z), act(z), rtol=0, atol=0)


def test_registry_names_resolve():
    for name in acts.ACTIVATIONS:
        assert get_activation(name).name == name
    assert isinstance(get_activation("LeakyReLU"), LeakyReLU)
    assert isinstance(get_activation("leaky-relu"), LeakyReLU)
    np.testing.assert_equal(sorted(acts.ACTIVATIONS), sorted(set(acts.ACTIVATIONS)))
