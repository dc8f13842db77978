"""Scores of versions on suites, through the registry: a (version, suite sha, decoding) already scored
is read back, never re-run, so a parent is evaluated once for all the candidates gated against it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.evaluation.results import ItemRecord, SuiteResult, effective_decoding
from app.evaluation.suites import Suite
from app.registry import service as registry
from app.registry.models import ModelVersion
from workers.evaluation.cache import evaluate_model_dir
from workers.jobs.errors import JobFailed
from workers.models.loading import Placement

if TYPE_CHECKING:
    from workers.jobs.pipeline import WorkerContext

ENGINE = "transformers"


def decoding_hash(suite: Suite) -> str:
    decoding = effective_decoding(suite.meta.decoding.model_dump(mode="json"), engine=ENGINE)
    return hashlib.sha256(json.dumps(decoding, sort_keys=True).encode()).hexdigest()


def _bound(
    progress: Callable[[ModelVersion, str, int, int], None], version: ModelVersion
) -> Callable[[str, int, int], None]:
    def report(suite: str, done: int, total: int) -> None:
        progress(version, suite, done, total)

    return report


def score_versions(
    ctx: WorkerContext,
    versions: list[ModelVersion],
    suites: dict[str, Suite],
    *,
    placement: Placement,
    progress: Callable[[ModelVersion, str, int, int], None],
    check: Callable[[], None],
) -> dict[str, dict[str, SuiteResult]]:
    """version id -> suite id -> result; evaluates and records only what the registry lacks."""
    results: dict[str, dict[str, SuiteResult]] = {}
    for version in versions:
        found: dict[str, SuiteResult] = {}
        with ctx.session() as session:
            for suite_id, suite in suites.items():
                cached = registry.get_cached_score(
                    session,
                    model_version_id=version.id,
                    suite_sha256=suite.sha256,
                    decoding_hash=decoding_hash(suite),
                )
                if cached is not None:
                    found[suite_id] = SuiteResult.from_records(
                        suite_name=suite.meta.name,
                        suite_sha256=suite.sha256,
                        decoding=suite.meta.decoding.model_dump(mode="json"),
                        records=[ItemRecord.from_dict(r) for r in cached.per_item],
                        model_sha256=version.checkpoint_sha256,
                    )
        missing = [suite_id for suite_id in suites if suite_id not in found]
        if missing:
            directory = registry.local_model_dir(version)
            if directory is None:
                raise JobFailed("model_unavailable", f"the weights of {version.id} are not on this worker")
            check()
            evaluation = evaluate_model_dir(
                directory,
                [suites[suite_id] for suite_id in missing],
                backend_kind=ENGINE,
                placement=placement,
                progress=_bound(progress, version),
            )
            with ctx.session() as session:
                for suite_id, result in zip(missing, evaluation.results, strict=True):
                    registry.record_score(
                        session,
                        model_version_id=version.id,
                        suite_sha256=result.suite_sha256,
                        decoding_hash=decoding_hash(suites[suite_id]),
                        score=result.score,
                        n=result.n,
                        per_item=[record.to_dict() for record in result.records],
                        ci_low=result.ci_low,
                        ci_high=result.ci_high,
                        suite_id=suite_id,
                    )
                    found[suite_id] = result
        results[version.id] = found
    return results
