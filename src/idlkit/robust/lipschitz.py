"""l_inf -> l_inf Lipschitz bounds of the prediction rule (paper 000 eq. 4.8; paper 004).

* ``"inf"``: ``kappa = gamma ||B|| ||C|| / (1 - gamma ||A||) + ||D||`` (eq. 4.8, ``gamma = 1`` for
  CONE maps; ``gamma`` is the activation's l_inf Lipschitz constant, so BLIP maps, non-monotone
  maps and Product gates, ``c_2 gamma_1 + c_1 gamma_2``, are covered).
  Needs ``gamma ||A||_inf < 1``.
* ``"mu"``: ``gamma ||B|| ||C|| / (1 - gamma mu_inf(A)_+) + ||D||`` (paper 004, "input-to-output
  Lipschitz", there with ``gamma = 1`` and no ``D``). Derivation with ``gamma``: the mean-value form
  ``dx = Lam (A dx + B du)``, ``Lam = diag(lam_i)``, ``0 <= lam_i <= gamma`` (monotone map); at the
  row ``i`` where ``|dx_i| = ||dx||_inf``: ``||dx|| (1 - lam_i mu_inf(A)_+) <= lam_i ||B|| ||du||``, and
  ``lam / (1 - lam mu_+)`` increases with ``lam``. Needs a monotone componentwise map (a
  ``Blockwise`` of them too, with ``gamma`` the largest slope) and ``gamma mu_inf(A) < 1``; the
  valley maps (GELU, SiLU, Mish, Hardswish, ELU with ``alpha < 0``: their difference quotients
  ``lam_i`` can be negative, which the derivation excludes) and block maps (SoftMax, BlockMax,
  Product: no diagonal ``Lam``) are refused.
* ``"sensitivity"``: ``||S||_inf`` of the sensitivity matrix (Thm 4.3/4.4), never larger than
  eq. 4.8 and valid whenever ``lambda_pf(Gamma N(A)) < 1``.

The same three for the state, ``u -> x(u)`` (:func:`state_lipschitz_bound`; paper 004's
"input-to-state Lipschitz bound"): ``gamma ||B|| / (1 - gamma ||A||)``,
``gamma ||B|| / (1 - gamma mu_inf(A)_+)`` (the derivation above stops at ``||dx||``) and
``||(I - Gamma N(A))^-1 Gamma N(B)||_inf`` (Thm 4.1/4.2 at ``sigma_u = 1``). The output bounds
are ``||C||`` times the first two plus ``||D||``.

All in float64, dense or sparse matrices (never densified). The differentiable training
penalties (``gamma = 1``) are :func:`idlkit.train.penalties.lipschitz_bound` and
:func:`idlkit.train.penalties.mu_lipschitz_bound`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import wellposed as wp
from .._validation import check_choice
from ..errors import ConfigurationError, WellPosednessError
from ._model import componentwise_maps, model_data

__all__ = ["LipschitzBounds", "lipschitz_bounds", "lipschitz_bound", "state_lipschitz_bound", "MEASURES"]

MEASURES = ("inf", "mu", "sensitivity", "best")
_SLACK = 1 + 64 * float(np.finfo(np.float64).eps)  # outward rounding of a few float64 operations


@dataclass(frozen=True)
class LipschitzBounds:
    """Every applicable l_inf Lipschitz bound of ``u -> y`` (``nan`` where its hypothesis fails).

    Attributes:
        inf: eq. 4.8.
        mu: paper 004's ``mu_inf`` form.
        sensitivity: ``||S||_inf``.
        best: the smallest finite one.
    """

    inf: float
    mu: float
    sensitivity: float

    @property
    def best(self) -> float:
        vals = [v for v in (self.inf, self.mu, self.sensitivity) if math.isfinite(v)]
        return min(vals) if vals else math.nan


def _parts(model: object) -> tuple[float, float, float, object]:
    d = model_data(model)
    return wp.inf_norm(d.B), wp.inf_norm(d.C), wp.inf_norm(d.D), d


def contraction(d: object, measure: str) -> tuple[float, float]:
    """``(gamma, 1 - gamma a)`` of the state bounds: ``a = ||A||_inf`` (``"inf"``, eq. 4.3/4.8,
    ``gamma`` the l_inf Lipschitz constant) or ``a = mu_inf(A)_+`` (``"mu"``, paper 004, ``gamma``
    the largest slope of a monotone componentwise map), so that
    ``||x(u) - x(v)||_inf <= gamma max_i |(B (u - v))_i| / (1 - gamma a)``.

    Raises:
        WellPosednessError: the contraction hypothesis fails (the value is named).
        ConfigurationError: ``"mu"`` with a non-monotone or non-componentwise activation.
    """
    if measure == "inf":
        gamma = float(d.activation.lipschitz_inf)  # type: ignore[attr-defined]
        a = gamma * wp.inf_norm(d.A)  # type: ignore[attr-defined]
        if not a < 1:
            raise WellPosednessError(f"eq. 4.3/4.8 need gamma ||A||_inf < 1, got {a:.6g} (gamma = "
                                     f"{gamma:g}); rescale the model (idlkit.wellposed.rescale) or "
                                     f"use measure='mu' or 'sensitivity'")
        return gamma, 1 - a
    maps = componentwise_maps(d.activation)  # type: ignore[attr-defined]
    if maps is None or not all(a.monotone for a in maps):
        bad = d.activation if maps is None else next(a for a in maps if not a.monotone)  # type: ignore[attr-defined]
        why = ("is not componentwise" if maps is None else
               f"is not monotone (slopes down to {bad.slope_min:.6g})")
        raise ConfigurationError(
            f"the mu_inf Lipschitz bound (paper 004) needs a monotone componentwise activation "
            f"(0 <= phi' <= gamma); {bad!r} {why}. Use measure='inf' (eq. 4.8) or "
            f"measure='sensitivity' (Thm 4.3/4.4), which need only Lipschitz continuity")
    gamma = max(float(a.lipschitz) for a in maps)
    mu = gamma * wp.mu_inf(d.A)  # type: ignore[attr-defined]
    if not mu < 1:
        raise WellPosednessError(f"the mu_inf Lipschitz bound needs gamma mu_inf(A) < 1, got "
                                 f"{mu:.6g}; project A (idlkit.wellposed.project_mu_set) or use "
                                 f"measure='sensitivity'")
    return gamma, 1 - max(mu, 0.0)


def state_lipschitz_bound(model: object, measure: str = "inf") -> float:
    """Upper bound on ``sup ||x(u) - x(v)||_inf / ||u - v||_inf`` (paper 004, input-to-state), float64.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        measure: ``"inf"``: ``gamma ||B||_inf / (1 - gamma ||A||_inf)`` (eq. 4.3 per unit radius;
            paper 004's "Lip" form); ``"mu"``: ``gamma ||B||_inf / (1 - gamma mu_inf(A)_+)`` (paper
            004's theorem with ``osL <= gamma mu_inf(A)_+``; hypotheses: a monotone componentwise map,
            ``0 <= phi' <= gamma``, and ``gamma mu_inf(A) < 1`` -- it covers matrices with
            ``||A||_inf > 1``); ``"sensitivity"``: ``||(I - Gamma N(A))^-1 Gamma N(B)||_inf``
            (Thm 4.1/4.2, needs ``lambda_pf(Gamma N(A)) < 1``); ``"best"``: the smallest applicable.

    Derivation of ``"mu"`` (module docstring): ``dx = Lam (A dx + B du)`` with
    ``0 <= lam_i <= gamma``; at a row ``i`` with ``|dx_i| = ||dx||_inf``,
    ``||dx|| <= lam_i (mu_inf(A) ||dx|| + |(B du)_i|)``, so
    ``||dx|| <= gamma ||B|| ||du|| / (1 - gamma mu_inf(A)_+)``.

    Raises:
        WellPosednessError: as :func:`lipschitz_bound`.
        ConfigurationError: as :func:`lipschitz_bound`.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 8, 2, wellposedness="mu", kappa=0.5, dtype=torch.float64)
        >>> state_lipschitz_bound(model, "mu") >= 0
        True
    """
    check_choice("measure", measure, MEASURES)
    d = model_data(model)
    if d.n == 0:
        return 0.0
    if measure == "best":
        vals = []
        for m in ("inf", "mu", "sensitivity"):
            try:
                vals.append(state_lipschitz_bound(model, m))
            except (WellPosednessError, ConfigurationError):
                pass
        if not vals:
            raise WellPosednessError("no state Lipschitz bound applies: gamma ||A||_inf, gamma "
                                     "mu_inf(A) and lambda_pf(Gamma N(A)) are all >= 1 (or the "
                                     "activation rules the mu form out); rescale or project A")
        return min(vals)
    if measure == "sensitivity":
        from .bounds import state_box_bound

        return float(state_box_bound(model, 1.0).max()) * _SLACK
    gamma, denom = contraction(d, measure)
    return gamma * wp.inf_norm(d.B) / denom * _SLACK


def lipschitz_bound(model: object, measure: str = "inf") -> float:
    """Upper bound on ``sup ||y(u) - y(v)||_inf / ||u - v||_inf`` (eq. 4.8, paper 004, Thm 4.3).

    Args:
        model: an :class:`~idlkit.ImplicitModel`.
        measure: ``"inf"`` (eq. 4.8), ``"mu"`` (paper 004), ``"sensitivity"`` (``||S||_inf``) or
            ``"best"`` (the smallest applicable one).

    Raises:
        WellPosednessError: the measure's contraction hypothesis fails (the value is named).
        ConfigurationError: ``"mu"`` with a non-monotone or non-componentwise activation.

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> L = lipschitz_bound(model)
        >>> u, v = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
        >>> ratio = (model(u) - model(v)).abs().amax(1) / (u - v).abs().amax(1)
        >>> bool((ratio <= L + 1e-9).all())
        True
    """
    check_choice("measure", measure, MEASURES)
    if measure == "best":
        return lipschitz_bounds(model).best
    nB, nC, nD, d = _parts(model)
    if d.n == 0:
        return nD
    if measure == "sensitivity":
        from .sensitivity import sensitivity_matrix

        return wp.inf_norm(sensitivity_matrix(model)) * _SLACK
    gamma, denom = contraction(d, measure)
    return (gamma * nB * nC / denom + nD) * _SLACK


def lipschitz_bounds(model: object) -> LipschitzBounds:
    """All three bounds of :func:`lipschitz_bound`, ``nan`` where a hypothesis fails.

    Args:
        model: an :class:`~idlkit.ImplicitModel`.

    Returns:
        :class:`LipschitzBounds`, one float per measure (``nan`` where it does not apply).

    Examples:
        >>> model = idlkit.ImplicitModel(3, 5, 2, kappa=0.5, dtype=torch.float64)
        >>> lb = lipschitz_bounds(model)
        >>> lb.sensitivity <= lb.inf, lb.inf == lipschitz_bound(model, "inf")
        (True, True)
    """
    vals = {}
    for m in ("inf", "mu", "sensitivity"):
        try:
            vals[m] = lipschitz_bound(model, m)
        except (WellPosednessError, ConfigurationError):
            vals[m] = math.nan
    return LipschitzBounds(**vals)
