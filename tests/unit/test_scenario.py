"""The demo's traffic plans: phases in order, scaled to the run, options checked."""

from __future__ import annotations

import pytest

from flowscope.scenario import BURST, PAUSED_GROUP, DemoOptions, plan_steps, steady_chunk


def _option(args: tuple[str, ...], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("duration", [60.0, 100.0])
def test_incident_phases_scale_to_the_duration(duration: float) -> None:
    steps = plan_steps(DemoOptions(duration_s=duration, scenario="incident", rate=10, seed=3))
    quarter = duration / 4
    assert [s.at_s for s in steps] == [0.0, quarter, 2 * quarter, 3 * quarter]
    first, _, _, burst = steps
    assert _option(first.load, "--duration") == f"{3 * quarter:g}"
    assert _option(first.load, "--pause-group") == PAUSED_GROUP
    assert (_option(first.load, "--pause-after"), _option(first.load, "--pause-for")) == (
        f"{quarter:g}", f"{quarter:g}")
    assert _option(burst.load, "--seed") == "4"  # flows of their own
    for knob, value in BURST.items():
        assert float(_option(burst.load, f"--{knob.replace('_', '-')}")) >= value


def test_a_higher_failure_knob_survives_the_burst() -> None:
    options = DemoOptions(duration_s=60, scenario="incident",
                          failures=(("permanent_failure", 0.9),))
    burst = plan_steps(options)[-1]
    assert _option(burst.load, "--permanent-failure") == "0.9"


def test_steady_is_one_run_when_bounded_and_chunks_when_not() -> None:
    (only,) = plan_steps(DemoOptions(duration_s=30))
    assert _option(only.load, "--duration") == "30"
    assert plan_steps(DemoOptions()) == []
    first, second = steady_chunk(DemoOptions(), 0, 1), steady_chunk(DemoOptions(), 600, 2)
    assert _option(first.load, "--seed") != _option(second.load, "--seed")


def test_every_bad_option_is_named() -> None:
    problems = DemoOptions(duration_s=-1, scenario="chaos", rate=0,
                           failures=(("transient_failure", 2.0),), dashboard_port=70000
                           ).problems()
    assert len(problems) == 5
    assert any("--scenario 'chaos'" in p for p in problems)
    assert any("--transient-failure 2" in p for p in problems)


def test_with_rabbitmq_a_queue_backlog_phase_comes_before_the_burst() -> None:
    steps = plan_steps(DemoOptions(duration_s=100, scenario="incident", rate=10, seed=3,
                                   rabbitmq=True))
    assert [s.at_s for s in steps] == [0.0, 20.0, 40.0, 60.0, 80.0]
    first, _, _, backlog, burst = steps
    assert _option(first.load, "--pause-group") == PAUSED_GROUP
    assert _option(backlog.load, "--pause-group") == "thumbnailer"
    assert (_option(backlog.load, "--pause-after"), _option(backlog.load, "--duration")) == (
        "0", "20")
    assert 0 < float(_option(backlog.load, "--pause-for")) < 20  # time left to drain
    assert backlog.text.startswith("phase 4/5 queue backlog")
    assert burst.text.startswith("phase 5/5 failure burst")
    assert len({_option(s.load, "--seed") for s in (first, backlog, burst)}) == 3
