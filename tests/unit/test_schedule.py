import pytest
import torch

from hpctrain.config import OptimConfig
from hpctrain.schedule import Schedule, apply_lr, lr_at, scaled_lr

# peak 0.4, 10 warmup steps, 110 steps in all: T = 100 decay steps, t = step - 10
PEAK, WARMUP, TOTAL = 0.4, 10, 110


def sched(decay="constant", total=TOTAL, warmup=WARMUP, **kw):
    return Schedule(PEAK, total, warmup, decay, **kw)


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
    assert lr_at(0, sched(decay)) == pytest.approx(0.04)
    assert lr_at(4, sched(decay)) == pytest.approx(0.2)
    assert lr_at(9, sched(decay)) == pytest.approx(0.4)
    assert lr_at(10, sched(decay)) == pytest.approx(0.4)  # t = 0: decay starts at the peak


def test_no_warmup_starts_at_peak():
    assert lr_at(0, sched("cosine", warmup=0)) == pytest.approx(0.4)


def test_constant():
    assert lr_at(100, sched()) == 0.4
    assert lr_at(500, sched()) == 0.4


def test_cosine():
    assert lr_at(10 + 50, sched("cosine")) == pytest.approx(0.2)  # 0.4 * 0.5 * (1 + cos(pi/2))
    # t = 25: 0.4 * 0.5 * (1 + cos(pi/4)) = 0.2 * (1 + 0.70710678) = 0.34142136
    assert lr_at(10 + 25, sched("cosine")) == pytest.approx(0.34142136)
    assert lr_at(110, sched("cosine")) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(200, sched("cosine")) == pytest.approx(0.0, abs=1e-12)  # stays at the floor
    # with a floor of 0.1 at t = 50: 0.1 + 0.3 * 0.5 = 0.25; at the end: 0.1
    assert lr_at(60, sched("cosine", min_lr=0.1)) == pytest.approx(0.25)
    assert lr_at(150, sched("cosine", min_lr=0.1)) == pytest.approx(0.1)


def test_poly():
    assert lr_at(60, sched("poly", power=2.0)) == pytest.approx(0.1)  # 0.4 * 0.5**2
    assert lr_at(60, sched("poly")) == pytest.approx(0.2)  # power 1: linear, 0.4 * 0.5
    assert lr_at(85, sched("poly", power=2.0)) == pytest.approx(0.025)  # 0.4 * 0.25**2
    assert lr_at(60, sched("poly", min_lr=0.04, power=2.0)) == pytest.approx(0.13)  # .04+.36*.25
    assert lr_at(110, sched("poly", min_lr=0.04)) == pytest.approx(0.04)
    assert lr_at(300, sched("poly", min_lr=0.04)) == pytest.approx(0.04)


def test_step_decay():
    s = sched("step", step_size=30, gamma=0.1)
    assert lr_at(10 + 29, s) == pytest.approx(0.4)
    assert lr_at(10 + 30, s) == pytest.approx(0.04)
    assert lr_at(10 + 65, s) == pytest.approx(0.004)
    assert lr_at(5, s) == pytest.approx(0.24)  # warmup still applies


def test_total_not_beyond_warmup_does_not_divide_by_zero():
    # total_steps == warmup_steps: T = max(1, 0) = 1, so t = 0 gives the peak and t >= 1 the floor
    assert lr_at(10, sched("cosine", total=10)) == pytest.approx(0.4)
    assert lr_at(11, sched("cosine", total=10)) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(12, sched("poly", total=5)) == pytest.approx(0.0)


def test_schedule_errors():
    with pytest.raises(ValueError, match="step_size"):
        sched("step")
    with pytest.raises(ValueError, match="step_size"):
        sched("step", step_size=-3)
    with pytest.raises(ValueError, match="cosine"):  # names the valid decays
        sched("exponential")
    with pytest.raises(ValueError, match="warmup_steps"):
        sched(warmup=-1)
    with pytest.raises(ValueError, match="step must be"):
        lr_at(-1, sched())


def test_schedule_is_frozen():
    with pytest.raises(AttributeError):
        sched().peak_lr = 1.0


def test_from_config_scales_the_peak_for_the_world_size():
    o = OptimConfig(lr=0.1, lr_scaling="linear", warmup_steps=5, decay="step", step_size=7, gamma=0.5,
                    min_lr=0.01, power=2.0)
    assert Schedule.from_config(o, 40, 4) == Schedule(0.4, 40, 5, "step", 0.01, 2.0, 7, 0.5)
    assert Schedule.from_config(OptimConfig(lr=0.1, lr_scaling="sqrt"), 40, 16).peak_lr == pytest.approx(0.4)


def test_apply_lr_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    apply_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
