"""`sdft experiment continual`: SDFT against SFT, three skills in sequence on one lineage.

Runs through the service's own parts, not a separate script path: `run_stage` trains (the code the
Celery worker runs), `evaluate_model_dir` scores (the evaluation the gate uses, with its cache),
`teacher_readiness` probes, `evaluate_gate` judges every candidate against its parent. It skips the
database and the queue, which add nothing to the measurement. Every stage and every evaluation is
idempotent (finished stages and cached scores are reused), so an interrupted run resumes where it
stopped when given the same --work-dir.

Protocol and report: app/experiments/continual.py.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.contracts.artifacts import model_dir_sha256
from app.contracts.demonstrations import Demonstration
from app.contracts.rollout_settings import RolloutSettings
from app.contracts.stage_config import CONCISE_TEACHER_TEMPLATE, PAPER_TEACHER_TEMPLATE, StageConfig
from app.evaluation.forgetting import plot_forgetting_panels
from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
from app.evaluation.leakage import template_leakage
from app.evaluation.results import SuiteResult
from app.evaluation.suites import Suite
from app.examples import GENERAL_SUITE, SKILLS
from app.experiments.continual import (
    RAW_FORMAT,
    ExperimentPlan,
    choose_learning_rate,
    lineage_key,
    lineage_matrix,
    render_report,
)
from workers.evaluation.cache import EvalCache, evaluate_model_dir
from workers.evaluation.probe import teacher_readiness
from workers.models.loading import Placement, default_placement, load_model, load_tokenizer
from workers.rollout.factory import make_backend_factory
from workers.training.loop import StepMetrics, run_stage

Log = Callable[[str], None]

# What earlier runs established, quoted in every report so the negative results are not lost.
TRIED = [
    "Earlier probes on this machine (`shared/reference/small-scale-probes.md`, full fine-tuning, 40 "
    "invented facts, one seed): SFT learned the facts in 30 steps (95–100% on the training questions) "
    "but kept only 49–68% of the general answers; SDFT with reverse KL (EMA 0.05 or frozen), forward KL "
    "(EMA 0.01 or frozen, first 3 tokens masked) learned 0–2.5% in 30 steps while keeping 59–84%; with "
    "120 steps, forward KL and a frozen teacher reached 27.5% / 17.5% and still kept 84%.",
    "Teacher template, probed on the base before any training (8 held-out demonstrations, greedy): "
    "with the paper's template the teacher answered 62% of the knowledge rows (student 0%) and 0% of "
    'the format rows, writing "To solve this problem, I started by adding ..." as the template\'s '
    '"response of your own, including the thinking process" asks; with the concise template '
    "(`CONCISE_TEACHER_TEMPLATE`) 75% of the knowledge rows (demonstration NLL per token 3.13 -> 0.23) "
    'and on the format rows the demonstrated first line ("26 + 82 = 108") but not the "#### 108" '
    "line the grader wants, so still 0%. The quick run (`continual-quick.md`) used the paper's template.",
    "Teacher: frozen (this run) against the paper's EMA 0.01: the EMA teacher fed the student's "
    "template wording back into itself and kept less general knowledge at this size (76% vs 84%).",
    "Adapter vs full fine-tuning: this run uses LoRA rank 16 for both methods, which keeps a CPU step "
    "cheap and, for SFT, limits how far the model moves per step; the probes above were full "
    "fine-tuning.",
    "Loss support: forward KL over the full vocabulary (the paper's); top-k and sampled-token "
    "estimators are available (`support`) but not used here.",
    "Steps: the same fixed step count for both methods per stage (20 here, 12 in the quick run), the "
    "most this 2-core machine affords in 90 minutes with three skills; the probes found SDFT starting "
    "to learn facts only after ~80 steps.",
]


def _stage_config(
    plan: ExperimentPlan, method: str, seed: int, skill: str, learning_rate: float
) -> StageConfig:
    return StageConfig(
        method=method,  # type: ignore[arg-type]  # checked by ExperimentPlan
        seed=seed,
        learning_rate=learning_rate,
        batch_size=plan.batch_size,
        micro_batch_size=min(plan.micro_batch_by_skill.get(skill, plan.micro_batch_size), plan.batch_size),
        max_steps=plan.steps_by_skill.get(skill, plan.max_steps),
        lora_rank=plan.lora_rank,
        teacher=plan.teacher,  # type: ignore[arg-type]
        teacher_template=CONCISE_TEACHER_TEMPLATE
        if plan.teacher_template == "concise"
        else PAPER_TEACHER_TEMPLATE,
        max_new_tokens=plan.max_new_tokens[skill],
        max_prompt_tokens=SKILLS[skill].max_prompt_tokens,
        # Tool-use steps take a minute: checkpoint often enough that an interrupted stage resumes.
        checkpoint_every=5 if skill in plan.steps_by_skill else plan.max_steps,
        readiness_probe="off",  # probed once per stage below, for the report
    )


def _with_cap(suite: Suite, tokens: int) -> Suite:
    """The suite with its generation length capped at the plan's length for that skill."""
    decoding = suite.meta.decoding.model_copy(
        update={"max_new_tokens": min(tokens, suite.meta.decoding.max_new_tokens)}
    )
    return replace(suite, meta=suite.meta.model_copy(update={"decoding": decoding}))


def final_steps(metrics_log: Path, steps: int) -> list[dict[str, Any]]:
    """Each step's metrics once, from the execution that counted: a stage resumed from a checkpoint
    re-runs steps already logged, and an abandoned attempt with other settings may have logged more;
    the last entry per step number, for steps 1..steps, is the one in the final model."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in metrics_log.read_text().splitlines() if metrics_log.is_file() else []:
        if line.strip():
            entry = json.loads(line)
            if entry.get("total_steps", steps) == steps:
                by_step[int(entry["step"])] = entry
    return [by_step[step] for step in sorted(by_step) if 1 <= step <= steps]


def _seconds(results: Iterable[SuiteResult]) -> float:
    """Generation time of results, as measured when they were computed (cached ones included), so a
    resumed run reports what the work cost, not how long reading the cache took."""
    return sum(float(result.meta.get("seconds", 0.0)) for result in results)


def _cell(result: SuiteResult) -> dict[str, Any]:
    return {"score": result.score, "ci_low": result.ci_low, "ci_high": result.ci_high, "n": result.n}


class ContinualExperiment:
    def __init__(
        self,
        plan: ExperimentPlan,
        *,
        base_dir: Path,
        work_dir: Path,
        out_dir: Path,
        placement: Placement | None = None,
        log: Log = print,
        command: str = "",
        general_source: Suite | None = None,
        rollout: RolloutSettings | None = None,
    ) -> None:
        self.plan = plan
        self.base_dir = base_dir
        self.work_dir = work_dir
        self.out_dir = out_dir
        self.placement = placement or default_placement()
        self.log = log
        self.command = command
        self.cache = EvalCache(work_dir / "eval-cache")
        self.general_source = general_source or GENERAL_SUITE.suite()
        # A small KV cache: 8 rollouts need little, and the trainer shares the machine's memory.
        self.rollout = rollout or RolloutSettings(backend="vllm", gpu_memory_utilization=0.08)
        self.backend_factory = make_backend_factory(self.rollout) if plan.rollout_backend == "vllm" else None
        self.demonstrations: dict[str, list[Demonstration]] = {
            skill: SKILLS[skill].demonstrations() for skill in plan.skills
        }
        self.validation = {
            skill: _with_cap(SKILLS[skill].suite("validation"), plan.max_new_tokens[skill])
            for skill in plan.skills
        }
        self.test = {
            skill: _with_cap(SKILLS[skill].suite("test"), plan.max_new_tokens[skill]) for skill in plan.skills
        }

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, model_dir: Path, suites: Sequence[Suite]) -> dict[str, SuiteResult]:
        started = time.perf_counter()

        def progress(suite: str, done: int, total: int) -> None:
            if done == total:
                self.log(f"    scored {suite}: {total} items ({time.perf_counter() - started:.0f} s)")

        evaluation = evaluate_model_dir(
            model_dir,
            suites,
            backend_kind=self.plan.eval_backend,
            cache=self.cache,
            placement=self.placement,
            progress=progress,
            rollout=self.rollout,
        )
        return {suite.meta.name: result for suite, result in zip(suites, evaluation.results, strict=True)}

    def _general_suite(self) -> tuple[Suite, dict[str, Any]]:
        """The general questions the base answers right: forgetting is measured on what it knew."""
        full = self.general_source
        result = self._evaluate(self.base_dir, [full])[full.meta.name]
        self.base_seconds = _seconds([result])
        right = {record.item_id for record in result.records if record.score == 1.0}
        kept = tuple(item for item in full.items if item.item_id in right)
        if not kept:
            raise RuntimeError(
                "the base answers none of the general questions; nothing to measure forgetting on"
            )
        self.log(f"general suite: the base answers {len(kept)} of {len(full.items)} right; those are kept")
        return replace(full, items=kept), {
            "name": full.meta.name,
            "kept": len(kept),
            "total": len(full.items),
        }

    # ------------------------------------------------------------------ one stage

    def _train(
        self, parent: Path, method: str, seed: int, skill: str, learning_rate: float
    ) -> tuple[Path, dict[str, Any]]:
        config = _stage_config(self.plan, method, seed, skill, learning_rate)
        out = self.work_dir / "runs" / f"{method}-seed{seed}" / skill / f"lr{learning_rate:g}"
        steps: list[StepMetrics] = []
        started = time.perf_counter()

        def on_step(m: StepMetrics) -> None:
            steps.append(m)
            if m.step == 1 or m.step % 5 == 0 or m.step == m.total_steps:
                leak = "" if m.rollout_leak_fraction is None else f"  leak {m.rollout_leak_fraction:.2f}"
                self.log(
                    f"    {method} {skill} lr {learning_rate:g} step {m.step}/{m.total_steps}  "
                    f"loss {m.loss:.4f}  {m.seconds:.1f} s/step{leak}"
                )

        result = run_stage(
            base_dir=parent,
            rows=self.demonstrations[skill],
            config=config,
            out_dir=out,
            placement=self.placement,
            backend_factory=self.backend_factory if method == "sdft" else None,
            on_step=on_step,
        )
        seconds = time.perf_counter() - started
        logged = final_steps(out / "metrics.jsonl", result.steps)
        last = logged[-1] if logged else {}
        leaks = [m["rollout_leak_fraction"] for m in logged if m.get("rollout_leak_fraction") is not None]
        info = {
            "learning_rate": learning_rate,
            # A resumed stage reports the seconds it ran, from its own log; a finished one, its record.
            "seconds": sum(m["seconds"] for m in logged) if logged else seconds,
            "seconds_per_step": (sum(m["seconds"] for m in logged) / len(logged)) if logged else 0.0,
            "final_loss": last.get("loss"),
            "rollout_leak_fraction": sum(leaks[-5:]) / len(leaks[-5:]) if leaks else None,
            "model_sha256": result.sha256,
        }
        return result.model_dir, info

    def _readiness(self, parent: Path, skill: str) -> dict[str, Any]:
        data = SKILLS[skill]
        config = _stage_config(self.plan, "sdft", 0, skill, self.plan.learning_rates[0])
        model = load_model(parent, self.placement)
        try:
            report = teacher_readiness(
                model,
                load_tokenizer(parent),
                self.demonstrations[skill],
                grader=data.grader if data.grader not in ("regex", "choice") else "contains",
                grader_options=data.grader_options,
                config=config,
                max_new_tokens=self.plan.max_new_tokens[skill],
                placement=self.placement,
            )
        finally:
            del model
        self.log(f"    readiness ({skill}): {report.message}")
        return report.to_dict()

    def _stage(
        self,
        parent: Path,
        parent_results: dict[str, SuiteResult],
        method: str,
        seed: int,
        index: int,
        general: Suite,
        chosen_rate: float | None,
    ) -> tuple[Path, dict[str, SuiteResult], dict[str, Any]]:
        """One skill: train (each rate of the grid, or the rate already chosen), score, gate."""
        skill = self.plan.skills[index]
        self.log(f"  [{method} seed {seed}] stage {index + 1}/{len(self.plan.skills)}: {skill}")
        probe_started = time.perf_counter()
        readiness = self._readiness(parent, skill) if method == "sdft" else None
        probe_seconds = time.perf_counter() - probe_started
        grid: list[dict[str, Any]] = []
        candidates: dict[float, Path] = {}
        train_seconds = eval_seconds = 0.0
        rates = self.plan.learning_rates if chosen_rate is None else (chosen_rate,)
        for learning_rate in rates:
            model_dir, info = self._train(parent, method, seed, skill, learning_rate)
            train_seconds += info["seconds"]
            info["validation_score"] = None
            if chosen_rate is None:
                name = self.validation[skill].meta.name
                validation = self._evaluate(model_dir, [self.validation[skill]])[name]
                eval_seconds += _seconds([validation])
                info["validation_score"] = validation.score
                self.log(f"    lr {learning_rate:g}: validation {validation.score:.1f}")
            grid.append(info)
            candidates[learning_rate] = model_dir
        chosen = chosen_rate or choose_learning_rate(
            {run["learning_rate"]: run["validation_score"] for run in grid}
        )
        candidate = candidates[chosen]
        suites = [*self.test.values(), general]
        results = self._evaluate(candidate, suites)
        eval_seconds += _seconds(results.values())
        gate = self._gate(parent, candidate, parent_results, results, skill, general)
        outputs = [record.output for suite in suites for record in results[suite.meta.name].records]
        stage = {
            "skill": skill,
            "chosen_learning_rate": chosen,
            "grid": grid,
            "readiness": readiness,
            "test_scores": {name: _cell(result) for name, result in results.items()},
            "gate": gate,
            "leakage": template_leakage(outputs).to_dict(),
            "probe_seconds": probe_seconds,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "seconds": probe_seconds + train_seconds + eval_seconds,
            "model_dir": str(candidate),
        }
        verdict = "accepted" if gate["accepted"] else "rejected"
        scores = ", ".join(f"{name} {result.score:.1f}" for name, result in results.items())
        self.log(f"    chose lr {chosen:g}; test: {scores}; gate: {verdict}")
        return candidate, results, stage

    def _gate(
        self,
        parent: Path,
        candidate: Path,
        parent_results: Mapping[str, SuiteResult],
        results: Mapping[str, SuiteResult],
        skill: str,
        general: Suite,
    ) -> dict[str, Any]:
        """The service's gate: the new skill must improve, earlier skills and general must hold."""
        learned = self.plan.skills[: self.plan.skills.index(skill)]
        roles = [(self.test[s], "prior") for s in learned] + [
            (general, "prior"),
            (self.test[skill], "new_skill"),
        ]
        comparisons = [
            SuiteComparison.for_suite(
                suite,
                role,  # type: ignore[arg-type]
                parent_results[suite.meta.name].item_scores(),
                results[suite.meta.name].item_scores(),
            )
            for suite, role in roles
        ]
        report = evaluate_gate(
            comparisons,
            parent_checkpoint_sha256=model_dir_sha256(parent),
            candidate_checkpoint_sha256=model_dir_sha256(candidate),
            options=GateOptions(require_improvement=True),
        )
        return {"accepted": report.accepted, "reason": report.reason, "report": report.to_dict()}

    # ------------------------------------------------------------------ the whole run

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"base: {self.base_dir}")
        general, general_info = self._general_suite()
        suites = [*self.test.values(), general]
        base_results = self._evaluate(self.base_dir, suites)
        base_seconds = self.base_seconds + _seconds(base_results.values())
        base_outputs = [record.output for suite in suites for record in base_results[suite.meta.name].records]
        lineages: list[dict[str, Any]] = []
        for method in self.plan.methods:
            for seed in range(self.plan.seeds):
                parent, parent_results = self.base_dir, base_results
                stages: list[dict[str, Any]] = []
                for index in range(len(self.plan.skills)):
                    keep_rate = self.plan.grid_stages == "first" and stages
                    parent, parent_results, stage = self._stage(
                        parent,
                        parent_results,
                        method,
                        seed,
                        index,
                        general,
                        chosen_rate=stages[0]["chosen_learning_rate"] if keep_rate else None,
                    )
                    stages.append(stage)
                lineages.append(
                    {
                        "method": method,
                        "seed": seed,
                        "base_scores": {name: _cell(result) for name, result in base_results.items()},
                        "stages": stages,
                    }
                )
        provenance_file = self.base_dir / "provenance.json"
        base_name = (
            json.loads(provenance_file.read_text()).get("name", self.base_dir.name)
            if provenance_file.is_file()
            else self.base_dir.name
        )
        raw = {
            "format": RAW_FORMAT,
            "command": self.command,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {self.placement.device}",
            "wall_seconds": time.perf_counter() - started,
            "compute_seconds": base_seconds
            + sum(stage["seconds"] for lineage in lineages for stage in lineage["stages"]),
            "plan": self.plan.to_dict(),
            "base": {"name": base_name, "dir": str(self.base_dir)},
            "general": general_info,
            "base_leakage": template_leakage(base_outputs).to_dict(),
            "lineages": lineages,
            "tried": [f"- {line}" for line in TRIED],
        }
        self.write(raw)
        return raw

    def write(self, raw: Mapping[str, Any]) -> Path:
        raw_path = self.out_dir / f"{self.plan.label}.json"
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")
        return rewrite_report(raw_path, log=self.log)


def default_caps(skills: Sequence[str]) -> dict[str, int]:
    """Rollout and evaluation length per skill: the suite's own, at most 128 tokens (a tool call with
    its thought fits in 128; 256 would double the slowest stage on a CPU)."""
    return {skill: min(SKILLS[skill].max_new_tokens, 128) for skill in skills}


def command_line() -> str:
    return "sdft " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def rewrite_report(raw_path: Path, log: Log = print) -> Path:
    """The Markdown report and the plot beside a raw record (`<label>.json` -> `<label>.md`, `.png`)."""
    raw = json.loads(raw_path.read_text())
    plot_path = raw_path.with_suffix(".png")
    matrices = {lineage_key(lineage): lineage_matrix(lineage) for lineage in raw["lineages"]}
    plot_forgetting_panels(matrices, plot_path, title=f"{raw['base']['name']}: score per suite over stages")
    report = raw_path.with_suffix(".md")
    report.write_text(render_report(raw, plot_name=plot_path.name, raw_name=raw_path.name))
    log(f"report: {report}\nplot: {plot_path}\nraw: {raw_path}")
    return report
