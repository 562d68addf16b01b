"""Standard torch networks -> exactly equivalent implicit models (paper 000 §3).

``from_torch(net, example_input)`` traces ``net`` with ``torch.fx`` and returns an
:class:`~idlkit.ImplicitModel` with strictly block upper-triangular ``A`` (state stacked
last layer on top, paper 002 §3) that reproduces ``net`` exactly; ``states(net, u)``
returns the matching pre- and post-activation stacks ``(Z, X)``; ``resnet20`` builds
the CIFAR ResNet-20 reference architecture (paper 000 Fig. 7).
"""

from .assemble import SPARSE_AUTO_THRESHOLD, from_torch, states
from .reference import resnet20

__all__ = ["from_torch", "states", "resnet20", "SPARSE_AUTO_THRESHOLD"]
