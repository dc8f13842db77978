"""`sdft train`: one stage on a local model directory, no service needed; resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.contracts.rollout_settings import ENV_PREFIX, RolloutSettings, rollout_settings_from_env
from app.evaluation.graders import KNOWN_GRADERS, unknown_grader
from app.training.stage_config import METHODS
from workers.cli.common import backend_problems, quiet_engine_log, report_problems


def _read_config_file(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:  # not a ValueError: say where, in one line
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(exc, "problem", None) or exc
            raise ValueError(f"{path}: not valid YAML{where}: {reason}") from exc
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config file must hold a mapping of stage settings")
    return data


def _rollout_settings(backend: str | None, problems: list[str]) -> RolloutSettings | None:
    """The worker's rollout settings (`SDFT_ROLLOUT_*`), with `--backend` over their engine."""
    from pydantic import ValidationError

    try:
        settings = rollout_settings_from_env()
        if backend is not None:
            settings = settings.with_overrides({"backend": backend})
    except ValidationError as exc:
        # A field's error names its variable; a rule across fields (loc empty) names them all.
        problems += [
            f"{ENV_PREFIX}{str(e['loc'][0]).upper() if e['loc'] else '*'}: {e['msg']}" for e in exc.errors()
        ]
        return None
    problems += backend_problems(backend)
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    quiet_engine_log()
    from app.contracts.demonstrations import DatasetError, load_demonstrations
    from app.training.stage_config import ConfigError, StageConfig, parse_stage_config

    problems: list[str] = []
    rollout = _rollout_settings(args.backend, problems)
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
    if args.grader not in KNOWN_GRADERS:
        problems.append(f"grader: {unknown_grader(args.grader)}")
    if problems or config is None or rollout is None:
        return report_problems(problems)
    try:  # before the probe and the model load, and only once nothing else is wrong
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return report_problems([f"out: cannot create {args.out}: {exc.strerror or exc}"])

    from app.training.retention_pool import build_retention_pool
    from workers.rollout.factory import make_backend_factory
    from workers.training.loop import ResumeMismatch, StageCancelled, StageInputs, run_stage
    from workers.training.method_choice import stage_method
    from workers.training.progress import ProgressBar

    # The probe evaluates the base model: on a colocated engine when the rollouts use one.
    engine = "vllm" if rollout.backend == "vllm" else "transformers"
    chosen = stage_method(Path(args.base), rows, config, grader=args.grader, engine=engine, rollout=rollout)
    if chosen.choice is not None:
        print(f"method auto: {chosen.choice.reason}")
    elif chosen.readiness is not None:
        print(f"teacher readiness: {chosen.readiness.message}")
    config = chosen.config
    pool = build_retention_pool([], []).to_messages()
    bar = ProgressBar(config)
    try:
        result = run_stage(
            base_dir=args.base,
            rows=rows,
            config=config,
            out_dir=args.out,
            backend_factory=make_backend_factory(rollout),
            on_step=bar.update,
            inputs=StageInputs(retention_prompts=pool, probe_grader=args.grader),
        )
    except DatasetError as exc:  # length checks need the tokenizer, so they come after loading it
        bar.close()
        return report_problems([f"data: {p}" for p in exc.problems])
    except (ResumeMismatch, StageCancelled) as exc:
        bar.close()
        return report_problems([str(exc)])
    bar.close()
    engine = json.loads((result.model_dir / "meta.json").read_text())["rollout_engine"]
    print(
        f"model: {result.model_dir}\nmethod: {config.method}\nsha256: {result.sha256}\n"
        f"steps: {result.steps}\nrollouts: {engine}"
    )
    return 0


def register(sub: Any) -> None:
    train = sub.add_parser("train", help="run one training stage on a local model, no service needed")
    train.add_argument("--data", required=True, help="demonstrations JSONL")
    train.add_argument("--base", required=True, help="local Hugging Face model directory")
    train.add_argument("--out", required=True, help="output directory (checkpoints, final model); resumes")
    train.add_argument("--method", choices=METHODS, help="default auto: the readiness probe decides")
    train.add_argument(
        "--grader",
        default="contains",
        help="how the probe and the learning diagnostics grade answers against demonstrations",
    )
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter (rank 16 unless configured)")
    train.add_argument("--max-steps", type=int)
    train.add_argument(
        "--backend",
        choices=["transformers", "vllm"],
        help="rollout engine (default: SDFT_ROLLOUT_BACKEND, else vllm where installed; transformers if "
        "its engine does not start)",
    )
    train.add_argument("--config", help="JSON or YAML file of stage settings (keys of StageConfig)")
    train.set_defaults(func=cmd_train)
