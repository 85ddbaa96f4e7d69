"""Schedules: pure functions of the step."""

import math

from imageclf.learn.schedules import cos_anneal, exp_sweep, one_cycle_lr, one_cycle_mom


def test_schedules_by_hand():
    assert cos_anneal(1.0, 0.0, 0.0) == 1.0 and cos_anneal(1.0, 0.0, 1.0) == 0.0
    assert math.isclose(cos_anneal(1.0, 0.0, 0.5), 0.5)
    assert math.isclose(one_cycle_lr(0.0, 1.0), 1 / 25)
    assert math.isclose(one_cycle_lr(0.25, 1.0), 1.0)
    assert math.isclose(one_cycle_lr(1.0, 1.0), 1e-5)
    assert math.isclose(one_cycle_mom(0.25), 0.85) and math.isclose(one_cycle_mom(1.0), 0.95)
    assert math.isclose(exp_sweep(0, 100), 1e-7) and math.isclose(exp_sweep(99, 100), 10.0)
    assert math.isclose(exp_sweep(50, 101, 1e-4, 1.0), 1e-2)
