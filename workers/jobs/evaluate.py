"""The evaluating phase of a job: score parent and candidate on every suite of the lineage, gate, and
decide the version.

    evaluating: parent (from the registry when already scored) and candidate on every suite, gate
                -> running (next stage) | succeeded (then auto-promote) | rejected

The job moves to its next status before anything else happens, so a job cancelled meanwhile is never
promoted: the alias moves only after the job is recorded as succeeded.
"""

from __future__ import annotations

from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
from app.evaluation.results import SuiteResult
from app.evaluation.suites import EvalSuite
from app.jobs import lineage
from app.jobs import service as jobs
from app.jobs.models import Job
from app.jobs.states import JobStatus
from app.registry import service as registry
from app.registry.models import ModelVersion
from app.suites import service as suites_service
from workers.evaluation.cache import evaluate_model_dir
from workers.jobs import messages
from workers.jobs.errors import JobFailed
from workers.jobs.promote import succeed_and_promote
from workers.jobs.run_state import JobRun, current_stage
from workers.jobs.scores import RegistryScoreCache
from workers.rollout.factory import engine_fallback_note


class EvaluationStopped(Exception):
    """The job left `evaluating` (cancelled) while its suites were scored: nothing more to score."""


def _check_still_evaluating(run: JobRun) -> None:
    with run.ctx.session() as session:
        status = jobs.get_job(session, run.job_id).status
    if status != JobStatus.EVALUATING:
        raise EvaluationStopped(f"the job is {status}")


def score_versions(
    run: JobRun, versions: list[ModelVersion], suites: dict[str, EvalSuite]
) -> dict[str, dict[str, SuiteResult]]:
    """version id -> suite id -> result; evaluates and records only what the registry lacks. Checks
    after each suite that the job is still evaluating (raises EvaluationStopped when it is not)."""
    cache = RegistryScoreCache(
        run.ctx.sessions,  # type: ignore[arg-type]
        {v.checkpoint_sha256: v.id for v in versions},
        {suite.sha256: suite_id for suite_id, suite in suites.items()},
    )
    results: dict[str, dict[str, SuiteResult]] = {}
    for version in versions:
        directory = registry.local_model_dir(version)
        if directory is None:
            raise JobFailed("model_unavailable", messages.weights_missing(version.id, version.checkpoint_uri))
        run.heartbeat.check()
        _check_still_evaluating(run)

        def progress(suite: str, done: int, total: int, version_id: str = version.id) -> None:
            if done == total:
                with run.ctx.session() as session:
                    run.event(session, "eval", messages.evaluated(version_id, suite, total))
                _check_still_evaluating(run)

        evaluation = evaluate_model_dir(
            directory,
            list(suites.values()),
            backend_kind=run.ctx.eval_backend,
            cache=cache,
            placement=run.placement,
            progress=progress,
        )
        note = engine_fallback_note("evaluation", run.ctx.eval_backend, evaluation.engine)
        if note:
            with run.ctx.session() as session:
                run.warn(session, note, {"version_id": version.id})
        results[version.id] = dict(zip(suites, evaluation.results, strict=True))
    return results


def evaluate_and_gate(run: JobRun, job: Job) -> None:
    index, stage, parent_id = current_stage(job)
    candidate_id = job.candidate_version_ids[index]
    total = len(job.request["stages"])
    with run.ctx.session() as session:
        roles = lineage.suite_roles(session, job, index, parent_id)
        parsed = {suite_id: suites_service.load_suite(session, run.store, suite_id) for suite_id in roles}
        parent = registry.get_version(session, parent_id)
        candidate = registry.get_version(session, candidate_id)
        session.expunge_all()
        run.event(session, "stage", messages.evaluating(index, total, len(roles)), {"suites": dict(roles)})
    try:
        results = score_versions(run, [parent, candidate], parsed)
    except EvaluationStopped as stopped:
        with run.ctx.session() as session:
            run.event(session, "message", messages.evaluation_stopped(stopped))
        return
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
    run.heartbeat.check()
    with run.ctx.session() as session:
        decision = registry.VersionStatus.ACCEPTED if report.accepted else registry.VersionStatus.REJECTED
        registry.decide_version(
            session, version_id=candidate.id, status=decision, gate_report=report.to_dict()
        )
        jobs.append_event(
            session,
            job_id=run.job_id,
            level="info" if report.accepted else "warn",
            type="gate",
            message=messages.verdict(index, total, stage["skill"], decision, report.reason),
            data=report.to_dict(),
        )
        if not report.accepted:
            error = {"code": "gate_rejected", "message": report.reason, "param": f"stages[{index}]"}
            jobs.advance(session, run.job_id, JobStatus.EVALUATING, JobStatus.REJECTED, error=error)
        elif index + 1 < total:
            jobs.advance(
                session,
                run.job_id,
                JobStatus.EVALUATING,
                JobStatus.RUNNING,
                current_stage=index + 1,
                step=None,
                total_steps=None,
            )
        else:
            succeed_and_promote(session, job, candidate.id)
