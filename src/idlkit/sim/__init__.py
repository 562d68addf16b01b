"""State-driven implicit modeling (SIM, paper 002).

``extract_states(baseline, U)`` returns the baseline's pre- and post-activation states and
outputs (paper 002 §3), rescaled by default so that exact matching with ``||A||_inf <= kappa``
is strictly feasible (paper 002 §3, Thm 2.4). The convex row solvers come later (issue 7).
"""

from .states import States, extract_states

__all__ = ["States", "extract_states"]
