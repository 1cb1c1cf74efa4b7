"""Layer-wise adaptive optimizers for large global batches: LAMB and LARS, written from the papers.

Both scale each parameter tensor's update by a *trust ratio* built from the norms of the weights and of
the update, so that the step size relative to the weights stays the same in every layer however large
the global batch (and so the learning rate) becomes.

Why our own code: ``torch-optimizer`` has had no release since 2021 and ``pytorch-lamb`` none since 2019;
``timm`` has both but brings a large model zoo and its dependencies for two 40-line classes. The norms
and the trust ratio stay on the device (``torch.where``, no ``.item()``), so a step makes no host sync.
Gradients must be dense.

A step takes every tensor's norms in one call to its :class:`Layers` between computing the updates and
applying them: by default each tensor is a whole layer; over sharded optimizer state
(:class:`hpctrain.optim.zero.ShardedLayers`) a tensor is a rank's part of one, and that call is the step's
one all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


def _trust(numerator: torch.Tensor, denominator: torch.Tensor, w_norm: torch.Tensor,
           u_norm: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, or 1 where the weight norm or the update (gradient) norm is zero."""
    ok = (w_norm > 0) & (u_norm > 0)
    return torch.where(ok, numerator / torch.where(ok, denominator, torch.ones_like(denominator)),
                       torch.ones_like(w_norm))


class Layers:
    """How an optimizer sees layers: each tensor it steps is a whole parameter."""

    def ndim(self, t: torch.Tensor) -> int:
        """The number of dimensions of the parameter ``t`` is (or is part of)."""
        return t.ndim

    def norms(self, params: list[torch.Tensor],
              others: list[torch.Tensor]) -> tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]:
        """The 2-norms of the layers of ``params``, and of ``others`` (one per parameter, over the same values:
        its update or gradient)."""
        return [p.norm() for p in params], [o.norm() for o in others]


class LAMB(torch.optim.Optimizer):
    """LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning", Algorithm 2, phi = identity).

    Per parameter tensor ``p`` with gradient ``g`` at step ``t`` (1-based)::

        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g**2
        r = (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps) + weight_decay * p
        p -= lr * (||p|| / ||r||) * r      # trust ratio 1 when ||p|| or ||r|| is 0

    The trust ratio is applied to every tensor, biases included; give biases and norm weights their
    own group with ``weight_decay=0`` if wanted.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator for numerical stability.
        weight_decay: decoupled weight decay, added to the Adam update before the trust ratio.
        layers: how the tensors map onto layers (whole tensors unless the state is sharded).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01, layers: Layers | None = None) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid lr {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.layers = layers or Layers()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Every update is computed (and kept: one copy of the stepped values) before any trust ratio, whose
        # norms all come from one call.
        pending: list[tuple[torch.Tensor, torch.Tensor, float]] = []  # (p, its update, lr)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("LAMB does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                m_hat = m / (1.0 - beta1 ** state["step"])
                v_hat = v / (1.0 - beta2 ** state["step"])
                r = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"] != 0.0:
                    r.add_(p, alpha=group["weight_decay"])
                pending.append((p, r, group["lr"]))
        w_norms, r_norms = self.layers.norms([p for p, _, _ in pending], [r for _, r, _ in pending])
        for (p, r, lr), w_norm, r_norm in zip(pending, w_norms, r_norms, strict=True):
            p.add_(r * _trust(w_norm, r_norm, w_norm, r_norm), alpha=-lr)
        return loss


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017, "Large Batch Training of Convolutional Networks"), SGD with momentum.

    Per parameter tensor ``p`` with gradient ``g``::

        local_lr = trust_coefficient * ||p|| / (||g|| + weight_decay * ||p||)   # 1 when ||p|| or ||g|| is 0
        v = momentum * v + local_lr * (g + weight_decay * p)
        p -= lr * v

    Tensors with ``ndim <= 1`` (biases, normalisation weights) skip both the trust ratio and the weight
    decay, and take plain momentum SGD steps ``v = momentum * v + g``: common practice (MLPerf ResNet-50
    LARS submissions exclude biases and batch-norm parameters), as their norms say little about a layer's scale.

    Args:
        params: parameters or parameter groups.
        lr: global learning rate (usually from a warmup + polynomial-decay schedule).
        momentum: momentum factor.
        weight_decay: L2 penalty folded into the gradient, only for tensors with ``ndim >= 2``.
        trust_coefficient: the paper's eta, how far one step may move a layer relative to its norm.
        layers: how the tensors map onto layers (whole tensors unless the state is sharded).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, layers: Layers | None = None) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid lr {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        if trust_coefficient <= 0.0:
            raise ValueError(f"invalid trust_coefficient {trust_coefficient}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coefficient": trust_coefficient})
        self.layers = layers or Layers()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # (p, its gradient, its group, whether it takes a trust ratio)
        pending: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any], bool]] = []
        for group in self.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                pending.append((p, g, group, self.layers.ndim(p) > 1))
        with_ratio = [(p, g) for p, g, _, ratio in pending if ratio]
        # one call for every tensor's norms (over sharded state: the step's one all-reduce)
        w_norms, g_norms = self.layers.norms([p for p, _ in with_ratio], [g for _, g in with_ratio])
        norms = iter(zip(w_norms, g_norms, strict=True))
        for p, g, group, ratio in pending:
            wd = group["weight_decay"]
            if ratio:
                w_norm, g_norm = next(norms)
                local_lr = _trust(group["trust_coefficient"] * w_norm, g_norm + wd * w_norm, w_norm, g_norm)
                g = (g + wd * p) * local_lr
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(g)
            p.add_(buf, alpha=-group["lr"])
        return loss
