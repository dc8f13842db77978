"""Fixed costs of a colocated vLLM engine on CPU: start, first rollout, later rollouts.

    python bench/engine_start.py [--prompts 8] [--new-tokens 16]

Each row is a fresh process (what a worker or `sdft train` pays once) that builds the engine a
stage builds for SmolLM2 and samples the same batch three times. "ours" is the engine as shipped:
eager on CPU, counting the sampled token's rank eagerly (`count_ranks_eagerly`). The peers: "vLLM's
compiled count" puts back vLLM's inductor-compiled count; "vLLM's graph compilation" runs the model
as vLLM compiles it when `enforce_eager` is off (dynamo traces compiled by inductor). Each runs with
the on-disk compile caches as this machine has them ("warm") and with empty ones ("cold", fresh
TORCHINDUCTOR_CACHE_DIR and VLLM_CACHE_ROOT, as in a new container). Prints a Markdown table of
seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any


def child(args: argparse.Namespace) -> dict[str, Any]:
    from app.contracts.rollout_settings import rollout_settings_from_env
    from workers.models.smollm2 import import_default
    from workers.rollout.base import RolloutShape, SamplingParams
    from workers.rollout.vllm_engine import VllmEngineBackend, import_vllm

    import_vllm()
    from vllm.v1.sample import sampler

    compiled = sampler.batched_count_greater_than
    settings = rollout_settings_from_env()
    if args.variant == "graph":
        settings = settings.with_overrides({"enforce_eager": False})
    started = time.perf_counter()
    engine = VllmEngineBackend(
        import_default(),
        settings,
        shape=RolloutShape(args.prompts, 64 + args.new_tokens),
    )
    result: dict[str, Any] = {"start_s": time.perf_counter() - started}
    if args.variant == "count":
        sampler.batched_count_greater_than = compiled
    prompts = [list(range(100 + i, 140 + i)) for i in range(args.prompts)]
    times = []
    for seed in range(3):
        started = time.perf_counter()
        engine.generate(prompts, SamplingParams(max_new_tokens=args.new_tokens, seed=seed))
        times.append(time.perf_counter() - started)
    engine.close()
    result["first_s"], result["later_s"] = times[0], min(times[1:])
    return result


VARIANTS = {
    "eager": "ours (eager)",
    "count": "vLLM's compiled count",
    "graph": "vLLM's graph compilation",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="eager")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    print(f"engine_start: SmolLM2, {args.prompts} prompts of 40 tokens, {args.new_tokens} new tokens, CPU")
    print("| engine | compile caches | engine start s | first rollout s | later rollouts s |")
    print("|---|---|---|---|---|")
    for variant, label in VARIANTS.items():
        for cache in ("warm", "cold"):
            with tempfile.TemporaryDirectory() as empty:
                env = dict(os.environ)
                if cache == "cold":
                    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(empty, "inductor")
                    env["VLLM_CACHE_ROOT"] = os.path.join(empty, "vllm")
                command = [sys.executable, __file__, "--child", "--variant", variant]
                command += ["--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens)]
                out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            cells = [label, cache, f"{row['start_s']:.1f}", f"{row['first_s']:.2f}", f"{row['later_s']:.2f}"]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
