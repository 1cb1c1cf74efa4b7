"""Sharded optimizer state over Horovod: ZeRO stages 1 and 2 (Rajbhandari et al., 2020).

The trainable parameters are laid out in *buckets*: flat fp32 buffers (the parameters become views into
them), filled in reverse registration order, which is roughly the order backward produces gradients, and
padded to a multiple of the world size. Rank ``r`` owns part ``r`` of every bucket: the optimizer (SGD,
AdamW: an ordinary ``torch.optim`` optimizer) steps only those parts, so its state is 1/N of the replicated
one. A step is

    backward -> reduce-scatter each bucket's gradients (average) -> step this rank's parts -> all-gather

On GPUs these are NCCL's reduce-scatter and all-gather. On CPU tensors Horovod's two allocate buffers the
bucket's size (its outputs, Open MPI's temporaries) and were slower than the alternatives, so there the
reduce-scatter is an in-place all-reduce of the bucket of which a rank keeps its piece, and the all-gather
one in-place broadcast per owner (docs/memory.md, "Transient buffers").

Stage 1 reduce-scatters every bucket after backward (each rank holds its whole local gradient until then);
stage 2 starts a bucket's reduce-scatter from a gradient hook as soon as backward has produced the bucket,
and frees the local gradient as soon as its reduce-scatter is done, so no rank holds the whole gradient.
With gradient accumulation the first micro-batches accumulate locally as at stage 0; the reduce-scatter
runs on the last one.

LAMB and LARS scale each layer's update by norms of the whole layer, which a part cuts through:
:class:`ShardedLayers` gives them those norms (one all-reduce per step).

Checkpoints hold the state per parameter (its index in ``model.parameters()`` and the flat range of it a
rank owned), so a checkpoint written at any world size and stage can be read at any other
(:func:`load_pieces`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import horovod.torch as hvd
import torch
from torch import nn

from hpctrain.config import ConfigError
from hpctrain.optim.large_batch import Layers

GATHER_WINDOW = 2  # all-gathers in flight at once: bounds the transient full-bucket buffers
GRAD_WINDOW = 2  # stage 2: reduce-scatters in flight during backward; the oldest is waited for beyond it
# Parameters start, and shards split them, at multiples of this many values: PyTorch's fused update kernels
# round a tensor's vectorised body and its scalar tail differently, so a cut anywhere else would make the
# sharded update differ from the replicated one in the last bit.
ALIGN = 64


@dataclass
class ZeroOptions:
    stage: int
    rank: int
    size: int
    compression: Any = hvd.Compression.none
    backward_passes: int = 1  # gradient accumulation: reduce-scatter after this many backward passes
    bucket_bytes: int = 25 << 20


@dataclass
class Segment:
    """One parameter's place in its bucket."""

    index: int  # position in model.parameters(): the key of its state in a (stage-0) checkpoint
    param: nn.Parameter
    offset: int
    numel: int


@dataclass
class Part:
    """The values of one parameter that this rank owns and steps: ``flat[lo:hi]`` of its bucket."""

    segment: Segment
    lo: int
    hi: int
    values: torch.Tensor  # a view into the bucket: what the optimizer steps


@dataclass
class Bucket:
    segments: list[Segment]
    flat: torch.Tensor  # the parameters (each a view into it), padded to a multiple of ALIGN * world size
    piece: torch.Tensor  # this rank's range of ``flat``: what it reduce-scatters into and all-gathers from
    lo: int  # the piece's range in ``flat``
    hi: int
    parts: list[Part]
    piece_grad: torch.Tensor | None = None  # the averaged gradient of ``piece``
    grad: torch.Tensor | None = None  # the local (not yet averaged) gradient while it is reduce-scattered
    ready: int = 0  # segments whose gradient is in ``grad``
    handle: Any = None  # the reduce-scatter in flight: (handle, compression context)


def layout(params: list[tuple[int, nn.Parameter]], opts: ZeroOptions) -> list[Bucket]:
    """Buckets of at most ``opts.bucket_bytes`` (a larger parameter gets one of its own), the parameters moved
    into them (their values kept)."""
    groups: list[list[tuple[int, nn.Parameter]]] = [[]]
    used = 0
    for index, p in reversed(params):
        size = p.numel() * p.element_size()
        if groups[-1] and used + size > opts.bucket_bytes:
            groups.append([])
            used = 0
        groups[-1].append((index, p))
        used += size
    buckets = []
    for group in groups:
        numel = sum(_aligned(p.numel()) for _, p in group)
        padded = _aligned(-(-numel // opts.size)) * opts.size
        first = group[0][1]
        flat = torch.zeros(padded, dtype=first.dtype, device=first.device)
        segments, offset = [], 0
        for index, p in group:
            n = p.numel()
            flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)  # dist: the all-gather writes the parameters in place
            segments.append(Segment(index, p, offset, n))
            offset += _aligned(n)
        per_rank = padded // opts.size
        lo, hi = opts.rank * per_rank, (opts.rank + 1) * per_rank
        parts = [Part(s, a, c, flat[a:c]) for s in segments
                 for a, c in [(max(lo, s.offset), min(hi, s.offset + s.numel))] if a < c]
        buckets.append(Bucket(segments, flat, flat[lo:hi], lo, hi, parts))
    return buckets


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def check_params(params: list[tuple[int, nn.Parameter]]) -> None:
    kinds = {(p.dtype, p.device) for _, p in params}
    if len(kinds) > 1:
        raise ConfigError(f"optim.zero_stage: needs every trainable parameter in one dtype on one device, the model "
                          f"has {sorted(str(k) for k in kinds)}: cast the model, or use optim.zero_stage = 0")
    if not params:
        raise ConfigError("optim.zero_stage: the model has no trainable parameter")


class ShardedOptimizer:
    """The interface of ``hvd.DistributedOptimizer`` the loop uses (``zero_grad``, ``synchronize``,
    ``skip_synchronize``, ``step``, ``param_groups``, ``state_dict``), over sharded state."""

    def __init__(self, model: nn.Module, make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
                 opts: ZeroOptions) -> None:
        self.opts = opts
        params = [(i, p) for i, p in enumerate(model.parameters()) if p.requires_grad]
        check_params(params)
        self.buckets = layout(params, opts)
        self.parts = [part for b in self.buckets for part in b.parts]
        self.inner = make([part.values for part in self.parts])
        self._passes = {s.index: 0 for b in self.buckets for s in b.segments}
        self._synchronized = False
        self._skip = False
        self._grad_values = 0
        self.peak_grad_bytes = 0  # the most gradient memory held at once (local buckets and averaged pieces)
        for b in self.buckets:
            for s in b.segments:
                s.param.register_post_accumulate_grad_hook(self._hook(b, s))

    # --- what the loop sees ---------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    @property
    def state(self) -> Any:
        return self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=True)
        self._grad_values = 0
        for b in self.buckets:
            b.grad, b.ready, b.handle, b.piece_grad = None, 0, None, None
            for s in b.segments:
                s.param.grad = None
        self._passes = dict.fromkeys(self._passes, 0)
        self._synchronized = False

    def synchronize(self) -> None:
        """Wait until this rank's pieces hold the averaged gradient (buckets not started yet start now)."""
        if self._synchronized:
            return
        for b in self.buckets:
            if b.handle is None:
                self._take_leftovers(b)  # unused parameters (zero gradient) or fewer backward passes than set
                self._launch(b)
                # dist: one at a time: Horovod fuses collectives in flight together, through its fusion buffer,
                # which would hold another copy of every bucket (every rank goes through the buckets in one
                # order, so each waits only for collectives the others have started)
                self._collect(b)
        for b in self.buckets:
            self._collect(b)
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._skip = True
        try:
            yield
        finally:
            self._skip = False

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        if not self._skip:
            self.synchronize()
        self.inner.step()
        self._gather()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Scale the averaged gradient so its global 2-norm is at most ``max_norm``; the norm before. Each
        rank sums the squares of its parts; one all-reduce adds them."""
        pieces = [part.values.grad for part in self.parts if part.values.grad is not None]
        local = torch.stack([g.double().pow(2).sum() for g in pieces]).sum() if pieces else torch.zeros((),
                                                                                                        dtype=torch.float64)
        total = hvd.allreduce(local, op=hvd.Sum, name="hpctrain.zero.norm").sqrt().float()  # dist
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in pieces:
            g.mul_(coef.to(g.device))
        return total

    # --- gradients ------------------------------------------------------------------------------------
    def _hook(self, bucket: Bucket, seg: Segment) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            self._passes[seg.index] += 1
            if self._passes[seg.index] < self.opts.backward_passes:
                return  # accumulating: the gradient stays in p.grad until the last micro-batch
            self._take(bucket, seg)
            if self.opts.stage == 2 and bucket.ready == len(bucket.segments):
                self._launch(bucket)  # dist: overlaps with the rest of backward
                self._collect_done()
        return hook

    def _take(self, bucket: Bucket, seg: Segment) -> None:
        p = seg.param
        if p.grad is None:
            return
        if p.grad.is_sparse:
            raise ConfigError("optim.zero_stage: sparse gradients (nn.Embedding(sparse=True)) are not supported; "
                              "use dense embeddings or optim.zero_stage = 0")
        if bucket.grad is None:
            bucket.grad = torch.zeros_like(bucket.flat)
            self._held(bucket.grad.numel())
        bucket.grad[seg.offset:seg.offset + seg.numel].copy_(p.grad.reshape(-1))
        p.grad = None  # dist: the bucket holds it now; the full per-parameter gradient is not kept
        bucket.ready += 1

    def _take_leftovers(self, bucket: Bucket) -> None:
        for s in bucket.segments:
            if s.param.grad is not None:
                self._take(bucket, s)
        if bucket.grad is None:
            bucket.grad = torch.zeros_like(bucket.flat)
            self._held(bucket.grad.numel())

    def _launch(self, bucket: Bucket) -> None:
        assert bucket.grad is not None
        wire, ctx = self.opts.compression.compress(bucket.grad)
        name = f"hpctrain.zero.grad.{self.buckets.index(bucket)}"
        if wire.is_cuda:
            handle = hvd.reducescatter_async(wire, name=name, op=hvd.Average)  # dist
        else:
            # dist: on CPU tensors Horovod's reduce-scatter allocates its output and Open MPI two temporaries
            # the bucket's size, and takes longer than an in-place all-reduce of the whole bucket, of which
            # this rank then keeps its piece (docs/memory.md, "Transient buffers")
            handle = hvd.allreduce_async_(wire, name=name, op=hvd.Average)
        bucket.handle = (handle, ctx)

    def _collect(self, bucket: Bucket) -> None:
        if bucket.piece_grad is not None or bucket.handle is None:
            return
        handle, ctx = bucket.handle
        out = hvd.synchronize(handle)  # dist
        if out.numel() != bucket.piece.numel():  # the whole bucket, all-reduced
            out = out[bucket.lo:bucket.hi]
        # a copy, not a view: a view of the all-reduced bucket would keep all of it alive
        bucket.piece_grad = torch.empty_like(bucket.piece).copy_(self.opts.compression.decompress(out, ctx))
        for part in bucket.parts:
            part.values.grad = bucket.piece_grad[part.lo - bucket.lo:part.hi - bucket.lo]
        self._held(bucket.piece.numel() - (bucket.grad.numel() if bucket.grad is not None else 0))
        bucket.grad = None

    def _collect_done(self) -> None:
        """Stage 2: free the local gradient of every bucket whose reduce-scatter has finished, and wait for
        the oldest while more than GRAD_WINDOW are in flight (bounds the local gradient held to a few
        buckets; every rank launches the buckets in the same order, so the wait is for one every rank
        has started)."""
        inflight = [b for b in self.buckets if b.handle is not None and b.piece_grad is None]
        for b in list(inflight):
            if hvd.poll(b.handle[0]):
                self._collect(b)
                inflight.remove(b)
        while len(inflight) > GRAD_WINDOW:
            self._collect(inflight.pop(0))

    def _held(self, values: int) -> None:
        """Count gradient values allocated (> 0) or freed (< 0) in the buckets and pieces."""
        self._grad_values += values
        self.peak_grad_bytes = max(self.peak_grad_bytes, self._grad_values * self.buckets[0].flat.element_size())

    # --- parameters -----------------------------------------------------------------------------------
    def _gather(self) -> None:
        """Every rank's updated pieces into every rank's buckets."""
        if not self.buckets[0].flat.is_cuda:
            self._broadcast_pieces()
            return
        pending: deque[tuple[Bucket, int]] = deque()
        for i, b in enumerate(self.buckets):
            pending.append((b, hvd.allgather_async(b.piece, name=f"hpctrain.zero.param.{i}")))  # dist
            if len(pending) >= GATHER_WINDOW:
                done, handle = pending.popleft()
                done.flat.copy_(hvd.synchronize(handle))
        for done, handle in pending:
            done.flat.copy_(hvd.synchronize(handle))

    def _broadcast_pieces(self) -> None:
        """The all-gather on CPU tensors: each owner broadcasts its piece in place into every rank's bucket.
        Horovod's CPU all-gather writes into a new tensor the bucket's size, to be copied into the bucket;
        broadcasts need no buffer and were faster here. On GPUs the all-gather stays: one NCCL call per
        bucket instead of one per rank, its output reused by PyTorch's caching allocator."""
        size = self.opts.size
        handles = []
        for i, b in enumerate(self.buckets):
            per_rank = b.flat.numel() // size
            for owner in range(size):
                piece = b.flat[owner * per_rank:(owner + 1) * per_rank]
                handles.append(hvd.broadcast_async_(piece, root_rank=owner,
                                                    name=f"hpctrain.zero.param.{i}.{owner}"))  # dist
        for handle in handles:
            hvd.synchronize(handle)

    # --- memory ---------------------------------------------------------------------------------------
    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for st in self.inner.state.values() for t in st.values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0)

    # --- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The part of the state that is the same on every rank (hyperparameters); the state itself is in
        :meth:`shard_state`, written by each rank."""
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.inner.param_groups]
        return {"zero": {"stage": self.opts.stage, "world_size": self.opts.size}, "param_groups": groups}

    def shard_state(self) -> dict[str, Any]:
        """This rank's optimizer state per parameter: ``{index: {"start", "end", "state": {key: tensor}}}``
        over the flat range ``[start, end)`` of parameter ``index`` that this rank owns."""
        segments: dict[int, dict[str, Any]] = {}
        for part in self.parts:
            state = self.inner.state.get(part.values)
            if state:
                s = part.segment
                segments[s.index] = {"start": part.lo - s.offset, "end": part.hi - s.offset, "state": state}
        return {"rank": self.opts.rank, "world_size": self.opts.size, "segments": segments}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """From a checkpoint of any stage and world size (see :func:`load_pieces`)."""
        pieces = load_pieces(saved)
        for group, old in zip(self.inner.param_groups, saved.get("param_groups", []), strict=False):
            group.update({k: v for k, v in old.items() if k != "params"})
        for part in self.parts:
            s = part.segment
            state = fill(pieces.get(s.index, []), part.lo - s.offset, part.hi - s.offset, s.index)
            state = {k: (v.to(part.values.device) if isinstance(v, torch.Tensor) and v.dim() > 0 else
                         v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
            if state:
                self.inner.state[part.values] = state
            else:
                self.inner.state.pop(part.values, None)


class ShardedLayers(Layers):
    """LAMB's and LARS's view of layers through this rank's parts: a part has its parameter's ndim and its
    parameter's norms, summed from every rank's squares of its parts by one all-reduce."""

    def __init__(self, buckets: list[Bucket]) -> None:
        # one slot per trainable parameter, alike on every rank: every rank all-reduces the same shape, also
        # a rank that owns no part of some parameters (or of any)
        slots = {s.index: j for j, s in enumerate(s for b in buckets for s in b.segments)}
        self._slots = len(slots)
        self._of = {part.values: (slots[part.segment.index], part.segment.param.ndim)
                    for b in buckets for part in b.parts}
        self._dtype, self._device = buckets[0].flat.dtype, buckets[0].flat.device

    def ndim(self, t: torch.Tensor) -> int:
        return self._of[t][1]

    def norms(self, params: list[torch.Tensor],
              others: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        rows = torch.tensor([self._of[p][0] for p in params], dtype=torch.long, device=self._device)
        squares = torch.zeros(self._slots, 2, dtype=torch.float64, device=self._device)
        if params:
            squares.index_add_(0, rows, torch.stack([torch.stack([p.pow(2).sum(dtype=torch.float64),
                                                                  o.pow(2).sum(dtype=torch.float64)])
                                                     for p, o in zip(params, others, strict=True)]))
        total = hvd.allreduce(squares, op=hvd.Sum, name="hpctrain.zero.layer_norms")  # dist: parts on all ranks
        w, o = total.index_select(0, rows).sqrt().to(self._dtype).unbind(1)
        return list(w.unbind()), list(o.unbind())


Piece = tuple[int, int, dict[str, Any]]  # (start, end, state) over a parameter's flattened values


def load_pieces(saved: dict[str, Any]) -> dict[int, list[Piece]]:
    """A checkpoint's optimizer state as pieces per parameter index, whatever wrote it: a stage-0
    (``torch.optim``) state dict, whose state per parameter is one piece over all of it, or a sharded one,
    with the shard each rank wrote (``saved["shards"]``, attached by the checkpoint loader)."""
    out: dict[int, list[Piece]] = {}
    if "zero" not in saved:
        for index, state in saved.get("state", {}).items():
            numel = max((v.numel() for v in state.values() if isinstance(v, torch.Tensor) and v.dim() > 0), default=0)
            flat = {k: (v.reshape(-1) if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in state.items()}
            out.setdefault(int(index), []).append((0, numel, flat))
        return out
    shards = saved.get("shards")
    if not shards or len(shards) != saved["zero"]["world_size"]:
        raise ValueError(f"sharded optimizer state: {len(shards or [])} shard file(s), the checkpoint was written "
                         f"by {saved['zero']['world_size']} rank(s)")
    for shard in shards:
        for index, seg in shard["segments"].items():
            out.setdefault(int(index), []).append((int(seg["start"]), int(seg["end"]), seg["state"]))
    return out


def fill(pieces: list[Piece], start: int, end: int, index: int) -> dict[str, Any]:
    """The state of parameter ``index`` over ``[start, end)``, cut from the pieces that cover it."""
    out: dict[str, Any] = {}
    covered = 0
    for a, c, state in pieces:
        lo, hi = max(a, start), min(c, end)
        if lo >= hi:
            continue
        covered += hi - lo
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                if k not in out:
                    out[k] = torch.zeros(end - start, dtype=v.dtype)
                out[k][lo - start:hi - start] = v[lo - a:hi - a]
            else:
                out.setdefault(k, v)
    if pieces and covered != end - start:
        raise ValueError(f"optimizer state of parameter {index}: the checkpoint covers {covered} of its "
                         f"{end - start} values")
    return out


def full_state_dict(saved: dict[str, Any], model: nn.Module, param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """A sharded checkpoint's optimizer state as a ``torch.optim`` state dict (for a stage-0 run)."""
    pieces = load_pieces(saved)
    state = {}
    for index, p in enumerate(model.parameters()):
        if index in pieces:
            whole = fill(pieces[index], 0, p.numel(), index)
            state[index] = {k: (v.reshape(p.shape) if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                            for k, v in whole.items()}
    groups = [dict(live, **{k: v for k, v in old.items() if k != "params"})
              for live, old in zip(param_groups, saved.get("param_groups", []), strict=False)] or param_groups
    return {"state": state, "param_groups": groups}


class AgreeingGradScaler(torch.amp.GradScaler):
    """fp16 loss scaling over sharded gradients: a rank sees only its pieces, so an overflow one rank finds is
    made every rank's (one all-reduce of the flags) before any rank decides to step or skip."""

    def _unscale_grads_(self, optimizer: Any, inv_scale: torch.Tensor, found_inf: torch.Tensor,
                        allow_fp16: bool) -> dict[torch.device, torch.Tensor]:
        per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
        for flag in per_device.values():
            flag.copy_(hvd.allreduce(flag.cpu(), op=hvd.Max, name="hpctrain.zero.overflow").to(flag.device))  # dist
        return per_device


def shard_file(rank: int, size: int) -> str:
    return f"optimizer-shard-{rank:05d}-of-{size:05d}.pt"
