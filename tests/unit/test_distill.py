"""distillation_loss against numbers worked out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpctrain.distill import distillation_loss


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_hand_computed_example():
    # 1 sample, 2 classes, student [1, 0], teacher [0, 1], T = 2, alpha = 0.5, target 0.
    t, alpha = 2.0, 0.5
    p_student = _softmax([1 / t, 0 / t])  # [0.6225, 0.3775]
    p_teacher = _softmax([0 / t, 1 / t])  # [0.3775, 0.6225]
    kl = sum(q * math.log(q / p) for q, p in zip(p_teacher, p_student, strict=True))  # KL(teacher || student)
    soft = kl * t * t
    hard = -math.log(_softmax([1.0, 0.0])[0])  # cross-entropy against class 0: log(1 + e^-1)
    expected = alpha * soft + (1 - alpha) * hard
    # KL = (q1 - q0) * ln(q1 / q0) with q1 = sigmoid(0.5): 0.2449 * 0.5 = 0.12246; soft = 0.48984; hard = 0.31326
    assert expected == pytest.approx(0.5 * 0.489835 + 0.5 * 0.313262, abs=1e-5)

    got = distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]),
                            temperature=t, alpha=alpha)
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 7), torch.randn(5, 7)
    target = torch.randint(0, 7, (5,))
    got = distillation_loss(student, teacher, target, temperature=3.0, alpha=0.0)
    torch.testing.assert_close(got, F.cross_entropy(student, target))


def test_alpha_one_identical_logits_is_zero():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    got = distillation_loss(logits, logits.clone(), torch.zeros(4, dtype=torch.long), temperature=2.0, alpha=1.0)
    assert float(got) == pytest.approx(0.0, abs=1e-6)


def test_token_logits_flattened_like_loss_fn():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    target = torch.randint(0, 5, (2, 3), generator=g)
    got = distillation_loss(student, teacher, target, temperature=1.5, alpha=0.3)
    want = distillation_loss(student.reshape(6, 5), teacher.reshape(6, 5), target.reshape(6), 1.5, 0.3)
    torch.testing.assert_close(got, want)


def test_gradient_reaches_student_only():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)  # even if the caller forgot torch.no_grad()
    distillation_loss(student, teacher, torch.tensor([0, 1, 2]), temperature=2.0, alpha=0.5).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(("temperature", "alpha", "match"), [
    (0.0, 0.5, "temperature"), (-1.0, 0.5, "temperature"), (float("nan"), 0.5, "temperature"),
    (1.0, -0.1, "alpha"), (1.0, 1.1, "alpha"), (1.0, float("nan"), "alpha"),
])
def test_rejects_bad_arguments(temperature, alpha, match):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=match):
        distillation_loss(x, x, torch.tensor([0]), temperature=temperature, alpha=alpha)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.tensor([0]), temperature=1.0, alpha=0.5)
