"""What one run of the continual-learning experiment does: the recipes it compares, the protocol
they share, and the rule that picks each recipe's learning rate on validation suites.

A recipe is a named way of training a stage: a method of `StageConfig` plus the few settings that
make it that recipe. Everything else (data, steps, batch, full fine-tuning or LoRA, the learning-
rate grid, evaluation) is the plan's and the same for every recipe, so the comparison is like for like.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

RAW_FORMAT = "continual-experiment/2"
LABEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# A learning rate may cost at most this many points of the general validation suite (paired, vs the
# base); the service's gate uses the same tolerance on the general test suite.
GENERAL_TOLERANCE = 5.0


@dataclass(frozen=True)
class Recipe:
    name: str
    method: str  # a StageConfig method ("auto" is resolved per stage by the readiness probe)
    settings: Mapping[str, Any]  # StageConfig keys that make this recipe what it is
    description: str


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "sft",
            "sft",
            {"replay_fraction": 0.0},
            "cross-entropy on the demonstrations (the baseline)",
        ),
        Recipe(
            "sft-replay",
            "sft",
            {"replay_fraction": 0.25},
            "SFT with a quarter of every batch replayed from earlier stages' demonstrations",
        ),
        Recipe(
            "sft_retain",
            "sft_retain",
            {"replay_fraction": 0.25},
            "SFT plus on-policy distillation from the frozen parent on the retention pool, every "
            "step, plus replay",
        ),
        Recipe(
            "sft_restore",
            "sft_restore",
            {"replay_fraction": 0.25},
            "SFT, then the last part of the steps on-policy distillation from the parent alone "
            "(learn, then restore), plus replay",
        ),
        Recipe(
            "sdft",
            "sdft",
            {"replay_fraction": 0.0},
            "the paper's SDFT: one rollout per prompt, per-sequence mean, first 3 tokens masked",
        ),
        Recipe(
            "sdft-dense",
            "sdft",
            {"replay_fraction": 0.0, "loss_normalization": "token", "rollouts_per_prompt": 4},
            "SDFT against the sparse signal: 4 rollouts per prompt, one mean over all tokens",
        ),
        Recipe(
            "auto",
            "auto",
            {},
            "the service's default: the readiness probe picks sdft or the fallback method per stage",
        ),
    )
}
DEFAULT_RECIPES = ("sft", "sft-replay", "sft_retain", "sft_restore", "sdft", "auto")
# auto trains whichever method the probe picks with that method's recipe settings and chosen rate.
AUTO_RECIPE_FOR_METHOD = {
    "sdft": "sdft",
    "sft_retain": "sft_retain",
    "sft_restore": "sft_restore",
    "sft": "sft",
}


@dataclass(frozen=True)
class ExperimentPlan:
    """What one run does. Sized for a 2-core CPU (see `full` and `quick`)."""

    skills: tuple[str, ...]
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    seeds: int = 3
    # Seeds run are first_seed .. first_seed + seeds - 1: a later run adds seeds to an earlier one.
    first_seed: int = 0
    # Tried on the first skill with seed 0; the chosen rate serves the recipe's every stage and seed.
    learning_rates: tuple[float, ...] = (5e-5, 1e-4)
    steps_by_skill: Mapping[str, int] = field(
        default_factory=lambda: {"knowledge": 40, "format": 40, "tool-use": 10}
    )
    batch_size: int = 8
    micro_batch_size: int = 8
    # Tool-use prompts run to ~1,400 tokens: fewer sequences per forward keep memory in bounds.
    micro_batch_by_skill: Mapping[str, int] = field(default_factory=lambda: {"tool-use": 2})
    lora_rank: int | None = None  # None: full fine-tuning
    teacher: str = "frozen"  # SDFT's teacher: kept general knowledge best at 135M (docs/experiments)
    teacher_template: str = "concise"
    # Rollout and evaluation length cap per skill.
    max_new_tokens: Mapping[str, int] = field(default_factory=dict)
    rollout_backend: str = "transformers"
    eval_backend: str = "transformers"
    label: str = "continual"

    def __post_init__(self) -> None:
        problems = []
        if not self.skills:
            problems.append("skills: give at least one skill")
        if len(set(self.skills)) != len(self.skills):
            problems.append("skills: each skill may appear once")
        unknown = [name for name in self.recipes if name not in RECIPES]
        if not self.recipes or unknown:
            problems.append(
                f"recipes: choose from {', '.join(RECIPES)} (got {', '.join(self.recipes) or 'none'})"
            )
        if len(set(self.recipes)) != len(self.recipes):
            problems.append("recipes: each recipe may appear once")
        if "auto" in self.recipes:
            missing = sorted({"sdft", "sft_retain"} - set(self.recipes))
            if missing:
                problems.append(
                    f"recipes: auto trains with the rates chosen for {', '.join(missing)}: add them"
                )
        if self.seeds < 1:
            problems.append(f"seeds: must be at least 1, got {self.seeds}")
        if self.first_seed < 0:
            problems.append(f"first_seed: must be 0 or more, got {self.first_seed}")
        if not self.learning_rates or any(not (lr > 0 and math.isfinite(lr)) for lr in self.learning_rates):
            problems.append("learning_rates: give one or more positive learning rates")
        missing_steps = [skill for skill in self.skills if skill not in self.steps_by_skill]
        if missing_steps or any(n < 1 for n in self.steps_by_skill.values()):
            problems.append(
                f"steps_by_skill: give a positive step count for every skill ({', '.join(self.skills)})"
            )
        missing_caps = [skill for skill in self.skills if skill not in self.max_new_tokens]
        if missing_caps:
            problems.append(f"max_new_tokens: no length cap for {', '.join(missing_caps)}")
        if self.batch_size < 1:
            problems.append(f"batch_size: must be at least 1, got {self.batch_size}")
        if (
            self.lora_rank is not None and self.lora_rank < 1
        ):  # else every stage would fail after the base's scoring
            problems.append(f"lora_rank: must be at least 1, got {self.lora_rank}")
        if not LABEL_PATTERN.fullmatch(self.label):
            problems.append(
                f"label: {self.label!r} must be lower-case letters, digits, '.', '_' or '-' (it names files)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def seed_range(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)

    @property
    def runs_grid(self) -> bool:
        """The grid trains seed 0 at every rate. With one rate there is nothing to choose, and when
        seed 0 is not run its stage would serve nothing: a run of later seeds at one rate skips it."""
        return len(self.learning_rates) > 1 or self.first_seed == 0

    @property
    def training_order(self) -> list[str]:
        """Recipes in the order they run: auto last, after the recipes whose chosen rates it uses."""
        return sorted(self.recipes, key=lambda name: name == "auto")

    @classmethod
    def quick(cls, skill: str, **overrides: Any) -> ExperimentPlan:
        """One skill, one seed, few steps, two recipes and auto: a smoke run of the protocol in minutes."""
        settings: dict[str, Any] = {
            "recipes": ("sft", "sft_retain", "sdft", "auto"),
            "seeds": 1,
            "learning_rates": (1e-4,),
            "steps_by_skill": {skill: 12},
            "label": "continual-quick",
            **overrides,
        }
        return cls(skills=(skill,), **settings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("max_new_tokens", "steps_by_skill", "micro_batch_by_skill"):
            data[key] = dict(getattr(self, key))
        data["recipe_details"] = {name: asdict(RECIPES[name]) for name in self.recipes}
        return data


@dataclass(frozen=True)
class RateTrial:
    """One learning rate of the grid, judged on validation suites."""

    learning_rate: float
    new_skill: float  # the new skill's validation score (points)
    general_delta: float  # the general validation suite's change from the base (points, paired)


def choose_learning_rate(trials: Sequence[RateTrial], tolerance: float = GENERAL_TOLERANCE) -> float:
    """The rate that learns the new skill best among those that keep general knowledge within
    `tolerance` points on the validation suites; ties go to the better new-skill score, then to the
    smaller change in general knowledge, then to the smaller rate. When no rate keeps general
    knowledge, the one that loses least (ties: the better new-skill score)."""
    if not trials:
        raise ValueError("no validation scores to choose from")
    keeping = [t for t in trials if t.general_delta >= -tolerance]
    if keeping:
        best = max(keeping, key=lambda t: (t.new_skill, t.general_delta, -t.learning_rate))
    else:
        best = max(trials, key=lambda t: (t.general_delta, t.new_skill, -t.learning_rate))
    return best.learning_rate
