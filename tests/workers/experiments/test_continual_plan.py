"""The experiment's rules: the learning-rate choice on validation suites, and the plan's checks."""

from __future__ import annotations

import pytest

from workers.experiments.continual.plan import ExperimentPlan, RateTrial, choose_learning_rate


def test_the_best_new_skill_among_rates_that_keep_general_knowledge() -> None:
    trials = [
        RateTrial(1e-5, new_skill=10.0, general_delta=0.0),
        RateTrial(5e-5, new_skill=30.0, general_delta=-4.0),
        RateTrial(1e-4, new_skill=50.0, general_delta=-9.0),  # learns most, forgets too much
    ]
    assert choose_learning_rate(trials) == 5e-5


def test_ties_go_to_the_better_new_skill_then_general_then_the_smaller_rate() -> None:
    assert choose_learning_rate([RateTrial(1e-5, 20.0, 0.0), RateTrial(1e-4, 25.0, -1.0)]) == 1e-4
    assert choose_learning_rate([RateTrial(1e-5, 20.0, -2.0), RateTrial(1e-4, 20.0, 0.0)]) == 1e-4
    assert choose_learning_rate([RateTrial(1e-5, 20.0, 0.0), RateTrial(1e-4, 20.0, 0.0)]) == 1e-5


def test_when_no_rate_keeps_general_knowledge_the_least_forgetting_wins() -> None:
    assert choose_learning_rate([RateTrial(1e-5, 5.0, -7.0), RateTrial(1e-4, 50.0, -20.0)]) == 1e-5
    with pytest.raises(ValueError):
        choose_learning_rate([])


def test_plan_checks_report_every_problem() -> None:
    with pytest.raises(ValueError) as info:
        ExperimentPlan(skills=("format",), recipes=("auto", "nope"), seeds=0, max_new_tokens={}, lora_rank=0)
    message = str(info.value)
    for part in (
        "recipes: choose from",
        "seeds",
        "max_new_tokens",
        "auto trains with the rates",
        "lora_rank",
    ):
        assert part in message
    plan = ExperimentPlan.quick("format", max_new_tokens={"format": 8})
    assert plan.training_order[-1] == "auto" and plan.seeds == 1


def test_a_later_run_adds_seeds_and_skips_a_grid_it_would_not_use() -> None:
    caps = {"format": 8}
    later = ExperimentPlan(
        skills=("format",), seeds=1, first_seed=2, learning_rates=(5e-5,), max_new_tokens=caps
    )
    assert list(later.seed_range) == [2] and not later.runs_grid
    # Several rates: the grid chooses on seed 0 whichever seeds run; seed 0 at one rate: its stage is reused.
    assert ExperimentPlan(skills=("format",), first_seed=2, max_new_tokens=caps).runs_grid
    assert ExperimentPlan(skills=("format",), learning_rates=(5e-5,), max_new_tokens=caps).runs_grid
    with pytest.raises(ValueError, match="first_seed"):
        ExperimentPlan(skills=("format",), first_seed=-1, max_new_tokens=caps)
