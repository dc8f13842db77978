"""The continual-learning experiment's pure parts: the plan, the learning-rate choice, and the report.

The runner (workers/experiments/continual.py) trains and evaluates; everything here turns its raw
record (a JSON document, `RAW_FORMAT`) into decisions and a Markdown report, without torch, so the
report can be re-rendered from the JSON alone and every rule is unit-tested.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from app.evaluation.forgetting import ForgettingMatrix, SuiteScore, VersionScores, forgetting_matrix

RAW_FORMAT = "continual-experiment/1"
METHODS = ("sdft", "sft")
LABEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ExperimentPlan:
    """What one run does. Both methods get the same data, steps, batch, LoRA and learning-rate grid.

    Sized for a 2-core CPU (see `full` and `quick`): LoRA rank 16 keeps a step cheap; a frozen teacher
    kept general knowledge best at 135M (shared/reference/small-scale-probes.md: 84% kept against 76%
    for the paper's EMA 0.01), so SDFT stages use it instead of the paper's EMA teacher.
    """

    skills: tuple[str, ...]
    methods: tuple[str, ...] = METHODS
    seeds: int = 1
    learning_rates: tuple[float, ...] = (2e-4, 1e-3, 3e-3)
    max_steps: int = 20
    batch_size: int = 8
    micro_batch_size: int = 4
    # Per-skill exceptions (same for both methods). Tool-use prompts run to ~1,400 tokens: a step costs
    # ~60 s here and 4 such sequences at a time with a vLLM engine beside them outgrew 24 GiB.
    steps_by_skill: Mapping[str, int] = field(default_factory=lambda: {"tool-use": 10})
    micro_batch_by_skill: Mapping[str, int] = field(default_factory=lambda: {"tool-use": 2})
    lora_rank: int = 16
    teacher: str = "frozen"
    # "concise" (CONCISE_TEACHER_TEMPLATE) or the paper's; see app/contracts/stage_config.py for why.
    teacher_template: Literal["concise", "paper"] = "concise"
    # Rollout and evaluation length cap per skill (tool calls need the most).
    max_new_tokens: Mapping[str, int] = field(default_factory=dict)
    # "first": the grid runs on the first skill and its best rate serves the method's whole lineage
    # (one learning rate per method, chosen on validation); "every": a fresh choice at every stage.
    grid_stages: Literal["first", "every"] = "first"
    # Where SDFT rollouts and the evaluations' generations run (same choice for both methods).
    rollout_backend: Literal["transformers", "vllm"] = "transformers"
    eval_backend: Literal["transformers", "vllm"] = "transformers"
    label: str = "continual"

    def __post_init__(self) -> None:
        problems = []
        if not self.skills:
            problems.append("skills: give at least one skill")
        if len(set(self.skills)) != len(self.skills):
            problems.append("skills: each skill may appear once")
        unknown = [method for method in self.methods if method not in METHODS]
        if not self.methods or unknown:
            problems.append(
                f"methods: choose from {', '.join(METHODS)} (got {', '.join(self.methods) or 'none'})"
            )
        if len(set(self.methods)) != len(self.methods):
            problems.append("methods: each method may appear once")
        if self.seeds < 1:
            problems.append(f"seeds: must be at least 1, got {self.seeds}")
        if not self.learning_rates or any(not (lr > 0 and math.isfinite(lr)) for lr in self.learning_rates):
            problems.append("learning_rates: give one or more positive learning rates")
        if self.max_steps < 1:
            problems.append(f"max_steps: must be at least 1, got {self.max_steps}")
        missing = [skill for skill in self.skills if skill not in self.max_new_tokens]
        if missing:
            problems.append(f"max_new_tokens: no length cap for {', '.join(missing)}")
        if self.batch_size < 1:
            problems.append(f"batch_size: must be at least 1, got {self.batch_size}")
        if not LABEL_PATTERN.fullmatch(self.label):
            problems.append(
                f"label: {self.label!r} must be lower-case letters, digits, '.', '_' or '-' (it names files)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def full(cls, skills: Sequence[str], **overrides: Any) -> ExperimentPlan:
        return cls(skills=tuple(skills), **overrides)

    @classmethod
    def quick(cls, skill: str, **overrides: Any) -> ExperimentPlan:
        """One skill, one seed, fewer steps: a smoke run of the whole protocol in under 15 minutes."""
        settings: dict[str, Any] = {
            "seeds": 1,
            "max_steps": 12,
            "learning_rates": (2e-4, 1e-3),
            "label": "continual-quick",
            **overrides,
        }
        return cls(skills=(skill,), **settings)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["max_new_tokens"] = dict(self.max_new_tokens)
        data["steps_by_skill"] = dict(self.steps_by_skill)
        data["micro_batch_by_skill"] = dict(self.micro_batch_by_skill)
        return data


def choose_learning_rate(validation_scores: Mapping[float, float]) -> float:
    """The learning rate with the best validation score; a tie goes to the smaller rate (the smaller
    change to the model, so the less forgetting for the same skill score)."""
    if not validation_scores:
        raise ValueError("no validation scores to choose from")
    return min(validation_scores, key=lambda lr: (-validation_scores[lr], lr))


# --------------------------------------------------------------------------- reading the raw record


def _score(cell: Mapping[str, Any]) -> SuiteScore:
    return SuiteScore(score=cell["score"], ci_low=cell["ci_low"], ci_high=cell["ci_high"])


def lineage_matrix(lineage: Mapping[str, Any]) -> ForgettingMatrix:
    """The forgetting matrix of one (method, seed) lineage: base first, then one row per stage."""
    versions = [
        VersionScores(
            version_id="base",
            label="base",
            scores={name: _score(cell) for name, cell in lineage["base_scores"].items()},
        )
    ]
    for stage in lineage["stages"]:
        versions.append(
            VersionScores(
                version_id=f"after-{stage['skill']}",
                label=f"after {stage['skill']}",
                scores={name: _score(cell) for name, cell in stage["test_scores"].items()},
            )
        )
    return forgetting_matrix(versions)


def lineage_key(lineage: Mapping[str, Any]) -> str:
    return f"{lineage['method'].upper()} (seed {lineage['seed']})"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class LineageSummary:
    """Per lineage: the new skill's test score right after learning it (averaged over stages), the
    learned skills' scores at the end, and the share of the general suite still answered right."""

    key: str
    new_skill_mean: float | None
    final_skill_mean: float | None
    general_final: float | None
    general_base: float | None


def summarize(lineage: Mapping[str, Any], general: str) -> LineageSummary:
    stages = lineage["stages"]
    new = [stage["test_scores"][stage["skill"]]["score"] for stage in stages]
    final = [stages[-1]["test_scores"][stage["skill"]]["score"] for stage in stages] if stages else []
    base_general = lineage["base_scores"].get(general)
    last_general = stages[-1]["test_scores"].get(general) if stages else None
    return LineageSummary(
        key=lineage_key(lineage),
        new_skill_mean=_mean(new),
        final_skill_mean=_mean(final),
        general_final=None if last_general is None else last_general["score"],
        general_base=None if base_general is None else base_general["score"],
    )


# --------------------------------------------------------------------------- the report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _matrix_table(matrix: ForgettingMatrix) -> list[str]:
    rows = [
        [label, *("–" if c is None else f"{c.score:.1f} [{c.ci_low:.0f}, {c.ci_high:.0f}]" for c in row)]
        for label, row in zip(matrix.labels, matrix.cells, strict=True)
    ]
    return _table(["model", *matrix.suites], rows)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def render_report(raw: Mapping[str, Any], *, plot_name: str | None, raw_name: str) -> str:
    """The Markdown report, regenerated from the raw record alone."""
    if raw.get("format") != RAW_FORMAT:
        raise ValueError(f"not a {RAW_FORMAT} record (format={raw.get('format')!r})")
    plan = raw["plan"]
    general = raw["general"]["name"]
    lineages = raw["lineages"]
    out: list[str] = [
        f"# Continual-learning experiment: {' vs '.join(m.upper() for m in plan['methods'])}"
        f" on {raw['base']['name']}",
        "",
        f"Regenerated by `{raw['command']}` on {raw['finished_at'][:10]} "
        f"({raw['machine']}): {_minutes(raw.get('compute_seconds', raw['wall_seconds']))} of measured work "
        "(training steps, probes and evaluations, summed as they were measured, cached results "
        f"included); the invocation that wrote this report took {_minutes(raw['wall_seconds'])}. "
        f"Raw record: `{raw_name}`.",
        "",
        "## Protocol",
        "",
        f"- Skills, learned in this order on one lineage per method and seed: {', '.join(plan['skills'])}. "
        "Each has training demonstrations, a validation suite (learning-rate choice only) and a test "
        "suite of different questions (`app/examples`).",
        f"- General suite: the {raw['general']['kept']} of {raw['general']['total']} general questions "
        "the base answers right (filtered by running the base), standing in for earlier tasks.",
        f"- Same for both methods: {plan['max_steps']} optimizer steps per stage"
        + "".join(
            f" ({skill}: {n})"
            for skill, n in plan.get("steps_by_skill", {}).items()
            if skill in plan["skills"]
        )
        + f", {plan['batch_size']} "
        f"prompts per step, LoRA rank {plan['lora_rank']} (all linear layers), cosine schedule, "
        f"learning-rate grid {', '.join(f'{lr:g}' for lr in plan['learning_rates'])}; "
        + (
            "at the first stage each rate is trained and the one with the best validation score on that "
            "skill (ties: the smaller rate) is the method's rate for the whole lineage."
            if plan.get("grid_stages", "first") == "first"
            else "at every stage each rate is trained and the one with the best validation score on the "
            "new skill (ties: the smaller rate) is kept; the lineage goes on from that candidate."
        ),
        f"- SDFT: forward KL over the full vocabulary, first 3 tokens masked, one rollout per prompt at "
        f"temperature 1, the {plan.get('teacher_template', 'paper')} teacher template, "
        f"**{plan['teacher']} teacher**. SFT: cross-entropy "
        "on the demonstrations.",
        "- Every suite is scored greedily after every stage (score in points with a 95% bootstrap "
        "interval); each stage's candidate also goes through the service's gate against its parent "
        "(require improvement on the new skill, tolerance on earlier skills and general). The lineage "
        "continues from the candidate even when the gate rejects it, so the matrix shows the whole "
        "sequence; the verdict is reported.",
        f"- Engines: SDFT rollouts with `{plan.get('rollout_backend', 'transformers')}`, evaluation with "
        f"`{plan.get('eval_backend', 'transformers')}` (greedy; the same engine scores every model, so "
        "both methods are compared on equal terms).",
        f"- Seeds: {plan['seeds']}. Length caps (rollouts and evaluation): "
        + ", ".join(f"{skill} {tokens}" for skill, tokens in plan["max_new_tokens"].items())
        + ".",
        "",
        "## Result",
        "",
    ]
    summaries = [summarize(lineage, general) for lineage in lineages]
    out += _table(
        ["lineage", "new skill, right after learning", "learned skills at the end", f"{general} at the end"],
        [
            [
                s.key,
                _fmt(s.new_skill_mean),
                _fmt(s.final_skill_mean),
                f"{_fmt(s.general_final)} (base {_fmt(s.general_base)})",
            ]
            for s in summaries
        ],
    )
    out += ["", *_reading(summaries, raw), ""]
    if plot_name:
        out += [f"![score per suite over stages, one panel per method]({plot_name})", ""]
    out += ["## Forgetting matrices", ""]
    for lineage in lineages:
        out += [f"### {lineage_key(lineage)}", "", *_matrix_table(lineage_matrix(lineage)), ""]
    out += ["## Stages", "", *_stage_table(lineages), ""]
    out += ["## Learning-rate choice (validation suites)", "", *_grid_table(lineages), ""]
    out += ["## Teacher readiness (SDFT stages)", "", *_readiness_table(lineages), ""]
    out += ["## Template leakage in evaluation outputs", "", *_leakage_table(lineages, raw), ""]
    out += ["## What was tried", "", *raw.get("tried", []), ""]
    return "\n".join(out).rstrip() + "\n"


def _reading(summaries: Sequence[LineageSummary], raw: Mapping[str, Any]) -> list[str]:
    """Plain sentences comparing the methods, computed from the figures (never hand-picked)."""
    by_method: dict[str, list[LineageSummary]] = {}
    for summary in summaries:
        by_method.setdefault(summary.key.split(" ")[0], []).append(summary)
    if not {"SDFT", "SFT"} <= by_method.keys():
        return []

    def mean_of(method: str, attribute: str) -> float | None:
        values = [getattr(s, attribute) for s in by_method[method] if getattr(s, attribute) is not None]
        return _mean(values)

    lines = []
    for attribute, what in (
        ("new_skill_mean", "the new skill right after learning it"),
        ("final_skill_mean", "the learned skills at the end"),
        ("general_final", "the general suite at the end"),
    ):
        sdft, sft = mean_of("SDFT", attribute), mean_of("SFT", attribute)
        if sdft is None or sft is None:
            continue
        verdict = "tie" if abs(sdft - sft) < 0.05 else "SDFT higher" if sdft > sft else "SFT higher"
        lines.append(f"- {what.capitalize()}: SDFT {sdft:.1f}, SFT {sft:.1f} points ({verdict}).")
    ready = [
        stage["readiness"]["ready"]
        for lineage in raw["lineages"]
        for stage in lineage["stages"]
        if stage.get("readiness")
    ]
    if ready:
        lines.append(
            f"- Teacher readiness: the demonstration-conditioned teacher was clearly better than the "
            f"student in {sum(ready)} of {len(ready)} SDFT stages (table below)."
        )
    return lines


def _stage_table(lineages: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for lineage in lineages:
        for stage in lineage["stages"]:
            gate = stage["gate"]
            rows.append(
                [
                    lineage_key(lineage),
                    stage["skill"],
                    f"{stage['chosen_learning_rate']:g}",
                    _minutes(stage.get("probe_seconds", 0.0)),
                    _minutes(stage["train_seconds"]),
                    _minutes(stage["eval_seconds"]),
                    _minutes(stage.get("seconds", stage.get("wall_seconds", 0.0))),
                    "accepted" if gate["accepted"] else "rejected",
                    gate["reason"],
                ]
            )
    headers = [
        "lineage",
        "skill",
        "lr",
        "readiness probe",
        "training (all rates)",
        "evaluation",
        "stage total",
        "gate",
        "why",
    ]
    return _table(headers, rows)


def _grid_table(lineages: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for lineage in lineages:
        for stage in lineage["stages"]:
            for run in stage["grid"]:
                rows.append(
                    [
                        lineage_key(lineage),
                        stage["skill"],
                        f"{run['learning_rate']:g}",
                        _fmt(run.get("validation_score")),
                        _fmt(run.get("final_loss"), 4),
                        _fmt(run.get("rollout_leak_fraction"), 2),
                        f"{run['seconds_per_step']:.1f}",
                        "yes" if run["learning_rate"] == stage["chosen_learning_rate"] else "",
                    ]
                )
    headers = [
        "lineage",
        "skill",
        "lr",
        "validation score",
        "last loss",
        "rollouts leaking",
        "s/step",
        "chosen",
    ]
    return _table(headers, rows)


def _readiness_table(lineages: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for lineage in lineages:
        for stage in lineage["stages"]:
            report = stage.get("readiness")
            if not report:
                continue
            leakage = report["teacher_leakage"]
            rows.append(
                [
                    lineage_key(lineage),
                    stage["skill"],
                    str(report["n"]),
                    f"{100 * report['student_rate']:.0f}%",
                    f"{100 * report['teacher_rate']:.0f}%",
                    _fmt(report["student_nll"], 2),
                    _fmt(report["teacher_nll"], 2),
                    f"{leakage['leaked']}/{leakage['n']}",
                    "ready" if report["ready"] else "not ready",
                ]
            )
    if not rows:
        return ["No SDFT stage in this run."]
    headers = [
        "lineage",
        "skill",
        "held-out rows",
        "student right",
        "teacher right",
        "student NLL",
        "teacher NLL",
        "teacher answers leaking template",
        "verdict",
    ]
    return [
        "Greedy answers to held-out demonstrations' prompts, without (student) and with (teacher) the "
        "demonstration in context, graded with the skill's grader; NLL = mean negative log-likelihood "
        "per demonstration token (nats).",
        "",
        *_table(headers, rows),
    ]


def _top_phrases(leakage: Mapping[str, Any]) -> str:
    counts = sorted(((n, phrase) for phrase, n in leakage.get("by_phrase", {}).items() if n), reverse=True)
    return "; ".join(f'"{phrase}" ({n})' for n, phrase in counts[:2]) or "–"


def _leakage_table(lineages: Sequence[Mapping[str, Any]], raw: Mapping[str, Any]) -> list[str]:
    base = raw["base_leakage"]
    rows = [["base", "–", f"{base['leaked']}/{base['n']}", _top_phrases(base)]]
    for lineage in lineages:
        for stage in lineage["stages"]:
            leakage = stage["leakage"]
            rows.append(
                [
                    lineage_key(lineage),
                    stage["skill"],
                    f"{leakage['leaked']}/{leakage['n']}",
                    _top_phrases(leakage),
                ]
            )
    return [
        "Evaluation outputs (all test suites) that contain a teacher-template phrase or one of the "
        'phrases students picked up in the earlier probes, e.g. "The answer to this question is" '
        "(`app/evaluation/leakage.py`).",
        "",
        *_table(["model", "after stage", "outputs with such phrases", "most frequent"], rows),
    ]
