"""Knowledge distillation: a student learns from a teacher's softened outputs and the true labels.

Hinton, Vinyals and Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
                      temperature: float, alpha: float) -> torch.Tensor:
    """``alpha * soft + (1 - alpha) * hard``, averaged over every predicted position.

    ``soft`` is KL(softmax(teacher / T) || softmax(student / T)) times T² (so its gradients keep the scale
    of the hard term's as T changes); ``hard`` is the cross-entropy of the student against ``target``.
    Token models' logits ``[B, S, V]`` and targets ``[B, S]`` are flattened to ``[B * S, V]`` and
    ``[B * S]`` as :func:`hpctrain.models.loss_fn` does, so both terms are means per token.

    Args:
        student_logits: ``[..., V]`` logits of the model being trained.
        teacher_logits: ``[..., V]`` logits of the teacher, same shape. The caller computes them under
            ``torch.no_grad()``; they are detached here as well, so no gradient ever reaches the teacher.
        target: ``[...]`` class indices.
        temperature: T > 0; larger T softens both distributions.
        alpha: weight of the soft term, in [0, 1]; 0 is plain cross-entropy.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: ``temperature`` or ``alpha`` out of range, or the logits' shapes differ.
    """
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)
    teacher = teacher_logits.detach().reshape(-1, vocab)
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1),
                    reduction="batchmean") * (t * t)
    hard = F.cross_entropy(student, target.reshape(-1))
    return alpha * soft + (1 - alpha) * hard


def load_teacher(path: str, device: torch.device) -> torch.nn.Module:
    """The distillation teacher: a verified checkpoint, rebuilt from the model config saved in it (a built-in
    name or the user's import path and args); every rank reads the same files, so a bad path fails on every
    rank alike."""
    from pathlib import Path

    from hpctrain import checkpoint

    ckpt, reason = checkpoint.resolve(Path(path))
    if ckpt is None:
        raise checkpoint.CheckpointError(f"distill.teacher {path}: {reason}", agreed=True)
    tensors, state = checkpoint.load(ckpt)
    teacher = checkpoint.rebuild_model(ckpt, state, "distill.teacher").to(device)
    try:
        teacher.load_state_dict(tensors["model.pt"])
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"distill.teacher {ckpt}: its weights do not fit the model it names "
                                         f"({str(e).splitlines()[0]})", agreed=True) from None
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher
