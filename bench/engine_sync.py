"""Seconds per weight sync into the colocated CPU vLLM engine: ours (packing) against vLLM's reload.

    python bench/engine_sync.py [--rounds 8] [--lora-rank 16]

SmolLM2 in the engine's dtype on this CPU (fp32 without native bf16). Each round changes the
student's weights (as an optimizer step does), then syncs them twice, once per method, in
alternating order: "ours" packs the student's tensors straight into the backend's GEMM buffers
(`workers/rollout/vllm_cpu_weights.py`), the peer is vLLM's layer-wise `reload_weights`, which the
engine used before and still uses for other architectures. Before each sync a 512 MB scratch
buffer is written and the student's weights are read, as the backward pass and the optimizer leave
the caches. After each sync the engine decodes the same greedy batch; the two methods must serve
bitwise the same tokens and log-probabilities. Rows: full fine-tuning, and a LoRA student synced
merged (the CPU default). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from app.contracts.rollout_settings import rollout_settings_from_env
    from workers.models.loading import load_model
    from workers.models.placement import default_placement
    from workers.models.smollm2 import import_default
    from workers.rollout.base import RolloutShape, SamplingParams
    from workers.rollout.vllm_engine import VllmEngineBackend

    model_dir = import_default()
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    prompts = [list(range(100 + i, 140 + i)) for i in range(4)]
    scratch = torch.empty(128 * 1024 * 1024)  # 512 MB of fp32
    rows = []
    for label in ("full fine-tuning", f"LoRA r{args.lora_rank}, merged"):
        student: torch.nn.Module = load_model(model_dir, default_placement("cpu"))
        if label.startswith("LoRA"):
            config = LoraConfig(r=args.lora_rank, target_modules="all-linear", init_lora_weights=False)
            student = get_peft_model(student, config)
        trained = [p for p in student.parameters() if p.requires_grad]
        engine = VllmEngineBackend(
            model_dir,
            rollout_settings_from_env().with_overrides({"backend": "vllm"}),
            student=student,
            shape=RolloutShape(4, 64),
        )
        assert engine.weight_sync == "pack", "this model's architecture is not one a packing sync serves"
        seconds: dict[str, list[float]] = {"pack": [], "reload": []}
        same = True
        step = 0
        generator = torch.Generator().manual_seed(0)
        for round_ in range(args.rounds):
            with torch.no_grad():
                for p in trained:
                    p.add_(torch.randn(p.shape, generator=generator) * 1e-4)
            order = ("pack", "reload") if round_ % 2 == 0 else ("reload", "pack")
            served = []
            for method in order:
                scratch.fill_(float(step))
                with torch.no_grad():
                    sum(float(p.sum()) for p in student.parameters())
                engine.weight_sync = method
                started = time.perf_counter()
                engine.sync_weights(step)
                seconds[method].append(time.perf_counter() - started)
                served.append(engine.generate(prompts, greedy))
                step += 1
            same = same and served[0] == served[1]
        dtype = str(engine.engine_dtype).removeprefix("torch.")
        engine.close()
        medians = {}
        for method, peer in (("pack", "ours (packing)"), ("reload", "vLLM's reload_weights")):
            timed = seconds[method][1:]  # the first sync of each method warms its allocations
            medians[method] = statistics.median(timed)
            rows.append(
                f"| {label} | {dtype} | {peer} | {medians[method]:.3f} | {min(timed):.3f} | "
                f"{max(timed):.3f} | {'yes' if same else 'NO'} |"
            )
        rows.append(f"| {label} | | ours/vLLM's | {medians['pack'] / medians['reload']:.2f} | | | |")
        del student, engine
    print(f"\n{args.rounds} rounds, the first sync of each method excluded\n")
    print("| student | engine dtype | sync | median s | min s | max s | same rollouts |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
