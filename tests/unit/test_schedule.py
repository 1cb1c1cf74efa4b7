import pytest
import torch

from hpctrain.schedule import apply_lr, lr_at, scaled_lr

# peak 0.4, 10 warmup steps, 110 steps in all: T = 100 decay steps, t = step - 10
PEAK, WARMUP, TOTAL = 0.4, 10, 110


def test_scaled_lr_rules():
    assert scaled_lr(0.1, 8, "none") == 0.1
    assert scaled_lr(0.1, 8, "linear") == pytest.approx(0.8)
    assert scaled_lr(0.1, 16, "sqrt") == pytest.approx(0.4)
    assert scaled_lr(0.1, 1, "linear") == 0.1 and scaled_lr(0.1, 1, "sqrt") == 0.1


def test_scaled_lr_errors():
    with pytest.raises(ValueError, match="linear"):  # names the valid rules
        scaled_lr(0.1, 4, "cubic")
    with pytest.raises(ValueError, match="world_size"):
        scaled_lr(0.1, 0, "linear")


@pytest.mark.parametrize("decay", ["constant", "cosine", "poly"])
def test_warmup_is_linear_and_ends_at_peak(decay):
    assert lr_at(0, PEAK, TOTAL, WARMUP, decay) == pytest.approx(0.04)
    assert lr_at(4, PEAK, TOTAL, WARMUP, decay) == pytest.approx(0.2)
    assert lr_at(9, PEAK, TOTAL, WARMUP, decay) == pytest.approx(0.4)
    assert lr_at(10, PEAK, TOTAL, WARMUP, decay) == pytest.approx(0.4)  # t = 0: decay starts at the peak


def test_no_warmup_starts_at_peak():
    assert lr_at(0, PEAK, TOTAL, 0, "cosine") == pytest.approx(0.4)


def test_constant():
    assert lr_at(100, PEAK, TOTAL, WARMUP, "constant") == 0.4
    assert lr_at(500, PEAK, TOTAL, WARMUP, "constant") == 0.4


def test_cosine():
    assert lr_at(10 + 50, PEAK, TOTAL, WARMUP, "cosine") == pytest.approx(0.2)  # 0.4 * 0.5 * (1 + cos(pi/2))
    # t = 25: 0.4 * 0.5 * (1 + cos(pi/4)) = 0.2 * (1 + 0.70710678) = 0.34142136
    assert lr_at(10 + 25, PEAK, TOTAL, WARMUP, "cosine") == pytest.approx(0.34142136)
    assert lr_at(110, PEAK, TOTAL, WARMUP, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(200, PEAK, TOTAL, WARMUP, "cosine") == pytest.approx(0.0, abs=1e-12)  # stays at the floor
    # with a floor of 0.1 at t = 50: 0.1 + 0.3 * 0.5 = 0.25; at the end: 0.1
    assert lr_at(60, PEAK, TOTAL, WARMUP, "cosine", min_lr=0.1) == pytest.approx(0.25)
    assert lr_at(150, PEAK, TOTAL, WARMUP, "cosine", min_lr=0.1) == pytest.approx(0.1)


def test_poly():
    assert lr_at(60, PEAK, TOTAL, WARMUP, "poly", power=2.0) == pytest.approx(0.1)  # 0.4 * 0.5**2
    assert lr_at(60, PEAK, TOTAL, WARMUP, "poly") == pytest.approx(0.2)  # power 1: linear, 0.4 * 0.5
    assert lr_at(85, PEAK, TOTAL, WARMUP, "poly", power=2.0) == pytest.approx(0.025)  # 0.4 * 0.25**2
    assert lr_at(60, PEAK, TOTAL, WARMUP, "poly", min_lr=0.04, power=2.0) == pytest.approx(0.13)  # .04+.36*.25
    assert lr_at(110, PEAK, TOTAL, WARMUP, "poly", min_lr=0.04) == pytest.approx(0.04)
    assert lr_at(300, PEAK, TOTAL, WARMUP, "poly", min_lr=0.04) == pytest.approx(0.04)


def test_step_decay():
    kw = {"step_size": 30, "gamma": 0.1}
    assert lr_at(10 + 29, PEAK, TOTAL, WARMUP, "step", **kw) == pytest.approx(0.4)
    assert lr_at(10 + 30, PEAK, TOTAL, WARMUP, "step", **kw) == pytest.approx(0.04)
    assert lr_at(10 + 65, PEAK, TOTAL, WARMUP, "step", **kw) == pytest.approx(0.004)
    assert lr_at(5, PEAK, TOTAL, WARMUP, "step", **kw) == pytest.approx(0.24)  # warmup still applies


def test_total_not_beyond_warmup_does_not_divide_by_zero():
    # total_steps == warmup_steps: T = max(1, 0) = 1, so t = 0 gives the peak and t >= 1 the floor
    assert lr_at(10, PEAK, 10, WARMUP, "cosine") == pytest.approx(0.4)
    assert lr_at(11, PEAK, 10, WARMUP, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_at(12, PEAK, 5, WARMUP, "poly") == pytest.approx(0.0)


def test_lr_at_errors():
    with pytest.raises(ValueError, match="step_size"):
        lr_at(20, PEAK, TOTAL, WARMUP, "step")
    with pytest.raises(ValueError, match="step_size"):
        lr_at(0, PEAK, TOTAL, WARMUP, "step", step_size=-3)  # checked even during warmup
    with pytest.raises(ValueError, match="cosine"):  # names the valid decays
        lr_at(20, PEAK, TOTAL, WARMUP, "exponential")
    with pytest.raises(ValueError, match="step must be"):
        lr_at(-1, PEAK, TOTAL, WARMUP, "constant")
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, PEAK, TOTAL, -1, "constant")


def test_apply_lr_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    apply_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
