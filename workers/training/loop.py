"""One training stage, readable top to bottom: whatever the method, the same loop.

Per optimizer step: pick the step's demonstrations (a pure function of the step, with a share from
earlier stages when replaying), let the stage's objective accumulate gradients (SDFT: rollouts scored
by the teacher; SFT: cross-entropy; the retention methods: both kinds of term, see objectives/), clip,
step AdamW, let the objective move what it owns (an EMA teacher), measure the learning diagnostics
every few steps, log, checkpoint. Data, optimizer, schedule, checkpoints and the final model are the
same for every method, so every comparison is like for like.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedTokenizerBase

from app.contracts.artifacts import model_dir_sha256, publish_dir
from app.contracts.demonstrations import Demonstration
from app.training.diagnostics import ProbeRecord, loss_concentration
from app.training.stage_config import ResolvedStage, StageConfig, resolve
from workers.models.chat import ChatRenderer
from workers.models.loading import load_model, load_tokenizer, stop_token_ids
from workers.models.placement import Placement, default_placement
from workers.rollout.base import BackendFactory, GenerationStopped, engine_name
from workers.training.checkpointing import Checkpoint, latest_checkpoint, load_training_state, save_checkpoint
from workers.training.diagnostics import LearningProbe, ProbeMeasurement
from workers.training.objectives import BUILDERS, Objective, StageContext, build_objective
from workers.training.prompts import PreparedExample, prepare_examples
from workers.training.schedule import batch_indices, lr_multiplier

FINAL = "final"
# Seeds the replayed rows' order apart from the stage's own.
REPLAY_SEED_OFFSET = 13


@dataclass(frozen=True)
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    loss: float  # the step's loss (the divergence for SDFT, cross-entropy for SFT, their sum for both)
    learning_rate: float
    grad_norm: float
    rollout_tokens_mean: float  # completion length (rollouts for on-policy terms, demonstrations for SFT)
    rollout_stop_fraction: float  # share of completions that ended with a stop token, not the length cap
    importance_weight_mean: float | None  # None when the sampler's numerics equal the trainer's
    seconds: float
    rollout_seconds: float
    rollout_engine: str  # the engine that sampled the rollouts ("none" when the step samples none)
    # Share of rollouts that contain a phrase of the teacher template (the student copying the
    # teacher's scaffolding instead of answering); None without SDFT rollouts. The job warns.
    rollout_leak_fraction: float | None = None
    method: str = ""
    loss_parts: dict[str, float] | None = None  # each term's loss ("supervised", "retention", ...)
    # Share of the step's loss carried by its top 5% of token positions: near 1, the signal sits on a
    # few tokens (sparse); near 0.05, it is spread evenly.
    loss_top5_share: float | None = None
    # Learning diagnostics on the fixed probe batch (None on steps they are not measured):
    probe_divergence: float | None = None  # KL(teacher with demonstration || student), nats/token
    probe_nll: float | None = None  # the student's NLL of the demonstrations, nats/token
    probe_score: float | None = None  # share of probe prompts the student answers right, greedy
    probe_baseline: float | None = None  # the probe divergence before the first step
    probe_baseline_score: float | None = None  # the probe's greedy score before the first step
    probe_seconds: float | None = None  # the part of `seconds` spent measuring the probe
    # True while, after stall_fraction of the steps, neither has the probe divergence fallen nor the
    # greedy score risen since the first step (`ProbeRecord.stalled`; the job warns once).
    learning_stalled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageResult:
    model_dir: Path
    sha256: str
    steps: int
    base_sha256: str
    last_metrics: StepMetrics | None


@dataclass(frozen=True)
class StageInputs:
    """What a stage learns from besides its own demonstrations, both optional.

    replay_rows: earlier stages' demonstrations of the lineage (`replay_fraction` of each batch).
    retention_prompts: the retention pool (chat messages per prompt) the retention methods distil on;
    app/training/retention_pool.py builds it and guarantees it holds no suite prompt.
    probe_grader: the new skill's grader (and options) for the diagnostics' greedy score.
    """

    replay_rows: Sequence[Demonstration] = ()
    retention_prompts: Sequence[Sequence[Mapping[str, str]]] = ()
    probe_grader: str | None = None
    probe_grader_options: Mapping[str, Any] | None = None


class StageCancelled(RuntimeError):
    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"stage cancelled after {step} optimizer step(s); checkpoint kept at {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class ResumeMismatch(ValueError):
    """The output directory holds a stage that was started with other inputs."""


def data_sha256(rows: Sequence[Demonstration]) -> str:
    canonical = [{"query": r.query_dicts(), "demonstration": r.demonstration} for r in rows]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def _stage_identity(
    config: StageConfig, base_sha: str, rows: Sequence[Demonstration], inputs: StageInputs
) -> dict[str, Any]:
    identity = {
        "config": config.model_dump(mode="json"),
        "base_sha256": base_sha,
        "data_sha256": data_sha256(rows),
    }
    if inputs.replay_rows:
        identity["replay_sha256"] = data_sha256(inputs.replay_rows)
    if inputs.retention_prompts:
        pool = json.dumps([list(map(dict, p)) for p in inputs.retention_prompts], sort_keys=True)
        identity["retention_pool_sha256"] = hashlib.sha256(pool.encode()).hexdigest()
    return identity


def _check_identity(found: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    for key in {*expected, "replay_sha256", "retention_pool_sha256"}:
        if found.get(key) != expected.get(key):
            raise ResumeMismatch(
                f"{where} holds a stage with a different {key.removesuffix('_sha256')}; use a new --out "
                "directory or delete the old one"
            )


def _build_student(
    base_dir: Path,
    config: StageConfig,
    resolved: ResolvedStage,
    checkpoint: Checkpoint | None,
    placement: Placement,
) -> torch.nn.Module:
    if not config.uses_lora:
        return load_model(checkpoint.path if checkpoint else base_dir, placement)
    base = load_model(base_dir, placement)
    if checkpoint is not None:
        return PeftModel.from_pretrained(base, str(checkpoint.path), is_trainable=True)
    assert config.lora_rank is not None and resolved.lora_alpha is not None
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=resolved.lora_alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    # LoRA's A matrices are drawn from the global RNG: seed it, so a stage is a function of its config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return get_peft_model(base, lora)


def step_rows(
    step: int, resolved: ResolvedStage, num_rows: int, num_replay_rows: int, seed: int
) -> tuple[list[int], list[int]]:
    """(own row indices, replayed row indices) of optimizer step `step`: both pure functions of the step."""
    replay = round(resolved.batch_size * resolved.replay_fraction) if num_replay_rows else 0
    own = batch_indices(step, resolved.batch_size - replay, num_rows, seed)
    replayed = batch_indices(step, replay, num_replay_rows, seed + REPLAY_SEED_OFFSET) if replay else []
    return own, replayed


class Stage:
    """Holds the state of one running stage; `run_stage` is the entry point."""

    def __init__(
        self,
        ctx: StageContext,
        objective: Objective,
        examples: list[PreparedExample],
        replay_examples: list[PreparedExample],
        probe: LearningProbe | None,
    ):
        self.ctx = ctx
        self.objective = objective
        self.examples = examples
        self.replay_examples = replay_examples
        self.probe = probe
        self.trainable = [p for p in ctx.student.parameters() if p.requires_grad]
        config, resolved = ctx.config, ctx.resolved
        self.optimizer = torch.optim.AdamW(
            self.trainable,
            lr=resolved.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            # One kernel per tensor instead of a chain of elementwise passes with full-size
            # temporaries: faster and a lower peak on CPU (TRL's default, `adamw_torch_fused`, too).
            fused=True,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(s, resolved.max_steps, resolved.warmup_steps, resolved.lr_schedule),
        )
        self.probe_record: ProbeRecord | None = None  # set by the measurement before the first step
        self.stalled = False

    def batch(self, step: int) -> list[PreparedExample]:
        own, replayed = step_rows(
            step, self.ctx.resolved, len(self.examples), len(self.replay_examples), self.ctx.config.seed
        )
        return [self.examples[i] for i in own] + [self.replay_examples[i] for i in replayed]

    def measure(self, step: int) -> ProbeMeasurement | None:
        """The probe after `step` optimizer steps."""
        if self.probe is None:
            return None
        self.ctx.student.eval()  # no dropout while measuring
        try:
            return self.probe.measure(step)
        finally:
            self.ctx.student.train()

    def step(self, step: int) -> StepMetrics:
        started = time.perf_counter()
        self.ctx.student.train()
        outcome = self.objective.accumulate(step, self.batch(step))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.ctx.config.max_grad_norm)
        learning_rate = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.objective.after_optimizer_step()
        done, total = step + 1, self.ctx.resolved.max_steps
        probe_started = time.perf_counter()
        measured = (
            self.measure(done) if done % self.ctx.resolved.diagnostics_every == 0 or done == total else None
        )
        probe_seconds = None if measured is None else time.perf_counter() - probe_started
        if measured is not None and self.probe_record is not None:
            self.probe_record = self.probe_record.updated(measured.divergence, measured.greedy_score)
            self.stalled = self.probe_record.stalled(
                done_fraction=done / total,
                stall_fraction=self.ctx.config.stall_fraction,
                min_relative_drop=self.ctx.config.stall_min_drop,
            )
        lengths = outcome.completion_lengths
        return StepMetrics(
            step=done,
            total_steps=total,
            loss=outcome.loss,
            learning_rate=learning_rate,
            grad_norm=float(grad_norm),
            rollout_tokens_mean=sum(lengths) / max(1, len(lengths)),
            rollout_stop_fraction=outcome.stop_fraction,
            importance_weight_mean=outcome.importance_weight_mean,
            seconds=time.perf_counter() - started,
            rollout_seconds=outcome.rollout_seconds,
            rollout_engine=engine_name(self.objective.rollouts),
            rollout_leak_fraction=outcome.rollout_leak_fraction,
            method=self.objective.name,
            loss_parts=outcome.parts,
            loss_top5_share=loss_concentration(outcome.token_contributions.tolist()),
            probe_divergence=None if measured is None else measured.divergence,
            probe_nll=None if measured is None else measured.nll,
            probe_score=None if measured is None else measured.greedy_score,
            probe_baseline=None if self.probe_record is None else self.probe_record.baseline,
            probe_baseline_score=None if self.probe_record is None else self.probe_record.baseline_score,
            probe_seconds=probe_seconds,
            learning_stalled=self.stalled,
        )


def _save_final(
    out_dir: Path, student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any]
) -> tuple[Path, str]:
    """Write a plain model directory (LoRA merged; the adapter kept beside it), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-final-", dir=out_dir))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the result is shared
    try:
        if isinstance(student, PeftModel):
            student.save_pretrained(str(staging / "adapter"), safe_serialization=True)
            student = student.merge_and_unload()
        student.save_pretrained(staging, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(staging)
        sha = model_dir_sha256(staging)
        (staging / "meta.json").write_text(
            json.dumps({**meta, "sha256": sha}, indent=2, sort_keys=True) + "\n"
        )
        final = out_dir / FINAL
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, sha


def resolve_for(
    config: StageConfig, examples: Sequence[PreparedExample], replay_rows: int = 0
) -> ResolvedStage:
    """`resolve` with what only the tokenized data knows: the longest demonstration in tokens."""
    longest = max(len(e.demonstration_ids) for e in examples)
    return resolve(config, len(examples), longest_demonstration_tokens=longest, replay_rows=replay_rows)


def run_stage(
    *,
    base_dir: str | Path,
    rows: Sequence[Demonstration],
    config: StageConfig,
    out_dir: str | Path,
    placement: Placement | None = None,
    backend_factory: BackendFactory | None = None,
    on_step: Callable[[StepMetrics], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    inputs: StageInputs | None = None,
) -> StageResult:
    """Run (or resume, or return the already finished) stage. Data and config problems are raised as
    DatasetError / ConfigError before any model is loaded. `config.method` must be a concrete method
    (`auto` is resolved first by workers/training/method_choice.py)."""
    if config.method not in BUILDERS:
        raise ValueError(
            f"method {config.method!r} cannot train as such: resolve 'auto' first "
            "(workers/training/method_choice.py stage_method)"
        )
    base, out = Path(base_dir), Path(out_dir)
    inputs = inputs or StageInputs()
    placement = placement or default_placement()
    tokenizer = load_tokenizer(base)
    stop_ids = stop_token_ids(tokenizer, base)
    examples = prepare_examples(rows, tokenizer, config, int(tokenizer.eos_token_id))
    replay_examples = (
        prepare_examples(inputs.replay_rows, tokenizer, config, int(tokenizer.eos_token_id))
        if inputs.replay_rows
        else []
    )
    resolved = resolve_for(config, examples, len(replay_examples))
    identity = _stage_identity(config, model_dir_sha256(base), rows, inputs)

    final_meta = out / FINAL / "meta.json"
    if final_meta.is_file():  # finished before: a re-run returns the same result (idempotent)
        meta = json.loads(final_meta.read_text())
        _check_identity(meta, identity, out)
        return StageResult(out / FINAL, meta["sha256"], meta["steps"], meta["base_sha256"], None)

    checkpoint = latest_checkpoint(out)
    if checkpoint is not None:
        _check_identity(checkpoint.meta, identity, checkpoint.path)
    student = _build_student(base, config, resolved, checkpoint, placement)
    if config.gradient_checkpointing:
        student.gradient_checkpointing_enable()  # type: ignore[operator]
    longest_prompt = max(len(e.student_prompt_ids) for e in [*examples, *replay_examples])
    ctx = StageContext(
        config, resolved, student, tokenizer, tuple(stop_ids), placement, longest_prompt, should_stop
    )
    renderer = ChatRenderer(tokenizer, config.chat_template_kwargs)
    pool = [tuple(renderer.prompt_ids([dict(m) for m in prompt])) for prompt in inputs.retention_prompts]
    objective = build_objective(ctx, base_dir=base, backend_factory=backend_factory, pool=pool)
    probe = LearningProbe.for_stage(
        ctx,
        examples,
        objective.reference_teacher,
        inputs.probe_grader,
        inputs.probe_grader_options,
        objective.rollouts,
    )
    stage = Stage(ctx, objective, examples, replay_examples, probe)
    start = 0
    if checkpoint is not None:
        objective.load_state_tensors(load_training_state(checkpoint, stage.optimizer, stage.scheduler))
        start = checkpoint.step
        stage.probe_record = ProbeRecord.from_meta(checkpoint.meta)
        stage.stalled = bool(checkpoint.meta.get("learning_stalled", False))

    meta = {
        **identity,
        "resolved": resolved.model_dump(),
        "base_dir": str(base),
        "method": config.method,
        "rollout_engine": engine_name(objective.rollouts),
    }
    metrics_log = out / "metrics.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    last: StepMetrics | None = None
    saved_step = start

    def checkpoint_now(done: int) -> Checkpoint:
        data_position = done * resolved.batch_size
        return save_checkpoint(
            out,
            step=done,
            student=student,
            optimizer=stage.optimizer,
            scheduler=stage.scheduler,
            teacher_state=objective.state_tensors(),
            meta={
                **meta,
                "max_steps": resolved.max_steps,
                "data_position": data_position,
                **({} if stage.probe_record is None else stage.probe_record.to_meta()),
                "learning_stalled": stage.stalled,
            },
            keep=2,
        )

    try:
        if start == 0 and probe is not None:
            baseline = stage.measure(0)
            if baseline is not None:
                stage.probe_record = ProbeRecord.start(baseline.divergence, baseline.greedy_score)
                with metrics_log.open("a") as f:
                    f.write(
                        json.dumps({"step": 0, "total_steps": resolved.max_steps, **baseline.to_dict()})
                        + "\n"
                    )
        for step in range(start, resolved.max_steps):
            if should_stop is not None and should_stop():
                if step > saved_step:
                    checkpoint_now(step)
                found = latest_checkpoint(out)
                raise StageCancelled(step, found.path if found else None)
            try:
                last = stage.step(step)
            except GenerationStopped:
                # Cancelled mid-rollout: this step's half-accumulated gradients are dropped (no
                # optimizer step was taken), the steps done before it are kept.
                stage.optimizer.zero_grad(set_to_none=True)
                if step > saved_step:
                    checkpoint_now(step)
                found = latest_checkpoint(out)
                raise StageCancelled(step, found.path if found else None) from None
            with metrics_log.open("a") as f:
                f.write(json.dumps(last.to_dict()) + "\n")
            done = step + 1
            # Report before the checkpoint: a crash between the two then re-runs (and re-reports) the
            # step after resuming, instead of resuming past a step nobody was told about.
            if on_step is not None:
                on_step(last)
            if done % config.checkpoint_every == 0 or done == resolved.max_steps:
                checkpoint_now(done)
                saved_step = done
    finally:
        objective.close()

    final_dir, sha = _save_final(out, student, tokenizer, {**meta, "steps": resolved.max_steps})
    return StageResult(final_dir, sha, resolved.max_steps, identity["base_sha256"], last)
