"""What one training stage does: the recipe (hyperparameters), never where it runs.

Flat on purpose: the same keys are the API's ``hyperparameters`` object, the CLI's
``--config`` file and the ``config`` block of every checkpoint's ``meta.json``. Every
hyperparameter may be ``"auto"``; `resolve` turns those into numbers for a given dataset,
using the paper's defaults scaled to the data (see ``shared/reference/sdft-algorithm.md`` §8).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Auto = Literal["auto"]
AUTO: Auto = "auto"
PositiveFloat = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]

# The paper's teacher template (§5), as the reference code writes it (final sentence ends with a period).
PAPER_TEACHER_TEMPLATE = (
    "\n{question}\n\nThis is an example for a response to the question:\n{demonstration}\n\n"
    "Now answer with a response of your own, including the thinking process.\n"
)

# A template without the paper's "question"/"response"/"thinking process" wording. At 135M the paper's
# closing instruction ("a response of your own, including the thinking process") made the teacher
# write "To solve this problem, I started by ..." instead of the demonstrated answer, and students
# copied that wording; with this one the teacher answered 75% of held-out facts (62% with the paper's)
# and copied the demonstrated format (docs/experiments/continual.md, "What was tried").
CONCISE_TEACHER_TEMPLATE = (
    "\n{question}\n\nExample answer:\n{demonstration}\n\nAnswer in exactly the same format as the example.\n"
)


class StageConfig(BaseModel):
    """One SDFT (or SFT baseline) stage. Defaults follow the paper unless a comment says why not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["sdft", "sft"] = "sdft"
    seed: int = 42

    # Optimization (paper: AdamW, weight decay 0, cosine with 10 warmup steps, clip 1.0).
    learning_rate: PositiveFloat | Auto = AUTO
    batch_size: PositiveInt | Auto = AUTO  # prompts per optimizer step (paper: 32)
    micro_batch_size: int = Field(default=4, ge=1)  # sequences per forward; the rest is accumulation
    epochs: PositiveFloat | Auto = AUTO
    max_steps: PositiveInt | Auto = AUTO
    warmup_steps: NonNegativeInt | Auto = AUTO
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    adam_eps: float = Field(default=1e-8, gt=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    gradient_checkpointing: bool = False

    # LoRA (null rank = full fine-tuning).
    lora_rank: int | None = Field(default=None, ge=1, le=1024)
    lora_alpha: PositiveFloat | Auto = AUTO  # auto = 2 x rank
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = "all-linear"

    # Teacher weights: EMA of the student (paper), frozen base, or live student (diverges; warned).
    teacher: Literal["ema", "frozen", "live"] = "ema"
    ema_rate: float = Field(default=0.01, gt=0.0, le=1.0)  # weight on the student per step
    teacher_template: str = PAPER_TEACHER_TEMPLATE
    # What to do when the teacher prompt does not fit: fail the row, or cut the demonstration's middle.
    teacher_overflow: Literal["fail", "shorten_demonstration"] = "fail"

    # Loss: forward KL over the full vocabulary produced every published result.
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    jsd_alpha: float = Field(default=0.5, gt=0.0, lt=1.0)
    support: Literal["full", "teacher_topk", "sampled_token"] = "full"
    top_k: int = Field(default=20, ge=1)
    skip_first_tokens: int = Field(default=3, ge=0)
    loss_chunk_size: int = Field(default=256, ge=1)
    importance_cap: float = Field(default=2.0, ge=1.0)

    # Rollouts: on-policy, one per prompt, temperature 1.0.
    rollouts_per_prompt: int = Field(default=1, ge=1, le=64)
    temperature: float = Field(default=1.0, gt=0.0)
    max_new_tokens: int = Field(default=512, ge=1, le=32768)
    max_prompt_tokens: int = Field(default=1024, ge=8)
    max_teacher_prompt_tokens: int = Field(default=4096, ge=8)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)

    checkpoint_every: int = Field(default=50, ge=1)
    # Before an SDFT stage the service checks that the demonstration actually helps the teacher
    # (workers/evaluation/probe.py): "enforce" stops the job when it does not, "warn" only reports.
    readiness_probe: Literal["enforce", "warn", "off"] = "enforce"

    @model_validator(mode="after")
    def _combinations(self) -> StageConfig:
        problems = []
        if self.support == "sampled_token" and self.divergence != "reverse_kl":
            problems.append(
                "support 'sampled_token' is a reverse-KL estimator: set divergence to 'reverse_kl'"
            )
        if "{question}" not in self.teacher_template or "{demonstration}" not in self.teacher_template:
            problems.append("teacher_template must contain {question} and {demonstration}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def uses_lora(self) -> bool:
        return self.lora_rank is not None


class ResolvedStage(BaseModel):
    """The numbers a stage actually runs with, after "auto" is resolved for a dataset."""

    model_config = ConfigDict(frozen=True)

    learning_rate: float
    batch_size: int
    epochs: float
    max_steps: int
    warmup_steps: int
    lora_alpha: float | None


def resolve(config: StageConfig, num_rows: int) -> ResolvedStage:
    """Turn "auto" into numbers. Paper defaults, scaled down for small datasets.

    - batch_size: 32 prompts (paper), but never more than the dataset.
    - learning_rate: 5e-5 full fine-tuning (paper README); LoRA adapters want about 10x (Tinker).
    - epochs: 2 (paper, skills); max_steps = ceil(epochs * rows / batch) unless given.
    - warmup: 10 steps (paper), at most 10% of the run so short runs still reach the peak rate.
    """
    if num_rows < 1:
        raise ValueError("the dataset has no rows")
    batch = min(32, num_rows) if config.batch_size == AUTO else config.batch_size
    lr = (5e-4 if config.uses_lora else 5e-5) if config.learning_rate == AUTO else config.learning_rate
    epochs = 2.0 if config.epochs == AUTO else float(config.epochs)
    steps = max(1, math.ceil(epochs * num_rows / batch)) if config.max_steps == AUTO else config.max_steps
    warmup = min(10, steps // 10) if config.warmup_steps == AUTO else config.warmup_steps
    alpha: float | None = None
    if config.uses_lora:
        assert config.lora_rank is not None
        alpha = 2.0 * config.lora_rank if config.lora_alpha == AUTO else float(config.lora_alpha)
    return ResolvedStage(
        learning_rate=lr,
        batch_size=batch,
        epochs=epochs,
        max_steps=steps,
        warmup_steps=warmup,
        lora_alpha=alpha,
    )


class ConfigError(ValueError):
    """Every problem with a stage configuration, reported together with the offending key."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {key}: {reason}" for key, reason in problems)
        super().__init__(f"{len(problems)} problem(s) in the stage configuration:\n{lines}")


def parse_stage_config(data: dict[str, Any]) -> StageConfig:
    """Validate a raw mapping, collecting every problem (unknown keys included) into one ConfigError."""
    try:
        return StageConfig.model_validate(data)
    except ValidationError as exc:
        reasons: dict[str, list[str]] = {}
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "config"
            if err["type"] == "extra_forbidden":
                reason = "unknown key"
            elif err["type"] == "literal_error" and err["loc"][-1:] == ("literal['auto']",):
                continue  # the other half of a `number | "auto"` union says what is wrong
            else:
                reason = err["msg"].removeprefix("Value error, ")
            reasons.setdefault(key, []).append(reason)
        raise ConfigError([(key, "; ".join(r)) for key, r in reasons.items()]) from None
