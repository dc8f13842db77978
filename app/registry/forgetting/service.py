"""The forgetting matrix of a lineage, from the scores recorded in the registry."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.service import Principal, can_see
from app.evaluation.results import SuiteScore
from app.registry.forgetting.matrix import ForgettingMatrix, VersionScores, forgetting_matrix
from app.registry.models import Score
from app.registry.service import lineage, version_label
from app.suites.models import Suite
from app.suites.service import ANOTHER_TEAMS_SUITE


def lineage_matrix(session: Session, version_id: str, *, viewer: Principal | None) -> ForgettingMatrix:
    """Versions (root first) x suites (by name) of the lineage ending at `version_id`, from recorded
    scores in points. Where a version has several scores for a suite (decoding setups), the latest wins.
    Scores are shared across teams, suite names are not: another team's suite is shown to `viewer` as
    "another team's suite N" (None: the system, which sees every name)."""
    chain = list(reversed(lineage(session, version_id)))
    rows = session.execute(
        select(Score, Suite.name, Suite.team)
        .join(Suite, Suite.suite_sha256 == Score.suite_sha256)
        .where(Score.model_version_id.in_([v.id for v in chain]))
        .order_by(Score.id)
    ).all()
    hidden: dict[str, str] = {}
    by_version: dict[str, dict[str, SuiteScore]] = {v.id: {} for v in chain}
    for score, name, team in rows:
        suite_name = name
        if not can_see(viewer, team):
            suite_name = hidden.setdefault(name, f"{ANOTHER_TEAMS_SUITE} {len(hidden) + 1}")
        low = score.ci_low if score.ci_low is not None else score.score
        high = score.ci_high if score.ci_high is not None else score.score
        by_version[score.model_version_id][suite_name] = SuiteScore(
            score=score.score, ci_low=low, ci_high=high
        )
    return forgetting_matrix(
        [VersionScores(version_id=v.id, label=version_label(v), scores=by_version[v.id]) for v in chain]
    )
