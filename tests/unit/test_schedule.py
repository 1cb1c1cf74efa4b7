import math

import pytest
import torch

from hpctrain.config import OptimConfig
from hpctrain.optim.schedule import Schedule, apply_lr, lr_at, lr_at_samples, position_from_state, scaled_lr

# peak 0.4, 10 warmup steps, 110 steps in all: T = 100 decay steps, t = step - 10
PEAK, WARMUP, TOTAL = 0.4, 10, 110


def sched(decay="constant", total=TOTAL, warmup=WARMUP, **kw):
    return Schedule(PEAK, total, warmup, decay, **kw)


def by_step(step, peak_lr, total_steps, warmup_steps, decay, min_lr=0.0, power=1.0, step_size=0, gamma=0.1):
    """The by-step rule as hpctrain had it before the schedule followed samples, verbatim: the reference a
    run that never changes its global batch must still match bit for bit."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    t = step - warmup_steps
    total = max(1, total_steps - warmup_steps)
    if decay == "constant":
        return peak_lr
    if decay == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if decay == "poly":
        return min_lr + (peak_lr - min_lr) * (1.0 - min(t, total) / total) ** power
    return peak_lr * gamma ** (t // step_size)


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
    with pytest.raises(ValueError, match="batch"):
        sched(batch=0)
    with pytest.raises(ValueError, match="step must be"):
        lr_at(-1, sched())
    with pytest.raises(ValueError, match="samples seen"):
        lr_at_samples(-1, 32, sched())
    with pytest.raises(ValueError, match="batch"):
        lr_at_samples(0, 0, sched())


def test_schedule_is_frozen():
    with pytest.raises(AttributeError):
        sched().peak_lr = 1.0


def test_from_config_scales_the_peak_for_the_world_size():
    o = OptimConfig(lr=0.1, lr_scaling="linear", warmup_steps=5, decay="step", step_size=7, gamma=0.5,
                    min_lr=0.01, power=2.0)
    assert Schedule.from_config(o, 40, 4, 64) == Schedule(0.4, 40, 5, "step", 0.01, 2.0, 7, 0.5, 64)
    assert Schedule.from_config(OptimConfig(lr=0.1, lr_scaling="sqrt"), 40, 16, 1).peak_lr == pytest.approx(0.4)


# A run that never changes its global batch: the rates of the by-step rule, bit for bit (==, not approx),
# at global batches that are and are not powers of two, over warmup, decay and past the end.
@pytest.mark.parametrize("batch", [1, 32, 48, 96, 7])
@pytest.mark.parametrize("kw", [
    {"decay": "constant"}, {"decay": "cosine"}, {"decay": "cosine", "min_lr": 0.013},
    {"decay": "poly", "power": 2.0, "min_lr": 0.007}, {"decay": "poly", "power": 0.5},
    {"decay": "step", "step_size": 7, "gamma": 0.3},
])
@pytest.mark.parametrize("peak,total,warmup", [(0.4, 110, 10), (0.3 * 3, 97, 13), (0.05 * math.sqrt(3), 50, 0)])
def test_unchanged_batch_is_the_by_step_rule_bit_for_bit(batch, kw, peak, total, warmup):
    s = Schedule(peak, total, warmup, batch=batch, **kw)
    for step in range(total + 20):
        want = by_step(step, peak, total, warmup, **kw)
        assert lr_at_samples(step * batch, batch, s) == want, step
        assert lr_at(step, s) == want, step


# A 2 -> 4 rank resume with optim.lr_scaling = "linear", hand-computed: optim.lr 0.1, 16 samples per rank, so
# the schedule batch is 32 (2 ranks) and the new global batch 64; 10 warmup steps (320 samples), 40 steps
# (1280 samples), cosine to 0.01. After 6 steps (192 samples) the world grows to 4 ranks: peak 0.1 x 4 = 0.4,
# and each update moves the schedule by two of its steps.
AFTER = Schedule(0.4, 40, 10, "cosine", 0.01, batch=32)


def cosine(t_samples):
    return 0.01 + 0.39 * 0.5 * (1 + math.cos(math.pi * t_samples / 960))  # T = 30 steps x 32 = 960 samples


@pytest.mark.parametrize("step,want", [
    (6, 0.4 * 256 / 320),  # 192 seen, 256 once this update is in: 0.32 (by step it would be 0.4 * 7/10)
    (7, 0.4),  # 256 seen, 320 once in: the end of warmup (by step: 0.4 * 8/10)
    (8, 0.4),  # 320 seen: t = 0, the decay starts at the (new) peak
    (9, cosine(64)),  # 384 seen: one new update = two schedule steps into the decay
    (15, cosine(448)),  # 768 seen: t = 448 of 960
    (22, cosine(896)),  # 1216 seen
    (23, 0.01),  # 1280 seen: the schedule's end; the run goes on to step 40 at the floor
    (39, 0.01),
])
def test_world_size_change_follows_samples(step, want):
    seen = 6 * 32 + (step - 6) * 64
    assert lr_at_samples(seen, 64, AFTER) == pytest.approx(want, rel=1e-12)


def test_world_size_change_differs_from_the_by_step_rule():
    """The control: the by-step rule (lr_at at the new peak) gives other rates after the change, so the test
    above would catch a return to it."""
    for step in (6, 7, 9, 15, 23):
        assert lr_at_samples(6 * 32 + (step - 6) * 64, 64, AFTER) != pytest.approx(lr_at(step, AFTER), rel=1e-6)


def test_shrinking_world_mid_warmup():
    """4 -> 2 ranks after 3 steps of 64 (192 samples, schedule batch 64, warmup 5 steps = 320 samples): each
    update of 32 moves the schedule half a step; linear scaling, peak 0.1 x 2 = 0.2."""
    s = Schedule(0.2, 20, 5, "poly", batch=64)
    assert lr_at_samples(192, 32, s) == pytest.approx(0.2 * 224 / 320)
    assert lr_at_samples(288, 32, s) == pytest.approx(0.2)  # 320 once in: the last warmup update
    assert lr_at_samples(320 + 480, 32, s) == pytest.approx(0.2 * (1 - 480 / 960))  # T = 15 x 64 = 960


def test_position_from_state():
    assert position_from_state({"step": 20, "world_size": 4, "batch_size": 16, "samples_seen": 640,
                                "schedule_batch": 32}) == (640, 32)
    # checkpoints from before samples were recorded: step x the global batch they record
    assert position_from_state({"step": 20, "world_size": 2, "batch_size": 16}) == (640, 32)


def test_apply_lr_sets_every_group():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    apply_lr(opt, 0.02)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
