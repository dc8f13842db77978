"""Runs the continual-learning experiment through the service's own parts: `stage_method` picks a
stage's method (the readiness probe, as jobs do), `run_stage` trains (the code the Celery worker
runs), `evaluate_model_dir` scores (with its cache), `evaluate_gate` judges every candidate against
its parent. It skips the database and the queue, which add nothing to the measurement.

Every piece is idempotent: a stage's output directory is named by the hash of everything that
decides it (parent weights, configuration, data, replay rows, retention pool), so a stage two
recipes share is trained once and an interrupted run resumes where it stopped; evaluations are
cached by model sha; probe reports are cached by their inputs. The raw record and the report are
rewritten after every lineage, so a long run shows its results as they come.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.contracts.artifacts import model_dir_sha256
from app.contracts.demonstrations import Demonstration
from app.contracts.rollout_settings import RolloutSettings
from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
from app.evaluation.leakage import template_leakage
from app.evaluation.results import SuiteResult
from app.evaluation.suites import EvalSuite
from app.examples import GENERAL_CHOICE_SUITE, GENERAL_SUITE, GENERAL_VALIDATION_SUITE, SKILLS
from app.training.readiness import ReadinessReport, choose_method
from app.training.retention_pool import build_retention_pool
from app.training.stage_config import (
    AUTO_FALLBACK_METHOD,
    CONCISE_TEACHER_TEMPLATE,
    PAPER_TEACHER_TEMPLATE,
    RETENTION_METHODS,
    StageConfig,
)
from workers.evaluation.cache import EvalCache, evaluate_model_dir
from workers.experiments.continual.plan import (
    AUTO_RECIPE_FOR_METHOD,
    RAW_FORMAT,
    RECIPES,
    ExperimentPlan,
    RateTrial,
    choose_learning_rate,
)
from workers.experiments.continual.report import write_report
from workers.models.placement import Placement, default_placement
from workers.rollout.factory import make_backend_factory
from workers.training.loop import StageInputs, StepMetrics, data_sha256, run_stage
from workers.training.method_choice import readiness_report

Log = Callable[[str], None]
GENERAL_CAP = 48


@dataclass(frozen=True)
class SkillMaterial:
    name: str
    demonstrations: list[Demonstration]
    test: EvalSuite
    validation: EvalSuite
    grader: str
    grader_options: Mapping[str, Any]
    max_prompt_tokens: int


@dataclass(frozen=True)
class Material:
    """The data one run uses: each skill's demonstrations and suites, and the general suites: the
    greedy one the earlier reports used, and the same questions as choices scored by likelihood, which
    the gate uses (a greedy answer at 135M flips with any change to the weights)."""

    skills: dict[str, SkillMaterial]
    general: EvalSuite
    general_validation: EvalSuite
    general_choice: EvalSuite

    @classmethod
    def from_examples(cls, plan: ExperimentPlan) -> Material:
        skills = {}
        for name in plan.skills:
            data = SKILLS[name]
            cap = plan.max_new_tokens[name]
            skills[name] = SkillMaterial(
                name=name,
                demonstrations=data.demonstrations(),
                test=capped_suite(data.suite("test"), cap),
                validation=capped_suite(data.suite("validation"), cap),
                grader=data.grader,
                grader_options=dict(data.grader_options),
                max_prompt_tokens=data.max_prompt_tokens,
            )
        return cls(
            skills,
            capped_suite(GENERAL_SUITE.suite(), GENERAL_CAP),
            capped_suite(GENERAL_VALIDATION_SUITE.suite(), GENERAL_CAP),
            GENERAL_CHOICE_SUITE.suite(),
        )

    def test_suites(self) -> list[EvalSuite]:
        return [*(skill.test for skill in self.skills.values()), self.general, self.general_choice]

    def validation_suites(self) -> list[EvalSuite]:
        return [*(skill.validation for skill in self.skills.values()), self.general_validation]

    def suite_prompts(self) -> list[list[dict[str, str]]]:
        """Every prompt of every suite: the retention pool may hold none of them."""
        suites = [*self.test_suites(), *self.validation_suites()]
        return [list(item.messages()) for suite in suites for item in suite.items]


def capped_suite(suite: EvalSuite, tokens: int) -> EvalSuite:
    """The suite with its generation length capped at the plan's length for that skill."""
    decoding = suite.meta.decoding.model_copy(
        update={"max_new_tokens": min(tokens, suite.meta.decoding.max_new_tokens)}
    )
    return replace(suite, meta=suite.meta.model_copy(update={"decoding": decoding}))


def final_steps(metrics_log: Path, steps: int) -> list[dict[str, Any]]:
    """Each step's metrics once, from the execution that counted: a resumed stage re-runs steps it had
    logged; the last entry per step number, for steps 0..steps (0: the diagnostics before training)."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in metrics_log.read_text().splitlines() if metrics_log.is_file() else []:
        if line.strip():
            entry = json.loads(line)
            if entry.get("total_steps", steps) == steps:
                by_step[int(entry["step"])] = entry
    return [by_step[step] for step in sorted(by_step) if 0 <= step <= steps]


def _cell(result: SuiteResult) -> dict[str, Any]:
    return {"score": result.score, "ci_low": result.ci_low, "ci_high": result.ci_high, "n": result.n}


def _seconds(results: Sequence[SuiteResult]) -> float:
    """Generation time of results, as measured when they were computed (cached ones included)."""
    return sum(float(result.meta.get("seconds", 0.0)) for result in results)


def paired_delta(parent: SuiteResult, candidate: SuiteResult) -> float:
    """The candidate's score minus the parent's on the same items (points)."""
    return candidate.score - parent.score


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


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
        material: Material | None = None,
        rollout: RolloutSettings | None = None,
    ) -> None:
        self.plan = plan
        self.base_dir = base_dir
        self.work_dir = work_dir
        self.out_dir = out_dir
        self.placement = placement or default_placement()
        self.log = log
        self.command = command
        self.material = material or Material.from_examples(plan)
        self.cache = EvalCache(work_dir / "eval-cache")
        # A small KV cache: a few short rollouts need little, and the trainer shares the machine's memory.
        self.rollout = rollout or RolloutSettings(backend="vllm", gpu_memory_utilization=0.08)
        self.backend_factory = make_backend_factory(self.rollout) if plan.rollout_backend == "vllm" else None
        self.started = time.perf_counter()
        self.base_results: dict[str, SuiteResult] = {}
        self.grid: list[dict[str, Any]] = []
        self.chosen_rates: dict[str, float] = {}
        self.lineages: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model_dir: Path, suites: Sequence[EvalSuite]) -> dict[str, SuiteResult]:
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

    # ------------------------------------------------------------------ one stage's training

    def stage_config(
        self, recipe: str, skill: str, seed: int, learning_rate: float, method: str
    ) -> StageConfig:
        plan = self.plan
        settings = {**RECIPES[recipe].settings, "method": method}
        return StageConfig(
            **settings,
            seed=seed,
            learning_rate=learning_rate,
            batch_size=plan.batch_size,
            micro_batch_size=min(
                plan.micro_batch_by_skill.get(skill, plan.micro_batch_size), plan.batch_size
            ),
            max_steps=plan.steps_by_skill[skill],
            lr_schedule="constant",
            lora_rank=plan.lora_rank,
            teacher=plan.teacher,  # type: ignore[arg-type]
            teacher_template=CONCISE_TEACHER_TEMPLATE
            if plan.teacher_template == "concise"
            else PAPER_TEACHER_TEMPLATE,
            max_new_tokens=plan.max_new_tokens[skill],
            max_prompt_tokens=self.material.skills[skill].max_prompt_tokens,
            retention_max_new_tokens=GENERAL_CAP,
            # Long stages checkpoint often enough that an interrupted one resumes.
            checkpoint_every=5,
            diagnostics_every=max(1, plan.steps_by_skill[skill] // 4),
            readiness_probe="off",  # probed below, once, for the record
        )

    def stage_inputs(self, index: int, config: StageConfig) -> StageInputs:
        skills = self.plan.skills
        earlier = [row for skill in skills[:index] for row in self.material.skills[skill].demonstrations]
        material = self.material.skills[skills[index]]
        pool: list[list[dict[str, str]]] = []
        if config.method in RETENTION_METHODS:
            pool = build_retention_pool(
                [row.query_dicts() for row in earlier], self.material.suite_prompts()
            ).to_messages()
        return StageInputs(
            # Replay rows only where the recipe replays (sft and sdft, the baselines, do not).
            replay_rows=earlier if config.replay_fraction != 0.0 else (),
            retention_prompts=pool,
            probe_grader=material.grader,
            probe_grader_options=material.grader_options,
        )

    def train(
        self, parent: Path, skill: str, config: StageConfig, inputs: StageInputs
    ) -> tuple[Path, dict[str, Any]]:
        identity = {
            "parent": model_dir_sha256(parent),
            "config": config.model_dump(mode="json"),
            "data": data_sha256(self.material.skills[skill].demonstrations),
            "replay": data_sha256(inputs.replay_rows) if inputs.replay_rows else None,
            "pool": _hash([list(map(dict, p)) for p in inputs.retention_prompts]),
        }
        out = self.work_dir / "runs" / _hash(identity)[:16]
        label = f"{config.method} {skill} lr {config.learning_rate:g} seed {config.seed}"

        def on_step(m: StepMetrics) -> None:
            if m.step == 1 or m.step % 5 == 0 or m.step == m.total_steps:
                probe = "" if m.probe_divergence is None else f"  probe kl {m.probe_divergence:.3f}"
                step = f"step {m.step}/{m.total_steps}"
                self.log(f"    {label} {step}  loss {m.loss:.4f}{probe}  {m.seconds:.1f} s/step")

        result = run_stage(
            base_dir=parent,
            rows=self.material.skills[skill].demonstrations,
            config=config,
            out_dir=out,
            placement=self.placement,
            backend_factory=self.backend_factory,
            on_step=on_step,
            inputs=inputs,
        )
        # A finished stage is read from its final model; its resume checkpoints (weights and optimizer
        # state, about 3 GB at 135M) would fill a disk over a full run's ~50 stages.
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return result.model_dir, training_summary(
            final_steps(out / "metrics.jsonl", result.steps), result.sha256
        )

    def probe(self, parent: Path, skill: str, config: StageConfig) -> ReadinessReport:
        material = self.material.skills[skill]
        key = _hash(
            {"parent": model_dir_sha256(parent), "config": config.model_dump(mode="json"), "skill": skill}
        )
        path = self.work_dir / "probes" / f"{key[:16]}.json"
        if path.is_file():
            return ReadinessReport.from_dict(json.loads(path.read_text()))
        report = readiness_report(
            parent,
            material.demonstrations,
            config,
            grader=material.grader,
            grader_options=material.grader_options,
            max_new_tokens=self.plan.max_new_tokens[skill],
            placement=self.placement,
            engine=self.plan.eval_backend,
            rollout=self.rollout,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict()))
        return report

    # ------------------------------------------------------------------ the learning-rate grid

    def run_grid(self) -> None:
        """Each recipe's rate: tried on the first skill with seed 0, judged on validation suites."""
        skill = self.plan.skills[0]
        material = self.material.skills[skill]
        general_val = self.material.general_validation.meta.name
        for recipe in self.plan.training_order:
            if recipe == "auto":
                continue
            if not self.plan.runs_grid:
                self.chosen_rates[recipe] = self.plan.learning_rates[0]
                continue
            trials = []
            for rate in self.plan.learning_rates:
                config = self.stage_config(recipe, skill, 0, rate, RECIPES[recipe].method)
                started = time.perf_counter()
                model_dir, training = self.train(self.base_dir, skill, config, self.stage_inputs(0, config))
                validation = self.evaluate(model_dir, [material.validation, self.material.general_validation])
                test = self.evaluate(
                    model_dir, [material.test, self.material.general, self.material.general_choice]
                )
                trial = RateTrial(
                    learning_rate=rate,
                    new_skill=validation[material.validation.meta.name].score,
                    general_delta=paired_delta(self.base_results[general_val], validation[general_val]),
                )
                trials.append(trial)
                self.grid.append(
                    {
                        "recipe": recipe,
                        "skill": skill,
                        "learning_rate": rate,
                        "validation_new_skill": trial.new_skill,
                        "validation_general_delta": trial.general_delta,
                        "test_new_skill": test[material.test.meta.name].score,
                        "test_general_delta": paired_delta(
                            self.base_results[self.material.general.meta.name],
                            test[self.material.general.meta.name],
                        ),
                        "test_general_choice_delta": paired_delta(
                            self.base_results[self.material.general_choice.meta.name],
                            test[self.material.general_choice.meta.name],
                        ),
                        "training": training,
                        "seconds": time.perf_counter() - started,
                    }
                )
                self.log(
                    f"  grid {recipe} lr {rate:g}: validation {trial.new_skill:.1f}, "
                    f"general {trial.general_delta:+.1f}"
                )
            self.chosen_rates[recipe] = choose_learning_rate(trials)
            for row in self.grid:
                if row["recipe"] == recipe:
                    row["chosen"] = row["learning_rate"] == self.chosen_rates[recipe]
            self.log(f"  {recipe}: learning rate {self.chosen_rates[recipe]:g}")

    # ------------------------------------------------------------------ lineages

    def run_lineage(self, recipe: str, seed: int) -> dict[str, Any]:
        parent, parent_results = self.base_dir, self.base_results
        stages: list[dict[str, Any]] = []
        for index, skill in enumerate(self.plan.skills):
            self.log(f"  [{recipe} seed {seed}] stage {index + 1}/{len(self.plan.skills)}: {skill}")
            parent, parent_results, stage = self.run_stage(recipe, seed, index, parent, parent_results)
            stages.append(stage)
        return {"recipe": recipe, "seed": seed, "stages": stages}

    def run_stage(
        self, recipe: str, seed: int, index: int, parent: Path, parent_results: Mapping[str, SuiteResult]
    ) -> tuple[Path, dict[str, SuiteResult], dict[str, Any]]:
        skill = self.plan.skills[index]
        method, choice, readiness = RECIPES[recipe].method, None, None
        probe_started = time.perf_counter()
        if method in ("auto", "sdft"):
            probe_config = self.stage_config("sdft", skill, seed, self.plan.learning_rates[0], "sdft")
            report = self.probe(parent, skill, probe_config)
            readiness = report.to_dict()
            if method == "auto":
                choice = choose_method(report, AUTO_FALLBACK_METHOD)
                method = choice.method
                self.log(f"    auto: {choice.reason}")
        probe_seconds = time.perf_counter() - probe_started
        settings_recipe = AUTO_RECIPE_FOR_METHOD[method] if recipe == "auto" else recipe
        rate = self.chosen_rates[settings_recipe]
        config = self.stage_config(settings_recipe, skill, seed, rate, method)
        model_dir, training = self.train(parent, skill, config, self.stage_inputs(index, config))
        results = self.evaluate(model_dir, self.material.test_suites())
        gate = self.gate(parent, model_dir, parent_results, results, index)
        general, general_choice = self.material.general.meta.name, self.material.general_choice.meta.name
        outputs = [record.output for result in results.values() for record in result.records]
        stage = {
            "skill": skill,
            "method": method,
            "choice": None if choice is None else choice.to_dict(),
            "readiness": readiness,
            "learning_rate": rate,
            "test_scores": {name: _cell(result) for name, result in results.items()},
            "general_delta": paired_delta(self.base_results[general], results[general]),
            "general_kept_of_base_right": kept_of_base_right(self.base_results[general], results[general]),
            "general_choice_delta": paired_delta(self.base_results[general_choice], results[general_choice]),
            "gate": gate,
            "training": training,
            "leakage": template_leakage(outputs).to_dict(),
            "probe_seconds": probe_seconds,
            "eval_seconds": _seconds(list(results.values())),
            "model_dir": str(model_dir),
        }
        verdict = "accepted" if gate["accepted"] else "rejected"
        scores = ", ".join(f"{name} {result.score:.1f}" for name, result in results.items())
        self.log(f"    {method} lr {rate:g}: {scores}; gate {verdict}")
        return model_dir, results, stage

    def gate(
        self,
        parent: Path,
        candidate: Path,
        parent_results: Mapping[str, SuiteResult],
        results: Mapping[str, SuiteResult],
        index: int,
    ) -> dict[str, Any]:
        """The service's gate: the new skill must improve, earlier skills and general must hold."""
        skills = self.plan.skills
        roles = [(self.material.skills[s].test, "prior") for s in skills[:index]] + [
            (self.material.general_choice, "prior"),
            (self.material.skills[skills[index]].test, "new_skill"),
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
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"base: {self.base_dir}")
        self.base_results = self.evaluate(
            self.base_dir, [*self.material.test_suites(), *self.material.validation_suites()]
        )
        self.run_grid()
        for seed in self.plan.seed_range:
            for recipe in self.plan.training_order:
                self.lineages.append(self.run_lineage(recipe, seed))
                self.write()
        return self.write()

    def raw(self) -> dict[str, Any]:
        provenance = self.base_dir / "provenance.json"
        base_name = (
            json.loads(provenance.read_text()).get("name", self.base_dir.name)
            if provenance.is_file()
            else self.base_dir.name
        )
        general = self.base_results[self.material.general.meta.name]
        general_choice = self.base_results[self.material.general_choice.meta.name]
        return {
            "format": RAW_FORMAT,
            "command": self.command,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {self.placement.device}",
            "wall_seconds": time.perf_counter() - self.started,
            "plan": self.plan.to_dict(),
            "base": {"name": base_name, "dir": str(self.base_dir)},
            "general": {
                "name": general.suite_name,
                "total": general.n,
                "base_right": sum(1 for r in general.records if r.score == 1.0),
            },
            "general_choice": {"name": general_choice.suite_name, "total": general_choice.n},
            "base_scores": {name: _cell(result) for name, result in self.base_results.items()},
            "chosen_rates": self.chosen_rates,
            "grid": self.grid,
            "lineages": self.lineages,
        }

    def write(self) -> dict[str, Any]:
        raw = self.raw()
        raw_path = self.out_dir / f"{self.plan.label}.json"
        raw_path.write_text(json.dumps(raw, indent=1) + "\n")
        write_report(raw_path, log=self.log)
        return raw


def kept_of_base_right(base: SuiteResult, candidate: SuiteResult) -> float:
    """Share (points) of the items the base answers right that the candidate still answers right: the
    measure earlier reports used, which counts every flip down and none up (see the report)."""
    right = {r.item_id for r in base.records if r.score == 1.0}
    if not right:
        return 100.0
    kept = sum(1 for r in candidate.records if r.item_id in right and r.score == 1.0)
    return 100.0 * kept / len(right)


def training_summary(steps: Sequence[Mapping[str, Any]], sha256: str) -> dict[str, Any]:
    """What a stage's metrics log says about how it learned (steps[0] is the pre-training probe)."""
    trained = [m for m in steps if m["step"] >= 1]
    probes = [m for m in steps if m.get("probe_divergence") is not None]
    shares = [m["loss_top5_share"] for m in trained if m.get("loss_top5_share") is not None]
    leaks = [m["rollout_leak_fraction"] for m in trained if m.get("rollout_leak_fraction") is not None]
    return {
        "model_sha256": sha256,
        "steps": len(trained),
        "seconds": sum(m["seconds"] for m in trained),
        "seconds_per_step": sum(m["seconds"] for m in trained) / len(trained) if trained else 0.0,
        "first_loss": trained[0]["loss"] if trained else None,
        "last_loss": trained[-1]["loss"] if trained else None,
        "last_loss_parts": trained[-1].get("loss_parts") if trained else None,
        "probe_divergence": [[m["step"], m["probe_divergence"]] for m in probes],
        "probe_score": [[m["step"], m["probe_score"]] for m in probes if m.get("probe_score") is not None],
        "probe_nll": [[m["step"], m["probe_nll"]] for m in probes],
        "stalled": any(m.get("learning_stalled") for m in trained),
        "loss_top5_share": sum(shares) / len(shares) if shares else None,
        "rollout_leak_fraction": sum(leaks) / len(leaks) if leaks else None,
        "rollout_tokens_mean": sum(m["rollout_tokens_mean"] for m in trained) / len(trained)
        if trained
        else None,
    }
