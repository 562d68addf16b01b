"""Network-pruning baselines of paper 002 Table 1 (thesis Table 3.2), built for a ReLU MLP.

Paper 002 compares SIM with three parameter-reduction methods on CIFAR-100 ResNets, quoting their
own papers' numbers. CIFAR-100 and those ResNets are not available here, so we build each
method's idea on the MLP teacher that SIM starts from and compare at *matched* parameter
reductions (the one reduction SIM reaches is handed to every baseline). Each is the closest
version we can build, named "-like" in the table:

* **magnitude** (Han et al., 2015; the well-known unstructured baseline): the smallest weights
  by one global threshold, then masked fine-tuning.
* **SSS-like** (Huang & Wang, 2018, sparse structure selection): a scaling factor ``g_j`` on the
  output of every hidden neuron, trained with the cross-entropy plus ``lam ||g||_1`` by a
  proximal (soft-threshold) step on ``g`` after every Adam step (their APG); the neurons with
  the smallest ``|g_j|`` are then removed (rows and columns) down to the target reduction, the
  factors folded into the next layer, and the rest fine-tuned.
* **SPR-like** (Cacciola et al., 2022, structured perspective regularisation): training with
  ``lam sum_j P(w_j)``, ``w_j`` the incoming weights of neuron ``j`` and ``P`` the perspective
  relaxation of ``alpha ||w||^2 + (1 - alpha) z`` over ``z in {0, 1}``, ``|w| <= M z``:
  ``P(w) = alpha ||w||^2 / z* + (1 - alpha) z*`` with ``z* = clip(sqrt(alpha / (1 - alpha)) ||w||,
  ||w||_inf / M, 1)``; then the neurons with the smallest ``||w_j||`` are removed and the rest
  fine-tuned.
* **MLA-like** (Hu et al., 2019, multi-loss-aware channel pruning): neurons removed by the
  magnitude of their incoming times outgoing weights, then fine-tuning on the cross-entropy
  plus a feature-alignment loss (mean squared difference of the kept hidden features and of
  the logits with the teacher's).

"Parameter reduction" is ``1 - nonzeros / teacher parameters`` (weights and biases), as for SIM.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["PRUNERS", "parameters", "nonzeros", "prune"]


def parameters(net: nn.Sequential) -> int:
    return sum(p.numel() for p in net.parameters())


def nonzeros(net: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in net.parameters())


def _linears(net: nn.Sequential) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]


def _batches(m: int, batch_size: int, gen: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(m, generator=gen).split(batch_size))


def _hidden(net: nn.Sequential, X: Tensor) -> tuple[list[Tensor], Tensor]:
    """The post-activation hidden features of every hidden layer, and the logits."""
    feats, h = [], X
    for mod in net:
        h = mod(h)
        if isinstance(mod, nn.ReLU):
            feats.append(h)
    return feats, h


def _masked_finetune(net: nn.Sequential, X: Tensor, y: Tensor, masks: list[Tensor], *, epochs: int,
                     lr: float, seed: int, extra: Callable[[Tensor], Tensor] | None = None) -> None:
    """Adam on the cross-entropy (+ ``extra(idx)``), the zeros of ``masks`` kept at zero."""
    params = [p for lin in _linears(net) for p in (lin.weight, lin.bias)]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in _batches(X.shape[0], 128, gen):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(X[idx]), y[idx])
            if extra is not None:
                loss = loss + extra(idx)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for p, mk in zip(params, masks, strict=True):
                    p.mul_(mk)


def _structure_masks(net: nn.Sequential, keep: list[Tensor]) -> list[Tensor]:
    """Masks of (weight, bias) of every layer when hidden layer ``l`` keeps the neurons ``keep[l]``."""
    lins, masks = _linears(net), []
    for i, lin in enumerate(lins):
        rows = keep[i] if i < len(keep) else torch.ones(lin.out_features, dtype=torch.bool)
        cols = keep[i - 1] if i > 0 else torch.ones(lin.in_features, dtype=torch.bool)
        masks.append((rows[:, None] & cols[None, :]).to(lin.weight.dtype))
        masks.append(rows.to(lin.bias.dtype))
    return masks


def _apply(net: nn.Sequential, masks: list[Tensor]) -> None:
    with torch.no_grad():
        for p, mk in zip((p for lin in _linears(net) for p in (lin.weight, lin.bias)), masks, strict=True):
            p.mul_(mk)


def _kept_parameters(net: nn.Sequential, keep: list[Tensor]) -> int:
    """Parameters left when hidden layer ``l`` keeps the neurons ``keep[l]`` (weights and biases)."""
    lins = _linears(net)
    sizes = [lins[0].in_features] + [int(k.sum()) for k in keep] + [lins[-1].out_features]
    return sum(sizes[i + 1] * (sizes[i] + 1) for i in range(len(lins)))


def _keep_by_score(net: nn.Sequential, scores: list[Tensor], target: float) -> list[Tensor]:
    """Remove the neurons of lowest score (relative to their layer's largest, over all hidden
    layers) until at least ``target`` of the parameters are gone (counted exactly: a removed
    neuron takes its weight row, its bias and its outgoing column); one per layer stays."""
    total = parameters(net)
    # scores relative to their layer's largest: a row norm over 784 inputs and one over 64 are
    # not comparable, and raw scores would empty the narrower layer first (a 1-neuron bottleneck)
    rel = [sc / sc.max().clamp_min(1e-30) for sc in scores]
    flat = sorted((float(s), layer, j) for layer, sc in enumerate(rel) for j, s in enumerate(sc))
    keep = [torch.ones(len(sc), dtype=torch.bool) for sc in scores]
    for _, layer, j in flat:
        if _kept_parameters(net, keep) <= (1 - target) * total:
            break
        if int(keep[layer].sum()) > 1:
            keep[layer][j] = False
    return keep


def magnitude(teacher: nn.Sequential, X: Tensor, y: Tensor, target: float, *, epochs: int, seed: int,
              **_: object) -> nn.Sequential:
    net = copy.deepcopy(teacher)
    params = [p for lin in _linears(net) for p in (lin.weight, lin.bias)]
    k = int(round(target * sum(p.numel() for p in params)))
    thresh = torch.cat([p.detach().abs().flatten() for p in params]).kthvalue(max(k, 1)).values
    masks = [(p.detach().abs() > thresh).to(p.dtype) for p in params]
    _apply(net, masks)
    _masked_finetune(net, X, y, masks, epochs=epochs, lr=1e-3, seed=seed)
    return net


class _Gated(nn.Module):
    """``net`` with a scaling factor on every hidden neuron's output (SSS)."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net
        self.gates = nn.ParameterList([nn.Parameter(torch.ones(lin.out_features, dtype=lin.weight.dtype))
                                       for lin in _linears(net)[:-1]])

    def forward(self, x: Tensor) -> Tensor:
        g = iter(self.gates)
        for mod in self.net:
            x = mod(x)
            if isinstance(mod, nn.ReLU):
                x = x * next(g)
        return x


def sss(teacher: nn.Sequential, X: Tensor, y: Tensor, target: float, *, epochs: int, seed: int,
        lam: float = 0.5, **_: object) -> nn.Sequential:
    gated = _Gated(copy.deepcopy(teacher))
    opt = torch.optim.Adam(gated.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in _batches(X.shape[0], 128, gen):
            opt.zero_grad()
            nn.functional.cross_entropy(gated(X[idx]), y[idx]).backward()
            opt.step()
            with torch.no_grad():  # proximal step of lam ||g||_1 (step size lr)
                for g in gated.gates:
                    g.copy_(torch.sign(g) * (g.abs() - 1e-3 * lam).clamp_min(0))
    net = gated.net
    with torch.no_grad():  # fold the factors into the next layer: relu(z) g = relu(z) then W' = W diag(g)
        for lin, g in zip(_linears(net)[1:], gated.gates, strict=True):
            lin.weight.mul_(g[None, :])
    keep = _keep_by_score(net, [g.detach().abs() for g in gated.gates], target)
    masks = _structure_masks(net, keep)
    _apply(net, masks)
    _masked_finetune(net, X, y, masks, epochs=epochs, lr=1e-3, seed=seed)
    return net


def perspective(w: Tensor, alpha: float, M: float) -> Tensor:
    """SPR's penalty of each row of ``w``: the perspective relaxation of ``alpha ||w||^2 +
    (1 - alpha) z``, ``z in {0, 1}``, ``|w| <= M z`` (closed form in the module docstring)."""
    nrm = w.norm(dim=1)
    z = (math.sqrt(alpha / (1 - alpha)) * nrm).clamp(min=0.0, max=1.0)
    z = torch.maximum(z, w.abs().amax(dim=1) / M).clamp(min=1e-12, max=1.0)
    return alpha * nrm**2 / z + (1 - alpha) * z


def spr(teacher: nn.Sequential, X: Tensor, y: Tensor, target: float, *, epochs: int, seed: int,
        lam: float = 1e-3, alpha: float = 0.3, **_: object) -> nn.Sequential:
    net = copy.deepcopy(teacher)
    hidden = _linears(net)[:-1]
    M = 2 * max(float(lin.weight.detach().abs().max()) for lin in hidden)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in _batches(X.shape[0], 128, gen):
            opt.zero_grad()
            reg = sum(perspective(torch.cat([lin.weight, lin.bias[:, None]], 1), alpha, M).sum()
                      for lin in hidden)
            (nn.functional.cross_entropy(net(X[idx]), y[idx]) + lam * reg).backward()
            opt.step()
    keep = _keep_by_score(net, [lin.weight.detach().norm(dim=1) for lin in hidden], target)
    masks = _structure_masks(net, keep)
    _apply(net, masks)
    _masked_finetune(net, X, y, masks, epochs=epochs, lr=1e-3, seed=seed)
    return net


def mla(teacher: nn.Sequential, X: Tensor, y: Tensor, target: float, *, epochs: int, seed: int,
        beta: float = 1.0, **_: object) -> nn.Sequential:
    net = copy.deepcopy(teacher)
    lins = _linears(net)
    scores = [lins[i].weight.detach().norm(dim=1) * lins[i + 1].weight.detach().norm(dim=0)
              for i in range(len(lins) - 1)]
    keep = _keep_by_score(net, scores, target)
    masks = _structure_masks(net, keep)
    _apply(net, masks)
    with torch.no_grad():
        t_feats, t_logits = _hidden(teacher, X)

    def align(idx: Tensor) -> Tensor:
        feats, logits = _hidden(net, X[idx])
        loss = nn.functional.mse_loss(logits, t_logits[idx])
        for f, tf, k in zip(feats, t_feats, keep, strict=True):
            loss = loss + nn.functional.mse_loss(f[:, k], tf[idx][:, k])
        return beta * loss

    _masked_finetune(net, X, y, masks, epochs=epochs, lr=1e-3, seed=seed, extra=align)
    return net


PRUNERS: dict[str, Callable[..., nn.Sequential]] = {
    "magnitude (Han et al.)": magnitude,
    "SSS-like (neuron factors, l1)": sss,
    "SPR-like (structured perspective)": spr,
    "MLA-like (feature alignment)": mla,
}


def prune(name: str, teacher: nn.Sequential, X: Tensor, y: Tensor, target: float, *, epochs: int = 2,
          seed: int = 0) -> nn.Sequential:
    """Compress ``teacher`` (a ReLU ``nn.Sequential`` MLP) by the method ``name`` of
    :data:`PRUNERS` to about ``target`` parameter reduction."""
    torch.manual_seed(seed)
    return PRUNERS[name](teacher, X.to(next(teacher.parameters()).dtype), y, target, epochs=epochs,
                         seed=seed).eval()
