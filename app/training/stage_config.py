"""What one training stage does: the recipe (hyperparameters), never where it runs.

Flat on purpose: the same keys are the API's ``hyperparameters`` object, the CLI's
``--config`` file and the ``config`` block of every checkpoint's ``meta.json``. Every
hyperparameter may be ``"auto"``; `resolve` turns those into numbers for a given dataset,
using the paper's defaults scaled to the data (see ``docs/reference/sdft-algorithm.md`` §8).

Methods (the objective is chosen once per stage; `workers/training/objectives/` has one file each):

- ``sdft``: the paper's self-distillation (on-policy rollouts, demonstration-conditioned teacher).
- ``sft``: cross-entropy on the demonstrations (the baseline).
- ``sft_retain``: SFT plus ``retention_weight`` x on-policy distillation from the frozen parent
  (no demonstration in its prompt) on the retention prompt pool, in every step.
- ``sft_restore``: SFT, then for the last ``restore_fraction`` of the steps only that distillation
  ("learn, then restore").
- ``auto`` (default): the teacher-readiness probe picks ``sdft`` when the demonstration-conditioned
  teacher is clearly better and the student's own samples reach the answer, else ``AUTO_FALLBACK_METHOD``.

``replay_fraction`` mixes earlier stages' demonstrations of the lineage into every batch, for any method.
"""

from __future__ import annotations

import math
import string
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

Auto = Literal["auto"]
AUTO: Auto = "auto"
# Every number is bounded: an unbounded one let a job ask for 10^12 steps or an infinite learning rate.
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
Epochs = Annotated[float, Field(gt=0.0, le=1000.0)]
Steps = Annotated[int, Field(ge=1, le=1_000_000)]
WarmupSteps = Annotated[int, Field(ge=0, le=100_000)]
LoraAlpha = Annotated[float, Field(gt=0.0, le=100_000.0)]
NewTokens = Annotated[int, Field(ge=1, le=32768)]

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


Method = Literal["auto", "sdft", "sft", "sft_retain", "sft_restore"]
METHODS: tuple[str, ...] = ("auto", "sdft", "sft", "sft_retain", "sft_restore")
# What `auto` trains when the probe finds SDFT cannot teach this skill to this model (the best
# retention method of docs/experiments/README.md on the embedded base).
AUTO_FALLBACK_METHOD = "sft_retain"
# Methods that distil from the parent on the retention prompt pool.
RETENTION_METHODS = frozenset({"sft_retain", "sft_restore"})


class StageConfig(BaseModel):
    """One training stage. Defaults follow the paper unless a comment says why not."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    method: Method = "auto"
    seed: int = Field(default=42, ge=0, le=2**31 - 1)

    # Optimization (paper: AdamW, weight decay 0, cosine with 10 warmup steps, clip 1.0).
    learning_rate: LearningRate | Auto = AUTO
    batch_size: BatchSize | Auto = AUTO  # prompts per optimizer step (paper: 32)
    micro_batch_size: int = Field(default=4, ge=1, le=1024)  # sequences per forward; the rest accumulates
    epochs: Epochs | Auto = AUTO
    max_steps: Steps | Auto = AUTO
    warmup_steps: WarmupSteps | Auto = AUTO
    # auto: cosine for sdft (the paper's), constant for the others: on small data a decaying rate halves
    # what SFT learns in the same steps (27.5% of held-out facts against 2.5%, docs/experiments).
    lr_schedule: Literal["cosine", "constant"] | Auto = AUTO
    weight_decay: float = Field(default=0.0, ge=0.0, le=10.0)
    adam_beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(default=0.999, ge=0.0, lt=1.0)
    adam_eps: float = Field(default=1e-8, gt=0.0, le=1.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6)
    # Recompute activations in backward: one more student forward per micro-batch for ~280-370 MB less
    # peak on SmolLM2 (docs/benchmarks.md, "Memory levers"); same weights learned; off by default
    # because the recomputation costs time.
    gradient_checkpointing: bool = False

    # LoRA (null rank = full fine-tuning).
    lora_rank: int | None = Field(default=None, ge=1, le=1024)
    lora_alpha: LoraAlpha | Auto = AUTO  # auto = 2 x rank
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_target_modules: str | list[str] = "all-linear"

    # Teacher weights: EMA of the student (paper), frozen base, or live student (diverges; warned).
    teacher: Literal["ema", "frozen", "live"] = "ema"
    ema_rate: float = Field(default=0.01, gt=0.0, le=1.0)  # weight on the student per step
    teacher_template: str = PAPER_TEACHER_TEMPLATE
    # What to do when the teacher prompt does not fit: fail the row, or cut the demonstration's middle.
    teacher_overflow: Literal["fail", "shorten_demonstration"] = "fail"

    # Loss: forward KL over the full vocabulary produced every published result.
    # "sequence": mean over each sequence's tokens, then over sequences (the paper's code); "token": one
    # mean over every counted token of the step, so one decisive token of a long answer is not diluted.
    loss_normalization: Literal["sequence", "token"] = "sequence"
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    jsd_alpha: float = Field(default=0.5, gt=0.0, lt=1.0)
    support: Literal["full", "teacher_topk", "sampled_token"] = "full"
    top_k: int = Field(default=20, ge=1, le=100_000)
    skip_first_tokens: int = Field(default=3, ge=0, le=10_000)
    loss_chunk_size: int = Field(default=256, ge=1, le=65_536)
    importance_cap: float = Field(default=2.0, ge=1.0, le=1000.0)

    # Rollouts: on-policy, one per prompt, temperature 1.0.
    rollouts_per_prompt: int = Field(default=1, ge=1, le=64)
    temperature: float = Field(default=1.0, gt=0.0, le=10.0)
    # auto: from the demonstrations' own lengths (see resolve), at most MAX_AUTO_NEW_TOKENS, the
    # reference code's length (the paper used 2048 for skills); set it explicitly for long reasoning.
    max_new_tokens: NewTokens | Auto = AUTO
    max_prompt_tokens: int = Field(default=1024, ge=8, le=1_000_000)
    max_teacher_prompt_tokens: int = Field(default=4096, ge=8, le=1_000_000)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)

    # Retention (sft_retain, sft_restore): on-policy distillation from the frozen parent on prompts of
    # the retention pool (the lineage's earlier training prompts plus the shipped general pool, never a
    # suite prompt).
    retention_weight: float = Field(default=1.0, gt=0.0, le=100.0)
    retention_batch_size: BatchSize | Auto = AUTO  # pool prompts per step; auto = batch_size
    retention_max_new_tokens: int = Field(default=64, ge=1, le=4096)
    restore_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)  # sft_restore: share of restore steps
    # Replay: this share of each batch comes from earlier stages' demonstrations of the lineage
    # (auto: 0.25 when there are any, else 0).
    replay_fraction: Annotated[float, Field(ge=0.0, le=0.9)] | Auto = AUTO

    # Learning diagnostics, measured on a fixed probe batch of the stage's own demonstrations.
    probe_rows: int = Field(default=8, ge=0, le=64)  # 0 turns the diagnostics off
    diagnostics_every: Steps | Auto = AUTO  # auto: about 8 measurements per stage
    # Warn when, after this share of steps, the probe divergence has never fallen by stall_min_drop
    # (relative) and the probe's greedy score never risen (app/training/diagnostics.py, ProbeRecord).
    stall_fraction: float = Field(default=0.5, gt=0.0, le=1.0)
    stall_min_drop: float = Field(default=0.05, ge=0.0, lt=1.0)

    checkpoint_every: int = Field(default=50, ge=1, le=1_000_000)
    # Before an SDFT stage the service checks that the demonstration actually helps the teacher
    # (workers/training/readiness.py): "enforce" stops the job when it does not, "warn" only reports.
    readiness_probe: Literal["enforce", "warn", "off"] = "enforce"

    # Field validators, so that an error names its key (a model validator's names none).
    @field_validator("teacher_template")
    @classmethod
    def _template(cls, template: str) -> str:
        problems = template_problems(template)
        if problems:
            raise ValueError("; ".join(problems))
        return template

    @field_validator("support")
    @classmethod
    def _support_fits_divergence(cls, support: str, info: ValidationInfo) -> str:
        # `divergence` is declared before `support`, so it is validated first (absent if it failed).
        if support == "sampled_token" and info.data.get("divergence", "reverse_kl") != "reverse_kl":
            raise ValueError(
                "support 'sampled_token' is a reverse-KL estimator: set divergence to 'reverse_kl'"
            )
        return support

    @property
    def uses_lora(self) -> bool:
        return self.lora_rank is not None


TEMPLATE_FIELDS = ("question", "demonstration")
MAX_TEMPLATE_CHARS = 20_000


def template_problems(template: str) -> list[str]:
    """A teacher template may hold {question} and {demonstration}, bare (no format spec, conversion,
    index or attribute: "{question:>300000000}" would build 300 MB per row), each at least once, and
    literal braces doubled."""
    if len(template) > MAX_TEMPLATE_CHARS:
        return [f"teacher_template is longer than {MAX_TEMPLATE_CHARS} characters"]
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"teacher_template is not a valid template ({exc}); write literal braces as {{{{ and }}}}"]
    problems = []
    seen = set()
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS or spec or conversion:
            problems.append(
                f"teacher_template may only use {{question}} and {{demonstration}} as they are, found "
                f"{{{field}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
            )
        seen.add(field)
    missing = [name for name in TEMPLATE_FIELDS if name not in seen]
    if missing:
        problems.append(f"teacher_template must contain {' and '.join('{' + m + '}' for m in missing)}")
    return problems


class ResolvedStage(BaseModel):
    """The numbers a stage actually runs with, after "auto" is resolved for a dataset."""

    model_config = ConfigDict(frozen=True)

    learning_rate: float
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    batch_size: int
    epochs: float
    max_steps: int
    warmup_steps: int
    lora_alpha: float | None
    # None only where the demonstrations' token lengths are not known yet (the API, before any
    # tokenizer has seen them); a training stage always resolves it.
    max_new_tokens: int | None = None
    retention_batch_size: int = 0
    replay_fraction: float = 0.0
    diagnostics_every: int = 1


# Small datasets need several passes: at least this many demonstrations are seen per stage, in at most
# MAX_AUTO_EPOCHS epochs (SmolLM2-135M learned nothing from 2 epochs of 40 facts; docs/experiments).
MIN_AUTO_EXAMPLES = 320
MAX_AUTO_EPOCHS = 10
MAX_AUTO_NEW_TOKENS = 1024


def auto_max_new_tokens(longest_demonstration_tokens: int) -> int:
    """Room for an answer as long as the longest demonstration, with a quarter and 16 tokens to spare:
    a rollout much longer than anything demonstrated teaches nothing and costs the most."""
    return min(MAX_AUTO_NEW_TOKENS, max(16, math.ceil(1.25 * longest_demonstration_tokens) + 16))


def resolve(
    config: StageConfig,
    num_rows: int,
    *,
    longest_demonstration_tokens: int | None = None,
    replay_rows: int = 0,
) -> ResolvedStage:
    """Turn "auto" into numbers for a dataset of `num_rows` demonstrations.

    - batch_size: about a fifth of the rows, between 4 and 32 prompts (paper: 32), never above the rows.
    - epochs: 2 (paper, skills), raised on small data so at least MIN_AUTO_EXAMPLES demonstrations are
      seen, at most MAX_AUTO_EPOCHS; max_steps = ceil(epochs * rows / batch) unless given.
    - learning_rate: 5e-5 full fine-tuning, every method (paper README; for the retention methods
      chosen on validation suites, docs/experiments); LoRA adapters 2e-4 (docs/experiments);
      lr_schedule: cosine for sdft (paper), constant for the other methods (docs/experiments).
    - warmup: 10 steps (paper), at most 10% of the run so short runs still reach the peak rate.
    - max_new_tokens: `auto_max_new_tokens` of the longest demonstration.
    - retention_batch_size: the batch size; replay_fraction: 0.25 when there is anything to replay.
    - diagnostics_every: about eight measurements per stage.
    """
    if num_rows < 1:
        raise ValueError("the dataset has no rows")
    batch = min(num_rows, max(4, min(32, num_rows // 5))) if config.batch_size == AUTO else config.batch_size
    if config.learning_rate != AUTO:
        lr = config.learning_rate
    elif config.uses_lora:
        lr = 2e-4
    else:
        # sft_retain's validation suites chose 5e-5 on the format skill by 15 points and 1e-4 on the
        # facts only at the edge of the general tolerance; over three seeds 5e-5 reached 82-86% of
        # SFT's score on both skills, 1e-4 43% on format (docs/experiments).
        lr = 5e-5
    if config.epochs == AUTO:
        epochs = float(min(MAX_AUTO_EPOCHS, max(2, math.ceil(MIN_AUTO_EXAMPLES / num_rows))))
    else:
        epochs = float(config.epochs)
    steps = max(1, math.ceil(epochs * num_rows / batch)) if config.max_steps == AUTO else config.max_steps
    warmup = min(10, steps // 10) if config.warmup_steps == AUTO else config.warmup_steps
    alpha: float | None = None
    if config.uses_lora:
        assert config.lora_rank is not None
        alpha = 2.0 * config.lora_rank if config.lora_alpha == AUTO else float(config.lora_alpha)
    if config.max_new_tokens != AUTO:
        new_tokens: int | None = config.max_new_tokens
    elif longest_demonstration_tokens is not None:
        new_tokens = auto_max_new_tokens(longest_demonstration_tokens)
    else:
        new_tokens = None
    if config.replay_fraction == AUTO:
        replay = 0.25 if replay_rows > 0 else 0.0
    else:
        replay = float(config.replay_fraction) if replay_rows > 0 else 0.0
    if config.lr_schedule == AUTO:
        schedule: Literal["cosine", "constant"] = "cosine" if config.method == "sdft" else "constant"
    else:
        schedule = config.lr_schedule
    return ResolvedStage(
        learning_rate=lr,
        lr_schedule=schedule,
        batch_size=batch,
        epochs=epochs,
        max_steps=steps,
        warmup_steps=warmup,
        lora_alpha=alpha,
        max_new_tokens=new_tokens,
        retention_batch_size=batch if config.retention_batch_size == AUTO else config.retention_batch_size,
        replay_fraction=replay,
        diagnostics_every=max(1, steps // 8)
        if config.diagnostics_every == AUTO
        else config.diagnostics_every,
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
