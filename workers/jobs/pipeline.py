"""One job on one worker: claim it, then for each skill stage train, evaluate every suite of the
lineage, gate, register, and finally promote. Every step is idempotent and the job row (status,
current stage, candidate ids) says where to continue, so a redelivered task resumes a crashed job:

    queued -> running: teacher readiness probe, train (resumes from the stage's last checkpoint),
                       register the candidate version                       -> evaluating
    evaluating:        evaluate parent (cached) and candidate on every suite, gate, decide the version
                       -> running (next stage) | succeeded (+ auto-promote) | rejected

Database transactions are short and never span compute (SQLite has one writer).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from app.contracts.demonstrations import DatasetError, Demonstration, parse_demonstrations
from app.contracts.stage_config import ConfigError, StageConfig, parse_stage_config
from app.db import make_engine, make_sessionmaker, session_scope
from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
from app.evaluation.results import SuiteResult
from app.evaluation.suites import Suite
from app.files import service as files
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus, is_terminal
from app.leases import service as leases
from app.registry import aliases
from app.registry import service as registry
from app.registry.models import ModelVersion
from app.settings import Settings
from app.storage import make_store
from app.suites import service as suites_service
from workers.evaluation.probe import teacher_readiness
from workers.jobs import lineage_suites
from workers.jobs.errors import JobFailed, LeaseLost
from workers.jobs.scoring import score_versions
from workers.models.loading import Placement, default_placement, load_model, load_tokenizer
from workers.training.checkpointing import latest_checkpoint
from workers.training.loop import BackendFactory, ResumeMismatch, StageCancelled, StepMetrics, run_stage

log = logging.getLogger(__name__)
# Warn once per stage when this share of a step's rollouts copies the teacher template's wording.
LEAK_WARN_FRACTION = 0.25


class LineageBusy(Exception):
    """Another job is extending the same version; this one waits its turn (the task retries later)."""

    def __init__(self, holder_job_id: str) -> None:
        super().__init__(f"waiting for {holder_job_id}, which extends the same version")
        self.holder_job_id = holder_job_id


@dataclass
class WorkerContext:
    settings: Settings
    worker_id: str
    lease_ttl_seconds: float = 120.0
    backend_factory: BackendFactory | None = None  # None: transformers.generate on the student
    rollout_backend: str = "transformers"  # the name behind backend_factory (RolloutSettings.backend)
    placement: Placement | None = None
    # The worker task passes its process-wide sessions; tests and scripts may leave it to be built.
    sessions: sessionmaker[Session] | None = None

    def __post_init__(self) -> None:
        if self.sessions is None:
            self.sessions = make_sessionmaker(make_engine(self.settings.database_url))

    @contextmanager
    def session(self) -> Iterator[Session]:
        assert self.sessions is not None  # set in __post_init__
        with session_scope(self.sessions) as session:
            yield session


class Heartbeat:
    """Renews the job and lineage leases from a thread while the job runs; `lost` once one is gone."""

    def __init__(self, ctx: WorkerContext, keys: list[str]) -> None:
        self.ctx = ctx
        self.keys = keys
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sdft-lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = self.ctx.lease_ttl_seconds / 4
        while not self._stop.wait(interval):
            try:
                with self.ctx.session() as session:
                    for key in self.keys:
                        if not leases.renew(
                            session, key=key, owner=self.ctx.worker_id, ttl_seconds=self.ctx.lease_ttl_seconds
                        ):
                            self.lost.set()
            except Exception as exc:  # a database hiccup: try again next beat, the lease has slack
                log.warning("lease heartbeat failed: %s", exc)


def _event(
    session: Session, job_id: str, type_: str, message: str, data: dict[str, Any] | None = None
) -> None:
    jobs.append_event(session, job_id=job_id, level="info", type=type_, message=message, data=data)


def _warn(session: Session, job_id: str, message: str, data: dict[str, Any] | None = None) -> None:
    jobs.append_event(session, job_id=job_id, level="warn", type="message", message=message, data=data)


class JobRun:
    def __init__(self, job_id: str, ctx: WorkerContext) -> None:
        self.job_id = job_id
        self.ctx = ctx
        self.store = make_store(ctx.settings.storage_path)
        self.placement = ctx.placement or default_placement()

    # ------------------------------------------------------------------ claim and loop

    def run(self) -> str:
        """Run the job as far as it goes; returns what happened, for the task log."""
        with self.ctx.session() as session:
            job = jobs.get_job(session, self.job_id)
            status = JobStatus(job.status)
            if is_terminal(status) or status == JobStatus.VALIDATING:
                return f"nothing to do: {self.job_id} is {status}"
            keys = [leases.job_key(self.job_id), leases.lineage_key(job.base_version_id)]
            if not leases.acquire(
                session,
                key=keys[0],
                owner=self.ctx.worker_id,
                job_id=self.job_id,
                ttl_seconds=self.ctx.lease_ttl_seconds,
            ):
                return f"nothing to do: another worker holds {self.job_id}"
            if not leases.acquire(
                session,
                key=keys[1],
                owner=self.ctx.worker_id,
                job_id=self.job_id,
                ttl_seconds=self.ctx.lease_ttl_seconds,
                same_job_ok=True,
            ):
                holder = leases.holder(session, keys[1])
                leases.release(session, key=keys[0], owner=self.ctx.worker_id)
                raise LineageBusy(holder.job_id if holder else "another job")
            if status == JobStatus.QUEUED:
                jobs.advance(session, self.job_id, JobStatus.QUEUED, JobStatus.RUNNING)
            else:
                _event(session, self.job_id, "message", f"resumed by {self.ctx.worker_id} ({status})")
        try:
            with Heartbeat(self.ctx, keys) as heartbeat:
                self.heartbeat = heartbeat
                return self._loop()
        except JobFailed as failure:
            self._fail(failure)
            return f"failed: {failure.code}: {failure.message}"
        finally:
            with self.ctx.session() as session:
                for key in keys:
                    leases.release(session, key=key, owner=self.ctx.worker_id)

    def _loop(self) -> str:
        while True:
            with self.ctx.session() as session:
                job = jobs.get_job(session, self.job_id)
                session.expunge(job)
            status = JobStatus(job.status)
            if status == JobStatus.RUNNING:
                self._train(job)
            elif status == JobStatus.EVALUATING:
                self._evaluate_and_gate(job)
            else:
                return f"{self.job_id} is {status}"

    def _fail(self, failure: JobFailed) -> None:
        with self.ctx.session() as session:
            job = jobs.get_job(session, self.job_id)
            status = JobStatus(job.status)
            if not is_terminal(status):
                jobs.advance(session, self.job_id, status, JobStatus.FAILED, error=failure.to_error())

    def _check_lease(self) -> None:
        if self.heartbeat.lost.is_set():
            raise LeaseLost(f"{self.job_id} was taken over by another worker")

    # ------------------------------------------------------------------ training

    def _stage(self, job: Job) -> tuple[int, dict[str, Any], str]:
        index = job.current_stage
        stage = job.request["stages"][index]
        parent_id = job.base_version_id if index == 0 else job.candidate_version_ids[index - 1]
        return index, stage, parent_id

    def _parent_dir(self, session: Session, parent_id: str) -> Path:
        parent = registry.get_version(session, parent_id)
        path = registry.local_model_dir(parent)
        if path is None:
            raise JobFailed(
                "model_unavailable",
                f"the weights of {parent_id} ({parent.checkpoint_uri}) are not on this worker; mount the "
                "storage directory the API uses",
            )
        return path

    def _train(self, job: Job) -> None:
        index, stage, parent_id = self._stage(job)
        total = len(job.request["stages"])
        with self.ctx.session() as session:
            parent_dir = self._parent_dir(session, parent_id)
            text = files.read_text(self.store, files.get_file(session, stage["training_file"]))
            first_suite = suites_service.get_suite(session, stage["suites"][0])
            grader, grader_options = first_suite.grader, dict(first_suite.grader_options)
        try:
            rows = parse_demonstrations(text)
            config = parse_stage_config(stage["config"])
        except (DatasetError, ConfigError) as exc:
            raise JobFailed("invalid_stage", str(exc), param=f"stages[{index}]") from None
        out_dir = self.ctx.settings.storage_path / "runs" / self.job_id / f"stage-{index}"
        if config.method == "sdft" and config.readiness_probe != "off" and latest_checkpoint(out_dir) is None:
            self._probe(index, parent_dir, rows, config, grader, grader_options)

        leak_warned = False

        def on_step(m: StepMetrics) -> None:
            nonlocal leak_warned
            with self.ctx.session() as session:
                metrics = {"stage": index, "skill": stage["skill"], **m.to_dict()}
                leaking = (
                    m.rollout_leak_fraction is not None and m.rollout_leak_fraction >= LEAK_WARN_FRACTION
                )
                if leaking and not leak_warned:
                    leak_warned = True
                    _warn(
                        session,
                        self.job_id,
                        (
                            f"stage {index + 1}/{total} step {m.step}: {m.rollout_leak_fraction:.0%} of the "
                            "rollouts contain teacher-template phrases (the student is copying the teacher's "
                            "scaffolding); a frozen teacher, a template without that wording, or method "
                            "'sft' avoid it"
                        ),
                        data=metrics,
                    )
                if jobs.update_progress(
                    session,
                    self.job_id,
                    expected_status=JobStatus.RUNNING,
                    step=m.step,
                    total_steps=m.total_steps,
                    metrics=metrics,
                ):
                    message = f"stage {index + 1}/{total} ({stage['skill']}) step {m.step}/{m.total_steps}"
                    jobs.append_event(
                        session,
                        job_id=self.job_id,
                        level="info",
                        type="metrics",
                        message=message,
                        data=metrics,
                    )

        def should_stop() -> bool:
            self._check_lease()
            with self.ctx.session() as session:
                return jobs.get_job(session, self.job_id).status != JobStatus.RUNNING

        backend_factory = self.ctx.backend_factory
        with self.ctx.session() as session:
            _event(session, self.job_id, "stage", f"stage {index + 1}/{total}: training {stage['skill']}")
            parent_is_trained = registry.get_version(session, parent_id).job_id is not None
            if self.ctx.rollout_backend == "vllm-server" and config.method == "sdft" and parent_is_trained:
                # The server holds one base model and applies each step's adapter to it; this stage's
                # student sits on a trained version, so those rollouts would come from other weights.
                backend_factory = None
                _warn(
                    session,
                    self.job_id,
                    (
                        f"stage {index + 1}/{total}: the vLLM rollout server serves the base model, but this "
                        f"stage starts from {parent_id}, a trained version; its adapters would be applied to "
                        "other weights, so this stage samples its rollouts with transformers.generate"
                    ),
                )
        try:
            result = run_stage(
                base_dir=parent_dir,
                rows=rows,
                config=config,
                out_dir=out_dir,
                placement=self.placement,
                backend_factory=backend_factory,
                on_step=on_step,
                should_stop=should_stop,
            )
        except StageCancelled as stopped:
            self._check_lease()
            with self.ctx.session() as session:
                _event(session, self.job_id, "message", f"training stopped: {stopped}")
            return
        except (DatasetError, ConfigError, ResumeMismatch) as exc:
            raise JobFailed("invalid_stage", str(exc), param=f"stages[{index}]") from None
        except torch.OutOfMemoryError as exc:
            raise JobFailed(
                "out_of_memory",
                f"out of memory while training stage {index}: {exc}; lower batch_size, "
                "micro_batch_size or max_new_tokens, or use LoRA",
            ) from None
        self._check_lease()
        with self.ctx.session() as session:
            version = registry.register_version(
                session,
                parent_id=parent_id,
                job_id=self.job_id,
                skill=stage["skill"],
                checkpoint_uri=result.model_dir.resolve().as_uri(),
                checkpoint_sha256=result.sha256,
            )
            candidates = [*job.candidate_version_ids[:index], version.id]
            jobs.advance(
                session,
                self.job_id,
                JobStatus.RUNNING,
                JobStatus.EVALUATING,
                candidate_version_ids=candidates,
            )

    def _probe(
        self,
        index: int,
        parent_dir: Path,
        rows: list[Demonstration],
        config: StageConfig,
        grader: str,
        grader_options: dict[str, Any],
    ) -> None:
        with self.ctx.session() as session:
            _event(session, self.job_id, "stage", f"stage {index + 1}: teacher readiness probe")
        model = load_model(parent_dir, self.placement)
        tokenizer = load_tokenizer(parent_dir)
        try:
            report = teacher_readiness(
                model,
                tokenizer,
                rows,
                grader=grader if grader not in ("regex", "choice") else "contains",
                grader_options=grader_options,
                config=config,
                max_new_tokens=min(config.max_new_tokens, 128),
                placement=self.placement,
            )
        finally:
            del model
        data = report.to_dict()
        with self.ctx.session() as session:
            level = "info" if report.ready else "warn"
            jobs.append_event(
                session, job_id=self.job_id, level=level, type="probe", message=report.message, data=data
            )
        if not report.ready and config.readiness_probe == "enforce":
            raise JobFailed(
                "teacher_not_ready",
                f"{report.message} (set hyperparameters.readiness_probe to 'warn' to train anyway)",
                param=f"stages[{index}]",
            )

    # ------------------------------------------------------------------ evaluation and gate

    def _evaluate_and_gate(self, job: Job) -> None:
        index, stage, parent_id = self._stage(job)
        candidate_id = job.candidate_version_ids[index]
        total = len(job.request["stages"])
        with self.ctx.session() as session:
            roles = lineage_suites.suite_roles(session, job, index, parent_id)
            parsed = {
                suite_id: suites_service.load_suite(session, self.store, suite_id) for suite_id in roles
            }
            parent = registry.get_version(session, parent_id)
            candidate = registry.get_version(session, candidate_id)
            session.expunge_all()
            _event(
                session,
                self.job_id,
                "stage",
                f"stage {index + 1}/{total}: evaluating on {len(roles)} suite(s)",
                {"suites": dict(roles)},
            )
        results = self._score([parent, candidate], parsed)
        comparisons = [
            SuiteComparison.for_suite(
                parsed[suite_id],
                role,
                results[parent.id][suite_id].item_scores(),
                results[candidate.id][suite_id].item_scores(),
            )
            for suite_id, role in roles.items()
        ]
        report = evaluate_gate(
            comparisons,
            parent_checkpoint_sha256=parent.checkpoint_sha256,
            candidate_checkpoint_sha256=candidate.checkpoint_sha256,
            options=GateOptions(require_improvement=bool(job.request.get("require_improvement", True))),
        )
        self._check_lease()
        with self.ctx.session() as session:
            decision = registry.VersionStatus.ACCEPTED if report.accepted else registry.VersionStatus.REJECTED
            registry.decide_version(
                session, version_id=candidate.id, status=decision, gate_report=report.to_dict()
            )
            jobs.append_event(
                session,
                job_id=self.job_id,
                level="info" if report.accepted else "warn",
                type="gate",
                message=f"stage {index + 1}/{total} ({stage['skill']}): {decision}: {report.reason}",
                data=report.to_dict(),
            )
            if not report.accepted:
                error = {"code": "gate_rejected", "message": report.reason, "param": f"stages[{index}]"}
                jobs.advance(session, self.job_id, JobStatus.EVALUATING, JobStatus.REJECTED, error=error)
            elif index + 1 < total:
                jobs.advance(
                    session,
                    self.job_id,
                    JobStatus.EVALUATING,
                    JobStatus.RUNNING,
                    current_stage=index + 1,
                    step=None,
                    total_steps=None,
                )
            else:
                self._promote(session, job, candidate.id)
                jobs.advance(session, self.job_id, JobStatus.EVALUATING, JobStatus.SUCCEEDED)

    def _score(
        self, versions: list[ModelVersion], parsed: dict[str, Suite]
    ) -> dict[str, dict[str, SuiteResult]]:
        def progress(version: ModelVersion, suite: str, done: int, total: int) -> None:
            if done == total:
                with self.ctx.session() as session:
                    _event(session, self.job_id, "eval", f"evaluated {version.id} on {suite} ({total} items)")

        return score_versions(
            self.ctx,
            versions,
            parsed,
            placement=self.placement,
            progress=progress,
            check=self._check_lease,
        )

    def _promote(self, session: Session, job: Job, version_id: str) -> None:
        name = job.request.get("auto_promote")
        if not name:
            return
        base_ref: str = job.request["base"]
        # Move the alias only if it still points where the job started (or at nothing), never over a
        # human's promotion made meanwhile.
        expected = job.base_version_id if base_ref == f"alias:{name}" else aliases.UNSET
        try:
            aliases.move(
                session,
                name=name,
                version_id=version_id,
                actor=f"job {self.job_id}",
                expected_version=expected,
                reason=f"auto_promote after job {self.job_id} passed its gates",
            )
            _event(session, self.job_id, "message", f"alias {name} -> {version_id}")
        except Exception as exc:  # a 409: someone moved it; the job still succeeded
            jobs.append_event(
                session,
                job_id=self.job_id,
                level="warn",
                type="message",
                message=f"auto_promote of {name} skipped: {exc}",
            )


def run_job(job_id: str, ctx: WorkerContext) -> str:
    return JobRun(job_id, ctx).run()
