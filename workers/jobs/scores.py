"""The job pipeline's `ScoreCache`: scores live in the registry (`score` rows), looked up by checkpoint
sha, suite sha and decoding hash, so a parent already scored is read back, never re-run, and every
candidate gated against it reuses its scores."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.evaluation.results import ItemRecord, SuiteResult, decoding_hash
from app.evaluation.suites import EvalSuite
from app.registry import service as registry


class RegistryScoreCache:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        versions_by_sha: Mapping[str, str],
        suite_ids: Mapping[str, str],
    ) -> None:
        """versions_by_sha: checkpoint sha -> the version to record under; suite_ids: suite sha -> id."""
        self.sessions = sessions
        self.versions_by_sha = versions_by_sha
        self.suite_ids = suite_ids

    def lookup(self, model_sha256: str, suite: EvalSuite, decoding: Mapping[str, Any]) -> SuiteResult | None:
        with session_scope(self.sessions) as session:
            found = registry.get_cached_score(
                session,
                checkpoint_sha256=model_sha256,
                suite_sha256=suite.sha256,
                decoding_hash=decoding_hash(decoding),
            )
            if found is None:
                return None
            return SuiteResult.from_records(
                suite_name=suite.meta.name,
                suite_sha256=suite.sha256,
                decoding=dict(decoding),
                records=[ItemRecord.from_dict(r) for r in found.per_item],
                model_sha256=model_sha256,
            )

    def store(
        self, model_sha256: str, suite: EvalSuite, decoding: Mapping[str, Any], result: SuiteResult
    ) -> None:
        with session_scope(self.sessions) as session:
            registry.record_score(
                session,
                model_version_id=self.versions_by_sha[model_sha256],
                suite_sha256=result.suite_sha256,
                decoding_hash=decoding_hash(decoding),
                score=result.score,
                n=result.n,
                per_item=[record.to_dict() for record in result.records],
                ci_low=result.ci_low,
                ci_high=result.ci_high,
                suite_id=self.suite_ids.get(suite.sha256),
            )
