"""The meta-step (backward -> all-reduce -> finite check -> clip -> step), clipping as an optimizer
setting, and the fused skip of non-finite steps."""

import pytest
import torch

from metalearn_cli.errors import ConfigError
from metalearn_cli.metrics import step_record
from metalearn_cli.optim import OPTIMIZERS, ClipParams, meta_step


class _GivenGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p, grad):
        ctx.save_for_backward(grad)
        return p.sum() * 0

    @staticmethod
    def backward(ctx, _):
        return ctx.saved_tensors[0], None


def loss_with_gradient(p: torch.nn.Parameter, grad: list[float], value: float = 1.0) -> torch.Tensor:
    """A loss whose value is ``value`` and whose gradient with respect to ``p`` is ``grad``."""
    return _GivenGradient.apply(p, torch.tensor(grad)) + value


def test_value_clipping_bounds_each_component():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    result = meta_step(loss_with_gradient(p, [5.0, -3.0, 0.1, 0.0]), [p], opt, ClipParams(norm=None, value=0.5))
    assert torch.allclose(p.detach(), torch.tensor([-0.5, 0.5, -0.1, 0.0]))
    assert result.grad_norm == pytest.approx(float(torch.tensor([5.0, -3.0, 0.1]).norm())) and result.skipped == 0


def test_norm_clipping_scales_the_whole_gradient():
    p = torch.nn.Parameter(torch.zeros(2))
    meta_step(loss_with_gradient(p, [3.0, 4.0]), [p], torch.optim.SGD([p], lr=1.0), ClipParams(norm=1.0))
    torch.testing.assert_close(p.detach(), torch.tensor([-0.6, -0.8]))


@pytest.mark.parametrize("clip", ["norm=0.0", "norm=-1", "value=0", "norm=nan", "value=inf"])
def test_a_clip_that_is_not_a_positive_finite_number_is_refused_when_the_optimizer_is_built(clip):
    key, value = clip.split("=")
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ConfigError, match=f"optimizer.clip.{key}"):
        OPTIMIZERS.build({"name": "adam", "clip": {key: float(value)}}, parameters=params)


@pytest.mark.parametrize("loss,grad,quantity", [(float("nan"), 1.0, "loss"), (1.0, float("inf"), "meta-gradient")])
def test_non_finite_values_never_reach_the_weights(loss, grad, quantity):
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    result = meta_step(loss_with_gradient(p, [grad, 0.0], loss), [p], opt, ClipParams())
    assert result.nonfinite == quantity and result.skipped == 1 and torch.equal(p.detach(), torch.zeros(2))
    assert p.grad is None  # nothing left for a later step to apply


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
], ids=["adam", "sgd"])
def test_a_fused_optimizer_skips_a_non_finite_step_on_the_device(make):
    """The CUDA path (fused optimizers, no host sync): a flagged step changes neither the weights nor
    the optimizer's moments or step count, and the next finite step proceeds as if it never happened."""
    def run(steps):
        p = torch.nn.Parameter(torch.ones(3))
        opt = make([p])
        flags = []
        for g, loss in steps:
            result = meta_step(loss_with_gradient(p, g, loss), [p], opt, ClipParams())
            assert result.nonfinite is None  # deferred: the host never looked
            flags.append(float(result.skipped))
        return p.detach(), opt.state_dict()["state"], flags

    good = [([1.0, -2.0, 0.5], 1.0), ([0.3, 0.1, -1.0], 0.9)]
    bad = [([float("nan"), 1.0, 1.0], 1.0), ([1.0, 1.0, 1.0], float("inf"))]
    clean_p, clean_state, _ = run(good)
    p, state, flags = run([good[0], *bad, good[1]])
    assert flags == [0.0, 1.0, 1.0, 0.0]
    assert torch.equal(p, clean_p)
    for k, v in clean_state[0].items():
        assert torch.equal(torch.as_tensor(state[0][k]), torch.as_tensor(v)), k


def test_a_skipped_step_reads_zero_and_says_so():
    out = step_record(torch.tensor(1.0), loss=torch.tensor(float("nan")), grad_norm=torch.tensor(float("inf")))
    assert out["loss"] == 0 and out["grad_norm"] == 0 and out["skipped"] == 1
    out = step_record(torch.tensor(0.0), loss=torch.tensor(2.5))
    assert out["loss"] == 2.5 and out["skipped"] == 0


def test_multistep_decays_at_fractions_of_the_run():
    """RFS's schedule: lr x 0.1 at 60% and 80% of the run."""
    import torch

    from metalearn_cli.optim import build_schedule
    from metalearn_cli.params.optimizers import Schedule, ScheduleParams

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule(ScheduleParams(kind=Schedule.multistep, gamma=0.1, milestones=[0.6, 0.8]), optimizer, 100)
    factors = [schedule.lr_lambdas[0](step) for step in (0, 59, 60, 79, 80, 99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ConfigError, match="milestones"):
        build_schedule(ScheduleParams(kind=Schedule.multistep, milestones=[60.0]), optimizer, 100)
    with pytest.raises(ConfigError, match="kind=multistep needs milestones"):  # else a constant rate, unsaid
        build_schedule(ScheduleParams(kind=Schedule.multistep, milestones=[]), optimizer, 100)


def test_a_warm_up_as_long_as_the_run_is_said(caplog):
    from metalearn_cli.optim import build_schedule
    from metalearn_cli.params.optimizers import ScheduleParams

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with caplog.at_level("WARNING"):
        build_schedule(ScheduleParams(warmup=100), optimizer, 20)
        assert "warmup=100 is not shorter than the stage's 20 steps" in caplog.text and "ends at 20% of it" in caplog.text
        caplog.clear()
        build_schedule(ScheduleParams(warmup=10), optimizer, 20)
        build_schedule(ScheduleParams(warmup=100), optimizer, 1)  # the range check's probe
    assert not caplog.text


# ----------------------------------------------------------------------------- schedules and their checks
def _factors(params, total=100, steps=(0, 10, 50, 99)):
    from metalearn_cli.optim import build_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_schedule(params, optimizer, total)
    return [schedule.lr_lambdas[0](s) for s in steps]


def test_each_schedule_multiplies_the_rate_as_documented():
    import math

    from metalearn_cli.params.optimizers import Schedule, ScheduleParams

    assert _factors(ScheduleParams(kind=Schedule.constant)) == [1.0] * 4
    cosine = _factors(ScheduleParams(kind=Schedule.cosine, min_lr_ratio=0.2), steps=(0, 50, 100))
    assert cosine == pytest.approx([1.0, 0.6, 0.2])
    assert _factors(ScheduleParams(kind=Schedule.step, step_size=10, gamma=0.5), steps=(0, 9, 10, 25)) == [1, 1, 0.5, 0.25]
    warm = _factors(ScheduleParams(kind=Schedule.cosine, warmup=4), steps=(0, 1, 3, 4, 52))
    assert warm[:4] == [0.25, 0.5, 1.0, 1.0]  # linear from 1/warmup, then the cosine from its start
    assert warm[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 48 / 96)))


@pytest.mark.parametrize("bad", [{"warmup": -1}, {"step_size": 0}, {"min_lr_ratio": -0.1}, {"min_lr_ratio": 1.5},
                                 {"gamma": 0.0}, {"milestones": [0.0]}, {"milestones": [0.5, 1.0]}])
def test_a_schedule_out_of_range_is_refused(bad):
    from metalearn_cli.params.optimizers import ScheduleParams

    with pytest.raises(ConfigError, match="optimizer.schedule"):
        _factors(ScheduleParams(**bad))


@pytest.mark.parametrize("edge", [{"warmup": 0}, {"step_size": 1}, {"min_lr_ratio": 0.0}, {"min_lr_ratio": 1.0},
                                  {"milestones": [0.01, 0.99]}])
def test_a_schedule_at_the_edge_of_its_range_is_accepted(edge):
    from metalearn_cli.params.optimizers import ScheduleParams

    assert len(_factors(ScheduleParams(**edge))) == 4


@pytest.mark.parametrize("node,message", [
    ({"name": "adam", "lr": 0.0}, "adam needs lr > 0"), ({"name": "adam", "betas": [0.9]}, "two betas"),
    ({"name": "adam", "betas": [0.9, 1.0]}, "betas in"), ({"name": "adam", "weight_decay": -1.0}, "weight_decay >= 0"),
    ({"name": "sgd", "lr": -1.0}, r"sgd needs lr > 0 \(got lr=-1.0\)"), ({"name": "sgd", "momentum": -0.5}, "momentum >= 0"),
    ({"name": "sgd", "weight_decay": -1.0}, "weight_decay >= 0"),
    ({"name": "sgd", "schedule": {"gamma": -1.0}}, "optimizer.schedule"),
    ({"name": "adam", "lr": 1e38}, "overflows single precision"),  # Adam's first step is lr / (1 - beta1)
    ({"name": "sgd", "lr": 1e39}, "overflows single precision"),
])
def test_an_optimizer_out_of_range_is_refused_before_the_run_builds_anything(node, message):
    from metalearn_cli.optim import check_optimizer

    with pytest.raises(ConfigError, match=message):
        check_optimizer(node)


def test_the_built_optimizers_carry_their_settings():
    from metalearn_cli.optim import check_optimizer

    p = [torch.nn.Parameter(torch.zeros(1))]
    adam = OPTIMIZERS.build({"name": "adam", "lr": 0.01, "betas": [0.8, 0.9], "weight_decay": 0.1}, parameters=p)
    group = adam.param_groups[0]
    assert isinstance(adam, torch.optim.Adam) and (group["lr"], group["betas"], group["weight_decay"]) == (0.01, (0.8, 0.9), 0.1)
    sgd = OPTIMIZERS.build({"name": "sgd", "lr": 0.2, "momentum": 0.5, "nesterov": True, "weight_decay": 0.0}, parameters=p)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.2, 0.5, True, 0.0)
    plain = OPTIMIZERS.build({"name": "sgd", "momentum": 0.0, "nesterov": True}, parameters=p)
    assert plain.param_groups[0]["nesterov"] is False  # Nesterov needs momentum: dropped, not an error
    assert check_optimizer({"name": "sgd", "lr": 0.3}).lr == 0.3


def test_fused_kernels_are_for_cuda_parameters_only():
    from metalearn_cli.optim import _fused, defers_nonfinite_check

    assert _fused([]) is False and _fused([torch.nn.Parameter(torch.zeros(1))]) is False
    assert not defers_nonfinite_check(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    assert defers_nonfinite_check(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.1, fused=True))


def test_the_step_reports_the_pre_clip_norm_and_clears_old_gradients():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([100.0, 100.0])  # left by someone else: never added to this step's
    result = meta_step(loss_with_gradient(p, [3.0, 4.0]), [p], torch.optim.SGD([p], lr=1.0), ClipParams(norm=1.0))
    assert float(result.grad_norm) == pytest.approx(5.0) and result.skipped == 0 and result.nonfinite is None
    torch.testing.assert_close(p.detach(), torch.tensor([-0.6, -0.8]))
    bad = meta_step(loss_with_gradient(p, [float("inf"), 0.0]), [p], torch.optim.SGD([p], lr=1.0), ClipParams())
    assert isinstance(bad.grad_norm, torch.Tensor) and not torch.isfinite(bad.grad_norm)


def test_a_small_clip_is_accepted_and_applied():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = OPTIMIZERS.build({"name": "sgd", "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "clip": {"value": 0.5, "norm": None}},
                           parameters=[p])
    meta_step(loss_with_gradient(p, [3.0, -0.2]), [p], opt, ClipParams(value=0.5))
    torch.testing.assert_close(p.detach(), torch.tensor([-0.5, 0.2]))


def test_a_step_without_gradients_reports_a_zero_norm():
    p, unused = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.ones(1))
    result = meta_step(loss_with_gradient(p, [1.0, 1.0]), [unused], torch.optim.SGD([unused], lr=1.0), ClipParams())
    assert float(result.grad_norm) == 0.0 and result.nonfinite is None and torch.equal(unused.detach(), torch.ones(1))


def test_a_one_step_cosine_run_ends_at_its_floor_and_messages_name_the_key():
    from metalearn_cli.params.optimizers import Schedule, ScheduleParams

    assert _factors(ScheduleParams(kind=Schedule.cosine, min_lr_ratio=0.1, warmup=1), total=2, steps=(1, 2, 5)) == \
        pytest.approx([1.0, 0.1, 0.1])
    with pytest.raises(ConfigError, match=r"^optimizer\.schedule needs"):
        _factors(ScheduleParams(gamma=0.0))
    with pytest.raises(ConfigError, match=r"^optimizer\.schedule\.milestones are fractions"):
        _factors(ScheduleParams(milestones=[2.0]))
