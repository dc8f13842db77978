"""The GPU check behind `bench/gpu_check.sh`: colocated vLLM on one CUDA GPU, offline, in minutes.

    python bench/gpu_check.py --model /path/to/smollm2 --out /tmp/gpu_check.json

On SmolLM2 in bf16 it runs, and reports as one markdown table:

1. an SFT stage (full fine-tuning) of `--steps` steps: the baseline time;
2. an SDFT stage of the same size with the colocated vLLM engine: full fine-tuning, so every step
   syncs the weights into the engine in place (chunked `reload_weights`), with sleep mode on, so
   the engine gives its memory back between rollout phases;
   - before training, one batch of `--prompts` sampled rollouts gives the engine's tokens/s;
   - after step 1, the engine's greedy rollouts are compared with the live student's (bf16
     autocast): they must mostly agree, which shows the sync happened and served the new weights;
   - the GPU memory the engine frees while asleep is measured;
3. the SDFT/SFT time ratio.

`plan_seconds` estimates the run's length so the defaults fit the 8-minute budget; the pure parts
(argument parsing, the estimate, the table) are tested on CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

QUESTIONS = [
    "Explain why the sky is blue.",
    "Write a haiku about autumn.",
    "What is the capital of France and why is it famous?",
    "Give three tips for writing clean code.",
    "Describe how vaccines work.",
    "What is 17 times 23? Show your steps.",
    "Summarize the water cycle.",
    "Why do cats purr?",
]
BUDGET_SECONDS = 8 * 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="colocated vLLM GPU check (SDFT vs SFT, sync, sleep, tokens/s)")
    p.add_argument(
        "--model", type=Path, required=True, help="SmolLM2 model directory (sdft models import-default)"
    )
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per stage")
    p.add_argument("--batch", type=int, default=16, help="demonstrations per step")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=128, help="rollouts in the tokens/s batch")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--no-sleep", action="store_true", help="run without sleep mode")
    p.add_argument("--eager", action="store_true", help="no CUDA graphs (faster start, slower decode)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sdft-gpu-check"))
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    for name in ("steps", "batch", "max_new_tokens", "prompts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.05 <= args.gpu_memory_utilization <= 0.9:
        p.error("--gpu-memory-utilization must be within [0.05, 0.9] (the trainer shares the GPU)")
    if plan_seconds(args) > BUDGET_SECONDS:
        p.error(f"this plan needs about {plan_seconds(args):.0f} s, over the {BUDGET_SECONDS} s budget")
    return args


def plan_seconds(args: argparse.Namespace) -> float:
    """A pessimistic estimate of the check's wall time on one H100/H200-class GPU for a ~135M model.

    Fixed costs: model loads and the vLLM engine's start (graph capture unless --eager). Per step:
    SFT ~0.3 s per 16 demonstrations; SDFT adds a teacher forward, a weight sync and the rollouts,
    taken at a pessimistic 2,000 generated tokens/s.
    """
    engine_start = 30.0 if args.eager else 90.0
    fixed = 40.0 + engine_start
    sft = args.steps * 0.3 * args.batch / 16
    rollout_tokens = args.steps * args.batch * args.max_new_tokens + args.prompts * args.max_new_tokens
    sdft = args.steps * (1.0 + 0.5 * args.batch / 16) + rollout_tokens / 2000.0
    return fixed + sft + sdft


def format_table(results: dict[str, Any]) -> str:
    """The results as the markdown table that goes into docs/benchmarks.md."""
    rows = [
        ("date", results.get("date", "")),
        ("card", results.get("card", "")),
        (
            "model / dtype",
            f"{results.get('model', '')} / bf16 (engine), fp32 master + bf16 autocast (trainer)",
        ),
        ("SFT stage", _seconds(results.get("sft_seconds"))),
        ("SDFT stage (colocated vLLM, full FT)", _seconds(results.get("sdft_seconds"))),
        ("SDFT / SFT time ratio", _ratio(results.get("sdft_over_sft"))),
        ("rollout tokens/s (one batch)", _number(results.get("rollout_tokens_per_second"))),
        (
            "in-place syncs / seconds per sync",
            f"{results.get('syncs', '')} / {_number(results.get('sync_seconds'))}",
        ),
        ("greedy agreement engine vs student after sync", _share(results.get("greedy_agreement_after_sync"))),
        ("GPU memory freed by sleep", _gib(results.get("sleep_freed_bytes"))),
        ("importance weight mean (first / last step)", _pair(results.get("importance_weight_means"))),
        ("check", "PASS" if results.get("passed") else "FAIL"),
    ]
    lines = ["| what | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _seconds(x: Any) -> str:
    return f"{x:.1f} s" if isinstance(x, int | float) else "n/a"


def _ratio(x: Any) -> str:
    return f"{x:.2f}x" if isinstance(x, int | float) else "n/a"


def _number(x: Any) -> str:
    return (
        f"{x:,.0f}"
        if isinstance(x, int | float) and x >= 100
        else (f"{x:.2f}" if isinstance(x, float) else "n/a")
    )


def _share(x: Any) -> str:
    return f"{x:.0%}" if isinstance(x, int | float) else "n/a"


def _gib(x: Any) -> str:
    return f"{x / 2**30:.1f} GiB" if isinstance(x, int | float) else "n/a"


def _pair(x: Any) -> str:
    if not x:
        return "n/a"
    return f"{x[0]:.3f} / {x[-1]:.3f}" if x[0] is not None and x[-1] is not None else "n/a"


def _rows(n: int) -> list[Any]:
    from app.contracts.demonstrations import parse_demonstrations

    lines = [
        json.dumps(
            {"prompt": f"{QUESTIONS[i % len(QUESTIONS)]} (case {i})", "demonstration": f"A clear answer {i}."}
        )
        for i in range(n)
    ]
    return parse_demonstrations("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> dict[str, Any]:  # pragma: no cover - needs CUDA and vLLM
    import torch

    from app.contracts.rollout_settings import RolloutSettings
    from app.training.stage_config import StageConfig
    from workers.models.loading import load_tokenizer, stop_token_ids
    from workers.models.placement import default_placement
    from workers.rollout.base import SamplingParams
    from workers.rollout.factory import make_backend_factory
    from workers.rollout.hf_generate import TransformersBackend
    from workers.rollout.vllm_engine import VllmEngineBackend
    from workers.training.loop import StepMetrics, run_stage

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA GPU")
    placement = default_placement("cuda")
    tokenizer = load_tokenizer(args.model)
    stops = tuple(stop_token_ids(tokenizer, args.model))
    rows = _rows(args.steps * args.batch)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "card": torch.cuda.get_device_name(0),
        "model": args.model.name,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    common = {
        "batch_size": args.batch,
        "micro_batch_size": args.batch,
        "max_steps": args.steps,
        "max_new_tokens": args.max_new_tokens,
        "checkpoint_every": 10_000,
        "lr_schedule": "constant",
    }
    stamp = time.strftime("%H%M%S")

    started = time.perf_counter()
    run_stage(
        base_dir=args.model,
        rows=rows,
        config=StageConfig(method="sft", **common),
        out_dir=args.workdir / f"{stamp}-sft",
        placement=placement,
    )
    results["sft_seconds"] = time.perf_counter() - started
    print(f"SFT stage: {results['sft_seconds']:.1f} s", flush=True)

    settings = RolloutSettings(
        backend="vllm",
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=2048,
        enable_sleep_mode=not args.no_sleep,
        enforce_eager=True if args.eager else None,
    )
    factory = make_backend_factory(settings)
    assert factory is not None
    probe: dict[str, Any] = {}
    prompts = [
        list(
            tokenizer(
                str(
                    tokenizer.apply_chat_template(
                        [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                    )
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for q in (QUESTIONS * (args.prompts // len(QUESTIONS) + 1))[: args.prompts]
    ]
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=stops)

    def build(student: Any, tok: Any, where: Any, shape: Any) -> Any:
        backend = factory(student, tok, where, shape)
        assert isinstance(backend, VllmEngineBackend)
        probe["backend"], probe["student"] = backend, student
        sampled = SamplingParams(
            max_new_tokens=args.max_new_tokens, temperature=1.0, seed=1, stop_token_ids=stops
        )
        backend.generate(prompts[:4], sampled)  # warm-up
        t = time.perf_counter()
        out = backend.generate(prompts, sampled)
        results["rollout_tokens_per_second"] = sum(len(r[0].token_ids) for r in out) / (
            time.perf_counter() - t
        )
        probe["base_greedy"] = [r[0].token_ids for r in backend.generate(prompts[:16], greedy)]
        return backend

    metrics: list[StepMetrics] = []
    sync_times: list[float] = []

    def on_step(m: StepMetrics) -> None:
        metrics.append(m)
        if m.step == 1:
            backend: VllmEngineBackend = probe["backend"]
            torch.cuda.synchronize()
            t = time.perf_counter()
            backend.sync_weights(1)
            torch.cuda.synchronize()
            sync_times.append(time.perf_counter() - t)
            engine = [r[0].token_ids for r in backend.generate(prompts[:16], greedy)]
            results["asleep_after_generate"] = not settings.enable_sleep_mode or bool(backend._asleep)
            hf = TransformersBackend(probe["student"], int(tokenizer.pad_token_id), placement)
            student = [r[0].token_ids for r in hf.generate(prompts[:16], greedy)]
            results["greedy_agreement_after_sync"] = sum(
                a[:8] == b[:8] for a, b in zip(engine, student, strict=True)
            ) / len(engine)
            results["greedy_changed_from_base"] = engine != probe["base_greedy"]

    started = time.perf_counter()
    run_stage(
        base_dir=args.model,
        rows=rows,
        config=StageConfig(method="sdft", learning_rate=1e-4, **common),
        out_dir=args.workdir / f"{stamp}-sdft",
        placement=placement,
        backend_factory=build,
        on_step=on_step,
    )
    results["sdft_seconds"] = time.perf_counter() - started
    results["sdft_over_sft"] = results["sdft_seconds"] / results["sft_seconds"]
    results["syncs"] = probe["backend"].syncs
    results["sync_seconds"] = sync_times[0] if sync_times else None
    results["importance_weight_means"] = [m.importance_weight_mean for m in metrics]
    results["passed"] = bool(
        results.get("greedy_agreement_after_sync", 0) >= 0.75
        and results["syncs"] >= args.steps
        and all(w is not None and 0.5 < w <= 2.0 for w in results["importance_weight_means"])
        and results.get("asleep_after_generate")
    )
    return results


def measure_sleep(args: argparse.Namespace) -> int:  # pragma: no cover - needs CUDA and vLLM
    """GPU bytes an engine frees when it sleeps (level 2), measured on its own before the stages."""
    import torch

    from app.contracts.rollout_settings import RolloutSettings
    from workers.models.loading import load_model
    from workers.models.placement import default_placement
    from workers.rollout.vllm_engine import VllmEngineBackend

    student = load_model(args.model, default_placement("cuda"))
    settings = RolloutSettings(
        backend="vllm", gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=2048,
        enable_sleep_mode=True, enforce_eager=True,
    )  # fmt: skip
    with VllmEngineBackend(args.model, settings, student=student, device="cuda") as engine:
        engine.sync_weights(0)
        torch.cuda.synchronize()
        awake = torch.cuda.mem_get_info()[0]
        engine._sleep()
        torch.cuda.synchronize()
        asleep = torch.cuda.mem_get_info()[0]
        engine.sync_weights(1)  # wakes (weights), reloads
        engine._wake(None)
    del student
    torch.cuda.empty_cache()
    return int(asleep - awake)


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - needs CUDA and vLLM
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    freed = None if args.no_sleep else measure_sleep(args)
    results = run(args)
    if freed is not None:
        results["sleep_freed_bytes"] = freed
    table = format_table(results)
    print(table, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")
    if not results["passed"]:
        raise SystemExit("GPU check FAILED (see the table)")


if __name__ == "__main__":
    main()
