"""Evaluation speed: one suite scored with the transformers backend and with vLLM, same model, same run.

    python bench/eval_speed.py [--model DIR] [--skill tool-use] [--max-new-tokens 128]

Default: the 40 ToolAlpaca test items (prompts of 500-1,300 tokens) on the embedded SmolLM2, greedy.
Each backend runs in its own process (vLLM binds the process's threads), engine start included.
Prints a Markdown table with the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(model: str, skill: str, tokens: int, backend: str) -> dict[str, float]:
    from app.examples import SKILLS
    from workers.evaluation.cache import evaluate_model_dir
    from workers.experiments.continual.runner import capped_suite

    suite = capped_suite(SKILLS[skill].suite("test"), tokens)
    started = time.perf_counter()
    evaluation = evaluate_model_dir(model, [suite], backend_kind=backend)
    result = evaluation.results[0]
    return {
        "seconds": time.perf_counter() - started,
        "score": result.score,
        "n": result.n,
        "engine": evaluation.engine,  # what ran: transformers when the vLLM engine did not start
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--skill", default="tool-use")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:
        from workers.models.smollm2 import import_default

        args.model = str(import_default())
    if args.child:
        print(json.dumps(child(args.model, args.skill, args.max_new_tokens, args.child)))
        return 0
    results = {}
    for backend in ("transformers", "vllm"):
        command = [sys.executable, __file__, "--model", args.model, "--skill", args.skill]
        command += ["--max-new-tokens", str(args.max_new_tokens), "--child", backend]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{backend}: {results[backend]['seconds']:.0f} s", flush=True)
    print(
        f"\n{args.skill} test suite ({results['vllm']['n']} items), "
        f"<= {args.max_new_tokens} new tokens, greedy"
    )
    print("| backend | engine that ran | seconds (engine start included) | score |")
    print("| --- | --- | --- | --- |")
    for backend, row in results.items():
        print(f"| {backend} | {row['engine']} | {row['seconds']:.0f} | {row['score']:.1f} |")
    print(
        "| **transformers / vLLM** | | "
        f"**{results['transformers']['seconds'] / results['vllm']['seconds']:.1f}x** | |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
