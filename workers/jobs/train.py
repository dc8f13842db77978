"""The running phase of a job: train the current stage, register its candidate, hand over to evaluation.

    running: choose the method (the readiness probe, for `auto` and `sdft`), train (resuming from the
             stage's last checkpoint), register the candidate version with how it was made -> evaluating

The stage learns from its own demonstrations plus, by its method, earlier stages' demonstrations of
the lineage (replay) and the retention prompt pool (the lineage's earlier training prompts and the
shipped general prompts, never a prompt of a suite this job is gated on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from app.contracts.demonstrations import DatasetError, Demonstration, parse_demonstrations
from app.files import service as files
from app.jobs import lineage
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus
from app.registry import service as registry
from app.suites import service as suites_service
from app.training.diagnostics import stall_message
from app.training.retention_pool import build_retention_pool
from app.training.stage_config import RETENTION_METHODS, ConfigError, StageConfig, parse_stage_config
from workers.jobs import messages
from workers.jobs.errors import JobFailed
from workers.jobs.run_state import JobRun, current_stage, parent_dir
from workers.models.loading import ModelDirError
from workers.rollout.factory import engine_fallback_note
from workers.training.checkpointing import latest_checkpoint
from workers.training.loop import FINAL, ResumeMismatch, StageCancelled, StageInputs, StepMetrics, run_stage
from workers.training.method_choice import StageMethod, stage_method

# Warn once per stage when this share of a step's rollouts copies the teacher template's wording.
LEAK_WARN_FRACTION = 0.25


@dataclass
class StageData:
    rows: list[Demonstration]
    config: StageConfig
    grader: str
    grader_options: dict[str, Any]
    replay_rows: list[Demonstration] = field(default_factory=list)
    retention_prompts: list[list[dict[str, str]]] = field(default_factory=list)


def _load(run: JobRun, job: Job) -> StageData:
    index, stage, parent_id = current_stage(job)
    with run.ctx.session() as session:
        text = files.read_text(run.store, files.get_file(session, stage["training_file"]))
        first_suite = suites_service.get_suite(session, stage["suites"][0])
        earlier = [
            files.read_text(run.store, files.get_file(session, file_id))
            for file_id in lineage.training_files(session, parent_id)
        ]
        gated = lineage.suite_roles(session, job, index, parent_id)
        suite_prompts = [
            list(item.messages())
            for suite_id in gated
            for item in suites_service.load_suite(session, run.store, suite_id).items
        ]
        grader, grader_options = first_suite.grader, dict(first_suite.grader_options)
    try:
        rows = parse_demonstrations(text)
        config = parse_stage_config(stage["config"])
        replay = [row for earlier_text in earlier for row in parse_demonstrations(earlier_text)]
    except (DatasetError, ConfigError) as exc:
        raise JobFailed("invalid_stage", str(exc), param=f"stages[{index}]") from None
    pool = build_retention_pool([row.query_dicts() for row in replay], suite_prompts).to_messages()
    return StageData(rows, config, grader, grader_options, replay, pool)


def trained_config(out_dir: Path) -> StageConfig | None:
    """The configuration a stage already started with (its checkpoint or final model), or None."""
    final = out_dir / FINAL / "meta.json"
    meta = json.loads(final.read_text()) if final.is_file() else None
    if meta is None:
        checkpoint = latest_checkpoint(out_dir)
        meta = checkpoint.meta if checkpoint is not None else None
    return None if meta is None else StageConfig.model_validate(meta["config"])


def _choose_method(run: JobRun, job: Job, data: StageData, parent: Path, out_dir: Path) -> StageMethod:
    """The stage's concrete method: the one it already trains with when resumed, else by the probe."""
    index, stage, _ = current_stage(job)
    total = len(job.request["stages"])
    started = trained_config(out_dir)
    if started is not None:
        return StageMethod(started, None, None)
    if data.config.method in ("auto", "sdft") and data.config.readiness_probe != "off":
        with run.ctx.session() as session:
            run.event(session, "stage", messages.probing(index, total))
    chosen = stage_method(
        parent,
        data.rows,
        data.config,
        grader=data.grader,
        grader_options=data.grader_options,
        placement=run.placement,
        engine=run.ctx.eval_backend,
    )
    with run.ctx.session() as session:
        if chosen.readiness is not None:
            report = chosen.readiness
            level = "info" if report.ready or chosen.choice is not None else "warn"
            jobs.append_event(
                session,
                job_id=run.job_id,
                level=level,
                type="probe",
                message=report.message,
                data=report.to_dict(),
            )
            note = engine_fallback_note("readiness probe's answers", run.ctx.eval_backend, report.engine)
            if note:
                run.warn(session, note, {"stage": index})
        if chosen.choice is not None:
            run.event(
                session,
                "method",
                messages.method_chosen(index, total, stage["skill"], chosen.choice.reason),
                chosen.choice.to_dict(),
            )
    probed = chosen.readiness
    enforce = data.config.method == "sdft" and data.config.readiness_probe == "enforce"
    if enforce and probed is not None and not probed.ready:
        raise JobFailed(
            "teacher_not_ready", messages.teacher_not_ready(probed.message), param=f"stages[{index}]"
        )
    return chosen


class StepReporter:
    """Turns each step's metrics into job progress and events, and warns once per stage when the
    rollouts copy the teacher template or the probe says the student is not learning."""

    def __init__(self, run: JobRun, index: int, total: int, skill: str) -> None:
        self.run, self.index, self.total, self.skill = run, index, total, skill
        self.leak_warned = False
        self.stall_warned = False
        self.fallback_warned = False
        self.last: StepMetrics | None = None

    def __call__(self, m: StepMetrics) -> None:
        self.last = m
        metrics = {"stage": self.index, "skill": self.skill, **m.to_dict()}
        with self.run.ctx.session() as session:
            leaking = m.rollout_leak_fraction is not None and m.rollout_leak_fraction >= LEAK_WARN_FRACTION
            if leaking and not self.leak_warned:
                self.leak_warned = True
                assert m.rollout_leak_fraction is not None
                self.run.warn(
                    session,
                    messages.leaking(self.index, self.total, m.step, m.rollout_leak_fraction),
                    metrics,
                )
            if m.learning_stalled and not self.stall_warned and m.probe_baseline is not None:
                self.stall_warned = True
                message = stall_message(
                    stage=self.index + 1,
                    total=self.total,
                    step=m.step,
                    steps=m.total_steps,
                    baseline=m.probe_baseline,
                    current=m.probe_divergence,
                    baseline_score=m.probe_baseline_score,
                    method=m.method,
                )
                self.run.warn(session, message, metrics)
            fallback = engine_fallback_note("rollouts", self.run.ctx.rollout_backend, m.rollout_engine)
            if fallback and not self.fallback_warned:
                self.fallback_warned = True
                self.run.warn(session, fallback, metrics)
            if jobs.update_progress(
                session,
                self.run.job_id,
                expected_status=JobStatus.RUNNING,
                step=m.step,
                total_steps=m.total_steps,
                metrics=metrics,
            ):
                message = messages.step(self.index, self.total, self.skill, m.step, m.total_steps)
                jobs.append_event(
                    session,
                    job_id=self.run.job_id,
                    level="info",
                    type="metrics",
                    message=message,
                    data=metrics,
                )


def train_stage(run: JobRun, job: Job) -> None:
    index, stage, parent_id = current_stage(job)
    total = len(job.request["stages"])
    with run.ctx.session() as session:
        parent = parent_dir(session, parent_id)
    data = _load(run, job)
    out_dir = run.ctx.settings.storage_path / "runs" / run.job_id / f"stage-{index}"
    chosen = _choose_method(run, job, data, parent, out_dir)
    config = chosen.config
    reporter = StepReporter(run, index, total, stage["skill"])

    def should_stop() -> bool:
        run.heartbeat.check()
        with run.ctx.session() as session:
            return jobs.get_job(session, run.job_id).status != JobStatus.RUNNING

    backend_factory = run.ctx.backend_factory
    with run.ctx.session() as session:
        run.event(session, "stage", messages.training(index, total, stage["skill"], config.method))
        parent_is_trained = registry.get_version(session, parent_id).job_id is not None
        on_policy = config.method == "sdft" or config.method in RETENTION_METHODS
        if run.ctx.rollout_backend == "vllm-server" and on_policy and parent_is_trained:
            # The server holds one base model and applies each step's adapter to it; this stage's
            # student sits on a trained version, so those rollouts would come from other weights.
            backend_factory = None
            run.warn(session, messages.server_base_mismatch(index, total, parent_id))
    inputs = StageInputs(
        replay_rows=data.replay_rows,
        retention_prompts=data.retention_prompts if config.method in RETENTION_METHODS else (),
        probe_grader=data.grader,
        probe_grader_options=data.grader_options,
    )
    try:
        result = run_stage(
            base_dir=parent,
            rows=data.rows,
            config=config,
            out_dir=out_dir,
            placement=run.placement,
            backend_factory=backend_factory,
            on_step=reporter,
            should_stop=should_stop,
            inputs=inputs,
        )
    except StageCancelled as stopped:
        run.heartbeat.check()
        with run.ctx.session() as session:
            run.event(session, "message", messages.training_stopped(stopped))
        return
    except (DatasetError, ConfigError, ResumeMismatch) as exc:
        raise JobFailed("invalid_stage", str(exc), param=f"stages[{index}]") from None
    except ModelDirError as exc:  # a model this trainer cannot reproduce the logits of (see loading.py)
        raise JobFailed("unsupported_model", str(exc)) from None
    except torch.OutOfMemoryError as exc:
        raise JobFailed("out_of_memory", messages.out_of_memory(index, exc)) from None
    run.heartbeat.check()
    last = result.last_metrics or reporter.last
    training = {
        "method": config.method,
        "choice": None if chosen.choice is None else chosen.choice.to_dict(),
        "config": config.model_dump(mode="json"),
        "steps": result.steps,
        "diagnostics": None
        if last is None
        else {
            "probe_baseline": last.probe_baseline,
            "probe_divergence": last.probe_divergence,
            "probe_nll": last.probe_nll,
            "probe_baseline_score": last.probe_baseline_score,
            "probe_score": last.probe_score,
            "learning_stalled": last.learning_stalled,
        },
    }
    # The version's files go into the content-addressed store, immutable: the run directory is scratch
    # (`sdft gc` may remove it), a registered version must never change under its sha256.
    stored = run.store.put_dir(result.model_dir)
    with run.ctx.session() as session:
        register_candidate(
            session,
            job,
            index,
            parent_id=parent_id,
            checkpoint_uri=stored.uri,
            checkpoint_sha256=result.sha256,
            training=training,
        )


def register_candidate(
    session: Session,
    job: Job,
    index: int,
    *,
    parent_id: str,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    training: dict[str, Any],
) -> str | None:
    """Register stage `index`'s model and move the job to evaluating, in one transaction; the version
    id, or None with nothing registered when the job left `running` meanwhile (cancelled while the
    model was being stored): a version nobody would gate must not appear in the registry."""
    version = registry.register_version(
        session,
        parent_id=parent_id,
        job_id=job.id,
        skill=job.request["stages"][index]["skill"],
        checkpoint_uri=checkpoint_uri,
        checkpoint_sha256=checkpoint_sha256,
        training=training,
    )
    candidates = [*job.candidate_version_ids[:index], version.id]
    if not jobs.advance(
        session, job.id, JobStatus.RUNNING, JobStatus.EVALUATING, candidate_version_ids=candidates
    ):
        session.rollback()  # its stored files are unreferenced now: `sdft gc` removes them
        return None
    return version.id
