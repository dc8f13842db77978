"""One training stage, SDFT or the SFT baseline, readable top to bottom.

Per optimizer step: pick the step's demonstrations (a pure function of the step), sample one
on-policy rollout per prompt from the current student, score the same tokens with the student
(query only) and the teacher (query + demonstration), take the per-token divergence chunk by chunk
from the final hidden states, step AdamW, move the EMA teacher, log, checkpoint. SFT runs the same
loop with cross-entropy on the demonstration, so every comparison is like for like.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.contracts.artifacts import model_dir_sha256
from app.contracts.demonstrations import Demonstration
from app.contracts.stage_config import ResolvedStage, StageConfig, resolve
from app.evaluation.leakage import default_leakage_phrases, template_leakage
from workers.models.loading import Placement, default_placement, load_model, load_tokenizer, stop_token_ids
from workers.rollout.base import Completion, RolloutBackend, SamplingParams
from workers.rollout.hf_generate import TransformersBackend
from workers.training import losses
from workers.training.batching import completion_hidden, pack
from workers.training.checkpointing import Checkpoint, latest_checkpoint, load_training_state, save_checkpoint
from workers.training.prompts import PreparedExample, prepare_examples
from workers.training.schedule import batch_indices, lr_multiplier, rollout_seed
from workers.training.teacher import Teacher, build_teacher, head_weight, hidden_states

FINAL = "final"
BackendFactory = Callable[[torch.nn.Module, PreTrainedTokenizerBase, Placement], RolloutBackend]


@dataclass(frozen=True)
class StepMetrics:
    step: int  # optimizer steps done, 1-based
    total_steps: int
    loss: float  # the step's mean per-sequence loss (the divergence for SDFT, cross-entropy for SFT)
    learning_rate: float
    grad_norm: float
    rollout_tokens_mean: float  # completion length (rollouts for SDFT, demonstrations for SFT)
    rollout_stop_fraction: float  # share of rollouts that ended with a stop token, not the length cap
    importance_weight_mean: float | None  # None when the sampler's numerics equal the trainer's
    seconds: float
    rollout_seconds: float
    # Share of rollouts that contain a phrase of the teacher template (the student copying the
    # teacher's scaffolding instead of answering); None for SFT. Watched by the job, which warns.
    rollout_leak_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageResult:
    model_dir: Path
    sha256: str
    steps: int
    base_sha256: str
    last_metrics: StepMetrics | None


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


def _stage_identity(config: StageConfig, base_sha: str, rows: Sequence[Demonstration]) -> dict[str, Any]:
    return {
        "config": config.model_dump(mode="json"),
        "base_sha256": base_sha,
        "data_sha256": data_sha256(rows),
    }


def _check_identity(found: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    for key, value in expected.items():
        if found.get(key) != value:
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


def _build_teacher(
    config: StageConfig, student: torch.nn.Module, base_dir: Path, placement: Placement
) -> Teacher:
    needs_copy = config.teacher == "ema" or (
        config.teacher == "frozen" and not isinstance(student, PeftModel)
    )
    base_copy: PreTrainedModel | None = load_model(base_dir, placement) if needs_copy else None
    dtype = torch.bfloat16 if placement.is_cuda else torch.float32
    return build_teacher(config.teacher, student, base_copy, config.ema_rate, dtype)


class Stage:
    """Holds the state of one running stage; `run_stage` is the entry point."""

    def __init__(
        self,
        *,
        config: StageConfig,
        resolved: ResolvedStage,
        examples: list[PreparedExample],
        student: torch.nn.Module,
        teacher: Teacher | None,
        backend: RolloutBackend | None,
        tokenizer: PreTrainedTokenizerBase,
        stop_ids: list[int],
        placement: Placement,
    ):
        self.config = config
        self.resolved = resolved
        self.examples = examples
        self.student = student
        self.teacher = teacher
        self.backend = backend
        self.pad_id = int(tokenizer.pad_token_id)
        self.tokenizer = tokenizer
        self.leak_phrases = default_leakage_phrases(config.teacher_template)
        self.stop_ids = stop_ids
        self.placement = placement
        self.trainable = [p for p in student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable,
            lr=resolved.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_multiplier(s, resolved.max_steps, resolved.warmup_steps, config.lr_schedule),
        )

    def step(self, step: int) -> StepMetrics:
        started = time.perf_counter()
        cfg = self.config
        rows = batch_indices(step, self.resolved.batch_size, len(self.examples), cfg.seed)
        batch = [self.examples[i] for i in rows]
        rollout_seconds = 0.0
        if cfg.method == "sdft":
            assert self.backend is not None
            self.backend.sync_weights(step)
            t = time.perf_counter()
            params = SamplingParams(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                num_samples=cfg.rollouts_per_prompt,
                seed=rollout_seed(cfg.seed, step),
                stop_token_ids=tuple(self.stop_ids),
            )
            sampled = self.backend.generate([e.student_prompt_ids for e in batch], params)
            rollout_seconds = time.perf_counter() - t
            pairs = [(e, c) for e, completions in zip(batch, sampled, strict=True) for c in completions]
        else:
            pairs = [(e, Completion(e.demonstration_ids)) for e in batch]

        self.student.train()
        loss_total, weight_total, weight_count = 0.0, 0.0, 0
        for start in range(0, len(pairs), cfg.micro_batch_size):
            micro = pairs[start : start + cfg.micro_batch_size]
            loss, weights = self._micro_step(micro, total_sequences=len(pairs))
            loss_total += loss
            if weights is not None:
                weight_total += float(weights.sum())
                weight_count += len(micro)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
        learning_rate = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.teacher is not None:
            self.teacher.update()
        lengths = [len(c.token_ids) for _, c in pairs]
        leak_fraction = None
        if cfg.method == "sdft":
            texts = self.tokenizer.batch_decode(
                [list(c.token_ids) for _, c in pairs], skip_special_tokens=True
            )
            leak_fraction = template_leakage(texts, self.leak_phrases).rate
        return StepMetrics(
            step=step + 1,
            total_steps=self.resolved.max_steps,
            loss=loss_total,
            learning_rate=learning_rate,
            grad_norm=float(grad_norm),
            rollout_tokens_mean=sum(lengths) / len(lengths),
            rollout_stop_fraction=sum(c.finish_reason == "stop" for _, c in pairs) / len(pairs),
            importance_weight_mean=weight_total / weight_count if weight_count else None,
            seconds=time.perf_counter() - started,
            rollout_seconds=rollout_seconds,
            rollout_leak_fraction=leak_fraction,
        )

    def _micro_step(
        self, pairs: list[tuple[PreparedExample, Completion]], total_sequences: int
    ) -> tuple[float, torch.Tensor | None]:
        """Forward, loss and backward for a few sequences; returns (loss, importance weights or None)."""
        cfg = self.config
        device = self.placement.device
        completions = [c.token_ids for _, c in pairs]
        student_batch = pack([e.student_prompt_ids for e, _ in pairs], completions, self.pad_id, device)
        ids_BT, lengths_B = student_batch.completion_ids, student_batch.completion_lengths
        # Logits are divided by the sampling temperature on both sides; (h / tau) @ W == (h @ W) / tau.
        scale = 1.0 / cfg.temperature if cfg.method == "sdft" else 1.0
        with self.placement.autocast():
            student_h = completion_hidden(hidden_states(self.student, student_batch), student_batch) * scale
        width = student_h.shape[-1]
        student_head = head_weight(self.student)
        skip = cfg.skip_first_tokens if cfg.method == "sdft" else 0
        mask_BT = losses.completion_loss_mask(ids_BT, lengths_B, skip)
        sequence_weights = None
        if cfg.method == "sdft" and self.backend is not None and not self.backend.exact_numerics:
            # Truncated importance weight for a sampler whose numerics differ from the trainer's.
            trainer_lp = losses.sampled_token_logprobs(
                student_h.detach().reshape(-1, width), student_head, ids_BT.reshape(-1), cfg.loss_chunk_size
            ).view_as(mask_BT)
            sampler_lp = torch.zeros_like(trainer_lp)
            for i, (_, c) in enumerate(pairs):
                sampler_lp[i, : len(c.logprobs)] = torch.tensor(c.logprobs, device=device)
            real_BT = losses.completion_loss_mask(ids_BT, lengths_B, 0)
            sequence_weights = losses.truncated_importance_weights(
                trainer_lp, sampler_lp, real_BT, cfg.importance_cap
            )
        weights_BT = losses.sequence_mean_token_weights(mask_BT, sequence_weights, total_sequences)
        keep_N = (weights_BT.reshape(-1) > 0).nonzero().squeeze(1)
        if keep_N.numel() == 0:  # every token masked (e.g. completions shorter than skip_first)
            return 0.0, sequence_weights
        hidden_NH = student_h.reshape(-1, width).index_select(0, keep_N)
        target_N = ids_BT.reshape(-1).index_select(0, keep_N)
        if cfg.method == "sdft":
            assert self.teacher is not None
            teacher_batch = pack([e.teacher_prompt_ids for e, _ in pairs], completions, self.pad_id, device)
            with torch.no_grad(), self.placement.autocast():
                teacher_h = completion_hidden(self.teacher.hidden(teacher_batch), teacher_batch) * scale
            token_loss = losses.distillation_token_loss(
                teacher_h.reshape(-1, width).index_select(0, keep_N),
                self.teacher.head_weight(),
                divergence=cfg.divergence,
                jsd_alpha=cfg.jsd_alpha,
                support=cfg.support,
                top_k=cfg.top_k,
                sampled_ids_N=target_N,
            )
        else:
            token_loss = losses.cross_entropy_token_loss(target_N)
        loss = losses.chunked_lm_head_loss(
            hidden_NH,
            student_head,
            weights_BT.reshape(-1).index_select(0, keep_N),
            token_loss=token_loss,
            chunk_size=cfg.loss_chunk_size,
        )
        loss.backward()
        return float(loss.detach()), sequence_weights


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
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, sha


def _transformers_backend(
    student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, placement: Placement
) -> RolloutBackend:
    return TransformersBackend(student, int(tokenizer.pad_token_id), placement)


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
) -> StageResult:
    """Run (or resume, or return the already finished) stage. Data and config problems are raised as
    DatasetError / ConfigError before any model is loaded."""
    base, out = Path(base_dir), Path(out_dir)
    placement = placement or default_placement()
    resolved = resolve(config, len(rows))
    tokenizer = load_tokenizer(base)
    stop_ids = stop_token_ids(tokenizer, base)
    examples = prepare_examples(rows, tokenizer, config, int(tokenizer.eos_token_id))
    identity = _stage_identity(config, model_dir_sha256(base), rows)

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
    teacher = _build_teacher(config, student, base, placement) if config.method == "sdft" else None
    backend: RolloutBackend | None = None
    if config.method == "sdft":
        factory = backend_factory or _transformers_backend
        backend = factory(student, tokenizer, placement)
    stage = Stage(
        config=config,
        resolved=resolved,
        examples=examples,
        student=student,
        teacher=teacher,
        backend=backend,
        tokenizer=tokenizer,
        stop_ids=stop_ids,
        placement=placement,
    )
    start = 0
    if checkpoint is not None:
        teacher_state = load_training_state(checkpoint, stage.optimizer, stage.scheduler)
        if teacher is not None:
            teacher.load_state_tensors(teacher_state)
        start = checkpoint.step

    meta = {**identity, "resolved": resolved.model_dump(), "base_dir": str(base), "method": config.method}
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
            teacher_state=teacher.state_tensors() if teacher is not None else {},
            meta={**meta, "max_steps": resolved.max_steps, "data_position": data_position},
            keep=2,
        )

    try:
        for step in range(start, resolved.max_steps):
            if should_stop is not None and should_stop():
                if step > saved_step:
                    checkpoint_now(step)
                found = latest_checkpoint(out)
                raise StageCancelled(step, found.path if found else None)
            last = stage.step(step)
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
        if backend is not None:
            backend.close()

    final_dir, sha = _save_final(out, student, tokenizer, {**meta, "steps": resolved.max_steps})
    return StageResult(final_dir, sha, resolved.max_steps, identity["base_sha256"], last)
