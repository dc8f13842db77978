"""`sdft experiment continual`: the recipes learn three skills in sequence; every suite after every
stage; the report in docs/experiments (workers/experiments/continual/README.md)."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path
from typing import Any

from workers.cli.common import EXIT_BAD_INPUT, quiet_engine_log
from workers.experiments.continual.plan import RECIPES

QUICK_SKILL = "format"  # the skill the student can partly do already: the likeliest to move in a few steps


def default_caps(skills: list[str]) -> dict[str, int]:
    """Rollout and evaluation length per skill: the suite's own, at most 128 tokens (a tool call with
    its thought fits in 128; 256 would double the slowest stage on a CPU)."""
    from app.examples import SKILLS

    return {skill: min(SKILLS[skill].max_new_tokens, 128) for skill in skills}


def cmd_experiment_continual(args: argparse.Namespace) -> int:
    quiet_engine_log()
    from app.examples import EXPERIMENT_STAGES, SKILLS
    from workers.experiments.continual.plan import ExperimentPlan

    skills = args.skill or ([QUICK_SKILL] if args.quick else list(EXPERIMENT_STAGES))
    unknown = [skill for skill in skills if skill not in SKILLS or SKILLS[skill].validation is None]
    if unknown:
        with_validation = ", ".join(name for name, skill in SKILLS.items() if skill.validation is not None)
        print(f"skill: unknown or without a validation split: {', '.join(unknown)}")
        print(f"  (choose from {with_validation})")
        return EXIT_BAD_INPUT
    settings: dict[str, Any] = {"max_new_tokens": default_caps(skills)}
    if args.recipe:
        settings["recipes"] = tuple(args.recipe)
    if args.learning_rate:
        settings["learning_rates"] = tuple(args.learning_rate)
    if args.max_steps is not None:
        settings["steps_by_skill"] = dict.fromkeys(skills, args.max_steps)
    if args.lora_rank is not None:
        settings["lora_rank"] = args.lora_rank
    engine = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    settings["rollout_backend"] = args.rollout_backend or engine
    settings["eval_backend"] = args.eval_backend or engine
    for key in ("seeds", "first_seed", "label"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    try:
        plan = (
            ExperimentPlan.quick(skills[0], **settings)
            if args.quick and len(skills) == 1
            else ExperimentPlan(skills=tuple(skills), **settings)
        )
    except ValueError as exc:
        print(f"experiment: {exc}")
        return EXIT_BAD_INPUT
    if args.report_only:
        from workers.experiments.continual.report import write_report

        raw_path = Path(args.out) / f"{plan.label}.json"
        if not raw_path.is_file():
            print(f"out: no raw record {raw_path} to rewrite the report from")
            return EXIT_BAD_INPUT
        write_report(raw_path, log=print)
        return 0
    from workers.experiments.continual.runner import ContinualExperiment
    from workers.models.smollm2 import default_model_dir, import_default

    base = Path(args.base) if args.base else default_model_dir()
    if not args.base:
        import_default(base)
    if not (base / "config.json").is_file():
        print(f"base: {base} is not a model directory (no config.json)")
        return EXIT_BAD_INPUT
    work = Path(args.work_dir) if args.work_dir else Path.home() / ".sdft" / "experiments" / plan.label
    experiment = ContinualExperiment(
        plan,
        base_dir=base,
        work_dir=work,
        out_dir=Path(args.out),
        log=lambda line: print(line, flush=True),
        command="sdft " + " ".join(shlex.quote(arg) for arg in sys.argv[1:]),
    )
    experiment.run()
    return 0


def register(sub: Any) -> None:
    experiment = sub.add_parser("experiment", help="experiments that measure the product")
    experiments = experiment.add_subparsers(dest="experiment", required=True)
    continual = experiments.add_parser(
        "continual",
        help="training recipes compared: skills learned in sequence, every suite after every stage",
    )
    continual.add_argument(
        "--recipe",
        action="append",
        choices=list(RECIPES),
        help="repeatable; default every recipe but sdft-dense",
    )
    continual.add_argument("--seeds", type=int, help="lineages per recipe (default 3)")
    continual.add_argument(
        "--first-seed", type=int, help="seeds run are FIRST_SEED.. (default 0): add seeds to an earlier run"
    )
    continual.add_argument("--out", default="docs/experiments", help="where the report, plot and JSON go")
    continual.add_argument(
        "--quick", action="store_true", help=f"one skill ({QUICK_SKILL}), one seed, 12 steps"
    )
    continual.add_argument("--skill", action="append", help="repeatable; default knowledge, format, tool-use")
    continual.add_argument("--learning-rate", action="append", type=float, help="repeatable: the grid")
    continual.add_argument("--max-steps", type=int, help="optimizer steps per stage, every skill")
    continual.add_argument("--lora-rank", type=int, help="LoRA instead of full fine-tuning")
    continual.add_argument("--label", help="names the report files and the work dir (default continual)")
    continual.add_argument(
        "--rollout-backend", choices=["transformers", "vllm"], help="rollouts (default vllm when installed)"
    )
    continual.add_argument(
        "--eval-backend", choices=["transformers", "vllm"], help="evaluation (default vllm when installed)"
    )
    continual.add_argument(
        "--report-only", action="store_true", help="rewrite the report and plot from the raw JSON in --out"
    )
    continual.add_argument("--base", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    continual.add_argument(
        "--work-dir", help="checkpoints and evaluation cache (default ~/.sdft/experiments/LABEL)"
    )
    continual.set_defaults(func=cmd_experiment_continual)
