"""LAMB and LARS against values worked out by hand with plain floats, then in a real tiny training loop.

Float64 tensors throughout, so the hand arithmetic and the optimizer agree to ~1e-12.
"""

import math

import pytest
import torch

from hpctrain.optim.large_batch import LAMB, LARS
from hpctrain.optim.schedule import Schedule, apply_lr, lr_at


def param(values):
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def step(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()


def close(p, expected):
    assert torch.allclose(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12), p


# ---------------------------------------------------------------- LAMB


def test_lamb_first_step_without_decay_or_eps():
    # m_hat = g, v_hat = g**2, so r = g / |g| = (1, 1); ||p|| = 5, ||r|| = sqrt(2)
    p = param([3.0, 4.0])
    step(LAMB([p], lr=0.1, eps=0.0, weight_decay=0.0), p, [1.0, 2.0])
    shift = 0.1 * 5.0 / math.sqrt(2.0)
    close(p, [3.0 - shift, 4.0 - shift])


def test_lamb_two_steps_with_defaults():
    p = param([3.0, 4.0])
    opt = LAMB([p], lr=0.1)  # betas (0.9, 0.999), eps 1e-6, weight_decay 0.01
    # step 1, g = (1, 2): m = (0.1, 0.2), v = (0.001, 0.004); bias corrections 1 - 0.9 and 1 - 0.999
    step(opt, p, [1.0, 2.0])
    m_hat = [0.1 / 0.1, 0.2 / 0.1]
    v_hat = [0.001 / 0.001, 0.004 / 0.001]
    r = [m_hat[0] / (math.sqrt(v_hat[0]) + 1e-6) + 0.01 * 3.0,
         m_hat[1] / (math.sqrt(v_hat[1]) + 1e-6) + 0.01 * 4.0]
    trust = 5.0 / math.sqrt(r[0] ** 2 + r[1] ** 2)
    p1 = [3.0 - 0.1 * trust * r[0], 4.0 - 0.1 * trust * r[1]]
    close(p, p1)
    # step 2, g = (-1, 0.5): bias corrections 1 - 0.9**2 = 0.19 and 1 - 0.999**2 = 0.001999
    step(opt, p, [-1.0, 0.5])
    m = [0.9 * 0.1 + 0.1 * -1.0, 0.9 * 0.2 + 0.1 * 0.5]
    v = [0.999 * 0.001 + 0.001 * 1.0, 0.999 * 0.004 + 0.001 * 0.25]
    m_hat = [m[0] / 0.19, m[1] / 0.19]
    v_hat = [v[0] / 0.001999, v[1] / 0.001999]
    r = [m_hat[0] / (math.sqrt(v_hat[0]) + 1e-6) + 0.01 * p1[0],
         m_hat[1] / (math.sqrt(v_hat[1]) + 1e-6) + 0.01 * p1[1]]
    trust = math.sqrt(p1[0] ** 2 + p1[1] ** 2) / math.sqrt(r[0] ** 2 + r[1] ** 2)
    close(p, [p1[0] - 0.1 * trust * r[0], p1[1] - 0.1 * trust * r[1]])


def test_lamb_zero_weights_use_trust_ratio_one():
    # ||p|| = 0: r = sign(g) (eps 0, decay of zeros is 0), trust 1, so p = -lr * sign(g)
    p = param([[0.0, 0.0], [0.0, 0.0]])
    step(LAMB([p], lr=0.1, eps=0.0), p, [[1.0, -2.0], [0.5, 4.0]])
    close(p, [[-0.1, 0.1], [-0.1, -0.1]])


def test_lamb_zero_update_leaves_weights_alone():
    # g = 0 and no decay: r = 0 / (0 + eps) = 0, ||r|| = 0, trust 1, nothing moves and nothing is NaN
    p = param([[1.0, 2.0], [3.0, 4.0]])
    step(LAMB([p], lr=0.1, weight_decay=0.0), p, [[0.0, 0.0], [0.0, 0.0]])
    close(p, [[1.0, 2.0], [3.0, 4.0]])


# ---------------------------------------------------------------- LARS


def test_lars_two_steps_matrix_and_bias():
    w = param([[1.0, 2.0], [2.0, 4.0]])  # ||w|| = sqrt(1 + 4 + 4 + 16) = 5
    b = param([1.0, 2.0])
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.001)
    gw = [[0.2, 0.4], [0.4, 0.8]]  # ||gw|| = sqrt(0.04 + 0.16 + 0.16 + 0.64) = 1
    gb = [0.5, 0.5]

    # step 1, matrix: local_lr = 0.001 * 5 / (1 + 0.1 * 5) = 0.005 / 1.5
    #   g' = (gw + 0.1 w) * local_lr = (0.2 w + 0.1 w) * 0.005 / 1.5 = 0.001 w; v = g'; w1 = w - 0.5 v = 0.9995 w
    # step 1, bias (1-D: no trust ratio, no decay): v = gb, b1 = b - 0.5 * 0.5 = (0.75, 1.75)
    w.grad, b.grad = torch.tensor(gw, dtype=torch.float64), torch.tensor(gb, dtype=torch.float64)
    opt.step()
    w1 = [[0.9995, 1.999], [1.999, 3.998]]
    close(w, w1)
    close(b, [0.75, 1.75])

    # step 2, same gradients. ||w1|| = 0.9995 * 5 = 4.9975
    local = 0.001 * 4.9975 / (1.0 + 0.1 * 4.9975)
    v1 = [[0.001, 0.002], [0.002, 0.004]]
    v2 = [[0.9 * v1[i][j] + (gw[i][j] + 0.1 * w1[i][j]) * local for j in range(2)] for i in range(2)]
    # bias: v = 0.9 * 0.5 + 0.5 = 0.95, b2 = b1 - 0.5 * 0.95
    w.grad, b.grad = torch.tensor(gw, dtype=torch.float64), torch.tensor(gb, dtype=torch.float64)
    opt.step()
    close(w, [[w1[i][j] - 0.5 * v2[i][j] for j in range(2)] for i in range(2)])
    close(b, [0.275, 1.275])


def test_lars_zero_weights_use_local_lr_one():
    # ||w|| = 0: local_lr 1, g' = g + 0.1 * 0 = g, w = -0.5 g
    w = param([[0.0, 0.0], [0.0, 0.0]])
    step(LARS([w], lr=0.5, weight_decay=0.1), w, [[1.0, -2.0], [0.0, 3.0]])
    close(w, [[-0.5, 1.0], [0.0, -1.5]])


def test_lars_zero_gradient_uses_local_lr_one():
    # ||g|| = 0: local_lr 1, g' = 0.1 * w, w = w - 0.5 * 0.1 * w = 0.95 w
    w = param([[3.0, 0.0], [0.0, 4.0]])
    step(LARS([w], lr=0.5, weight_decay=0.1), w, [[0.0, 0.0], [0.0, 0.0]])
    close(w, [[2.85, 0.0], [0.0, 3.8]])


def test_params_without_grad_are_skipped():
    a, b = param([[1.0, 2.0], [3.0, 4.0]]), param([[1.0, 2.0], [3.0, 4.0]])
    for opt in (LAMB([a, b], lr=0.1), LARS([a, b], lr=0.1, weight_decay=0.1)):
        step(opt, a, [[1.0, 1.0], [1.0, 1.0]])
        close(b, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("make", [
    lambda ps: LAMB(ps, lr=-1.0), lambda ps: LAMB(ps, betas=(1.0, 0.999)), lambda ps: LAMB(ps, eps=-1.0),
    lambda ps: LAMB(ps, weight_decay=-0.1), lambda ps: LARS(ps, lr=-1.0), lambda ps: LARS(ps, lr=0.1, momentum=1.0),
    lambda ps: LARS(ps, lr=0.1, weight_decay=-0.1), lambda ps: LARS(ps, lr=0.1, trust_coefficient=0.0),
])
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError):
        make([param([1.0])])


# ---------------------------------------------------------------- in a training loop


@pytest.mark.parametrize("make", [
    lambda ps: LAMB(ps, lr=0.05),
    lambda ps: LARS(ps, lr=1.0, weight_decay=1e-4, trust_coefficient=0.02),
])
def test_reduces_a_quadratic_loss_in_a_training_loop(make):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x @ torch.randn(8, 2) + torch.tensor([0.5, -1.0])
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = make(model.parameters())
    losses = []
    steps = 300
    schedule = Schedule(opt.defaults["lr"], steps, warmup_steps=20, decay="cosine")
    for s in range(steps):
        apply_lr(opt, lr_at(s, schedule))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.01 * losses[0], (losses[0], losses[-1])
