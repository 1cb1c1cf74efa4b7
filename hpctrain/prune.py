"""Pruning: gradual magnitude pruning during training, and materialising structured pruning into smaller layers.

The schedule is Zhu and Gupta's (2017, "To prune, or not to prune", arXiv:1710.01878): the sparsity rises from
0 at ``start_step`` to the target at ``end_step``, recomputed every ``every_steps`` steps, as
``s_t = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3)`` (fast at first, while there are many redundant weights, slow
at the end), and training goes on with the masks fixed after ``end_step``.

Masks are computed on every rank from its own replica: the replicas are bit-identical (rank 0's initial
state is broadcast and every update uses the all-reduced gradients), and magnitude ranking is deterministic,
so the masks are too (the Trainer checks the replicas and the masks' digests agree at the end). After every
optimizer step the masked weights are set to zero again (the optimizer's momentum would regrow them).

- ``unstructured``: global magnitude over the weights of every Linear and Conv layer (not biases, norms or
  embeddings): the ``sparsity`` fraction with the smallest ``|w|``, ranked across all layers together.
- ``structured``: the same fraction of whole output units in each prunable layer, ranked by L2 norm:
  rows of a Linear and output channels of a Conv2d that feed (through zero-preserving activations) the next
  Linear/Conv2d of an ``nn.Sequential``, the feed-forward rows of a ``TransformerEncoderLayer``, and the
  attention heads of an ``nn.MultiheadAttention``. Rows and channels can be cut out afterwards
  (:func:`materialize`: smaller layers, real speed); heads stay masked (``nn.MultiheadAttention`` fixes its
  inner width to the model width).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpctrain.config import ConfigError, PruneConfig

# Activations with f(0) = 0: a pruned unit then contributes exactly nothing downstream, so cutting it out
# changes no output.
ZERO_PRESERVING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Dropout, nn.Identity)
PRODUCERS = (nn.Linear, nn.Conv2d)


def sparsity_at(cfg: PruneConfig, step: int) -> float | None:
    """The target sparsity after ``step`` if masks are recomputed at that step, else None."""
    if step < cfg.start_step or step > cfg.end_step:
        return None
    if (step - cfg.start_step) % cfg.every_steps and step != cfg.end_step:
        return None
    span = cfg.end_step - cfg.start_step
    done = 1.0 if span == 0 else (step - cfg.start_step) / span
    return cfg.sparsity * (1.0 - (1.0 - done) ** 3)


@dataclass(frozen=True)
class Chain:
    """A prunable unit: ``producer``'s output units feed ``consumer``'s inputs (names in ``model``)."""

    producer: str
    consumer: str


def _sequential_chains(model: nn.Module) -> tuple[list[Chain], list[str]]:
    """Producer -> (zero-preserving activations) -> consumer pairs inside every nn.Sequential, and the reasons
    other producers were not taken (one per layer)."""
    chains, refused = [], []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (name, layer) in enumerate(children):
            if not isinstance(layer, PRODUCERS):
                continue
            j = i + 1
            while j < len(children) and isinstance(children[j][1], ZERO_PRESERVING):
                j += 1
            full = f"{prefix}.{name}" if prefix else name
            if j < len(children) and type(children[j][1]) is type(layer) and getattr(layer, "groups", 1) == 1:
                nxt = children[j][0]
                chains.append(Chain(full, f"{prefix}.{nxt}" if prefix else nxt))
            elif j < len(children):
                refused.append(f"{type(layer).__name__} {full} is followed by {type(children[j][1]).__name__}")
    return chains, refused


def _ffn_chains(model: nn.Module) -> list[Chain]:
    return [Chain(f"{name}.linear1", f"{name}.linear2") for name, m in model.named_modules()
            if isinstance(m, nn.TransformerEncoderLayer)]


def structured_units(model: nn.Module) -> tuple[list[Chain], list[str]]:
    """The rows/channels chains and attention layers structured pruning works on; ConfigError when there is
    none (naming what the model has instead)."""
    chains, refused = _sequential_chains(model)
    chains += _ffn_chains(model)
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    if not chains and not heads:
        kinds = sorted({type(m).__name__ for m in model.modules() if isinstance(m, PRODUCERS)})
        why = f" ({'; '.join(refused[:3])})" if refused else ""
        raise ConfigError("prune.kind: \"structured\" found no layer it can shrink in this model: it handles a "
                          "Linear or Conv2d feeding the next one of its kind in an nn.Sequential (through ReLU-like "
                          "activations), TransformerEncoderLayer feed-forward rows and nn.MultiheadAttention heads; "
                          f"the model has {', '.join(kinds) or 'no Linear or Conv2d'}{why}: use "
                          "prune.kind=\"unstructured\"")
    return chains, heads


def unstructured_weights(model: nn.Module) -> list[str]:
    names = [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d,
                                                                                    nn.Conv2d, nn.Conv3d))]
    if not names:
        raise ConfigError("prune.kind: the model has no Linear or Conv layer whose weights could be pruned")
    return names


def _row_norms(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).float().norm(dim=1)


def _keep_largest(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask keeping all but the ``fraction`` of entries with the smallest scores (stable order on ties)."""
    n = scores.numel()
    drop = min(n - 1, int(round(fraction * n))) if n > 1 else 0
    keep = torch.ones(n, dtype=torch.bool)
    if drop > 0:
        order = torch.sort(scores.reshape(-1), stable=True).indices
        keep[order[:drop]] = False
    return keep.reshape(scores.shape)


class Pruner:
    """The masks of one model, updated along the schedule and applied after every optimizer step."""

    def __init__(self, cfg: PruneConfig, model: nn.Module) -> None:
        self.cfg, self.model = cfg, model
        self.params = dict(model.named_parameters())
        if cfg.kind == "structured":
            self.chains, self.heads = structured_units(model)
        else:
            self.weights = unstructured_weights(model)
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0  # the target the current masks were computed for

    def update(self, step: int) -> None:
        """After the optimizer step ``step`` (1-based): recompute the masks if the schedule says so, then
        zero the masked weights."""
        target = sparsity_at(self.cfg, step)
        if target is not None:
            self.sparsity = target
            self.masks = self._unstructured(target) if self.cfg.kind == "unstructured" else self._structured(target)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            self.params[name].mul_(mask.to(self.params[name].dtype))

    def _unstructured(self, fraction: float) -> dict[str, torch.Tensor]:
        weights = [self.params[n].detach().abs().float().reshape(-1) for n in self.weights]
        flat = torch.cat(weights)
        keep = _keep_largest(flat, fraction)
        out, at = {}, 0
        for name, w in zip(self.weights, weights, strict=True):
            out[name] = keep[at:at + w.numel()].reshape(self.params[name].shape)
            at += w.numel()
        return out

    def _structured(self, fraction: float) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for chain in self.chains:
            w = self.params[f"{chain.producer}.weight"]
            rows = _keep_largest(_row_norms(w), fraction)
            out[f"{chain.producer}.weight"] = rows.reshape(-1, *[1] * (w.dim() - 1)).expand(w.shape).clone()
            if f"{chain.producer}.bias" in self.params:
                out[f"{chain.producer}.bias"] = rows.clone()
        for name in self.heads:
            out.update(self._heads(name, fraction))
        return out

    def _heads(self, name: str, fraction: float) -> dict[str, torch.Tensor]:
        """Mask whole heads: their rows of the q, k and v projections and their columns of the output one."""
        mha = self.model.get_submodule(name)
        assert isinstance(mha, nn.MultiheadAttention)
        if mha.in_proj_weight is None:
            raise ConfigError(f"prune.kind: \"structured\": attention {name} has separate q/k/v projections "
                              "(kdim/vdim differ from the model width), which head pruning does not handle")
        h, e = mha.num_heads, mha.embed_dim
        d = e // h
        w_in, w_out = mha.in_proj_weight.detach(), mha.out_proj.weight.detach()
        per_head = torch.stack([
            w_in.reshape(3, h, d, e)[:, i].float().norm() ** 2 + w_out[:, i * d:(i + 1) * d].float().norm() ** 2
            for i in range(h)])
        keep = _keep_largest(per_head, fraction)  # [h]
        unit = keep.repeat_interleave(d)  # [e]
        out = {f"{name}.in_proj_weight": unit.repeat(3)[:, None].expand(3 * e, e).clone(),
               f"{name}.out_proj.weight": unit[None, :].expand(e, e).clone()}
        if mha.in_proj_bias is not None:
            out[f"{name}.in_proj_bias"] = unit.repeat(3).clone()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"masks": dict(self.masks), "sparsity": self.sparsity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {k: v.to(torch.bool) for k, v in state.get("masks", {}).items()}
        self.sparsity = float(state.get("sparsity", 0.0))

    def digest(self) -> str:
        """SHA-256 of every mask's bits, in name order (the same on every rank, or the masks differ)."""
        h = hashlib.sha256()
        for name in sorted(self.masks):
            h.update(name.encode())
            h.update(self.masks[name].to(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        total = sum(m.numel() for m in self.masks.values())
        return {"kind": self.cfg.kind, "target_sparsity": self.cfg.sparsity, "sparsity": self.sparsity,
                "masked_fraction": pruned / total if total else 0.0, "masks_sha256": self.digest()}


# --- materialisation ---------------------------------------------------------------------------------------

def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


Layer = nn.Linear | nn.Conv2d


def _like(layer: nn.Module, weight_shape: torch.Size, bias: bool) -> Layer:
    """A Linear or Conv2d like ``layer`` but with a weight of ``weight_shape`` (for cut-down layers)."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(weight_shape[1], weight_shape[0], bias=bias)
    assert isinstance(layer, nn.Conv2d)
    conv = nn.Conv2d(weight_shape[1], weight_shape[0], 1, bias=bias, padding_mode=layer.padding_mode)
    conv.kernel_size, conv.stride, conv.padding, conv.dilation = (layer.kernel_size, layer.stride, layer.padding,
                                                                  layer.dilation)
    conv.weight = nn.Parameter(torch.empty(weight_shape))
    return conv


def _layer(model: nn.Module, name: str) -> Layer:
    layer = model.get_submodule(name)
    assert isinstance(layer, PRODUCERS)
    return layer


def _removable_units(model: nn.Module, chain: Chain) -> torch.Tensor:
    """Indices of the producer's output units to keep: those whose weights (and bias) are not all zero."""
    prod = _layer(model, chain.producer)
    alive = _row_norms(prod.weight) > 0
    if prod.bias is not None:
        alive |= prod.bias.detach() != 0
    return torch.nonzero(alive).reshape(-1)


@torch.no_grad()
def materialize(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Cut the all-zero output units (rows, channels) of every prunable chain out of ``model``, in place:
    the producer loses them and the consumer the matching inputs. Outputs stay equal (the units contributed
    exactly zero). Returns ``{producer: (units before, after)}`` for the chains that shrank."""
    chains, _ = _sequential_chains(model)
    chains += _ffn_chains(model)
    shrunk = {}
    for chain in chains:
        prod, cons = _layer(model, chain.producer), _layer(model, chain.consumer)
        keep = _removable_units(model, chain)
        before = int(prod.weight.shape[0])
        if len(keep) == before or len(keep) == 0:
            continue
        new_prod = _like(prod, torch.Size([len(keep), *prod.weight.shape[1:]]), prod.bias is not None)
        new_prod.weight.copy_(prod.weight[keep])
        if prod.bias is not None and new_prod.bias is not None:
            new_prod.bias.copy_(prod.bias[keep])
        new_cons = _like(cons, torch.Size([cons.weight.shape[0], len(keep), *cons.weight.shape[2:]]),
                         cons.bias is not None)
        new_cons.weight.copy_(cons.weight[:, keep])
        if cons.bias is not None and new_cons.bias is not None:
            new_cons.bias.copy_(cons.bias)
        _replace(model, chain.producer, new_prod.to(prod.weight.dtype))
        _replace(model, chain.consumer, new_cons.to(cons.weight.dtype))
        shrunk[chain.producer] = (before, len(keep))
    return shrunk


def resize_like(model: nn.Module, shapes: dict[str, torch.Size]) -> None:
    """Give the Linear/Conv2d layers named in ``shapes`` that weight shape (a materialised model, rebuilt from
    its original architecture before its weights are loaded)."""
    for name, layer in list(named_producers(model)):
        shape = shapes.get(name)
        if shape is not None and shape != layer.weight.shape:
            _replace(model, name, _like(layer, shape, layer.bias is not None))


def named_producers(model: nn.Module) -> Iterator[tuple[str, Layer]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, PRODUCERS))
