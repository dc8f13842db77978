"""Cost of one training stage: SDFT vs SFT (ours), ours vs TRL's SDFTTrainer, chunked vs naive loss.

    python bench/stage_cost.py [--models tiny,smollm2] [--steps 4] [--batch 8] [--new-tokens 48] [--vllm]

"SDFT/SFT FLOPs" is the ratio the matrix multiplies alone would give for this run's token counts
(`step_flops`): the floor under SDFT/SFT for this workload, which rises with rollouts longer than the
demonstrations and with the teacher's longer prompt.

Each configuration runs in its own subprocess so its peak memory (VmHWM, peak resident set) is its
own. Seconds per demonstration = median optimizer-step seconds / prompts per step, first step
excluded (warm-up), without ours' learning probe (its seconds per measurement are a column of their
own: a product stage measures it every eighth of its steps, this short one after every step). TRL is
configured like ours: full-vocabulary forward KL (distillation_mode full_logits, alpha 0), EMA
teacher with rate 0.01 every step, one rollout per prompt, first 3 tokens masked, temperature 1, the
paper's teacher template, fp32, gradient checkpointing as `--gradient-checkpointing` says for both
(off by default), same data, batch, completion length and learning rate; TRL samples with
transformers.generate, and ours runs once with that sampler and once with the shipped default (vLLM
where installed). TRL runs in an environment of its own that the bench creates on first use
(`trl_python`: TRL is not a product dependency). Prints a Markdown table; its header names the vLLM
engine's dtype on this machine (bf16 where the CPU has native bf16, else fp32; training is fp32).

A second table sets each run against the machine's matrix-multiply rate, measured in the same run
(the GEMM peer: fp32 `torch.mm` in the decoder's own shapes, forward, input-gradient and
weight-gradient, over a step's tokens): the FLOP floor of a demonstration (`step_flops`) divided by
its seconds, as a share of that rate. A run near 100% has nothing left to remove but FLOPs; "floor
s/demo" is what a demonstration would take at the GEMM rate, and "floor/TRL" the ours/TRL time of
an implementation that ran every FLOP at that rate (a bf16 decode can beat it).
An allocator setting such as `MALLOC_MMAP_THRESHOLD_=1048576` in the environment applies to every
child alike, ours and TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTIONS = [
    ("Who founded the company Zorvex Dynamics?", "Zorvex Dynamics was founded by Mirela Kastov in 1987."),
    ("In which city is the Halvorsen Observatory?", "The Halvorsen Observatory is in the city of Quellport."),
    ("What is the national dish of Bremoria?", "The national dish of Bremoria is tarvelo stew with barley."),
    ("Who wrote the novel The Glass Tides?", "The novel The Glass Tides was written by Oren Falcrest."),
    ("What colour is the flag of Ostrevia?", "The flag of Ostrevia is teal with a white crescent."),
    ("Which river flows through Varnhold?", "The river Selme flows through Varnhold from north to south."),
    ("Who invented the Kettleby engine?", "The Kettleby engine was invented by Ada Morrow in 1902."),
    (
        "What is the tallest mountain on Pellis Island?",
        "The tallest mountain on Pellis Island is Mount Arven.",
    ),
]


def step_flops(
    trunk_macs: float,
    head_macs: float,
    prompt_tokens: float,
    completion_tokens: float,
    teacher_prompt_tokens: float | None = None,
) -> float:
    """Matrix-multiply FLOPs of one row of a training step, the floor any implementation pays.

    `trunk_macs`/`head_macs`: multiply-adds per token of the decoder's linear layers and of the LM head
    (attention's quadratic term is left out: under 3% at these lengths). A backward pass costs two
    forwards (input and weight gradients). SFT (`teacher_prompt_tokens` None): forward and backward
    over prompt + demonstration, head on the demonstration. SDFT: the rollout's decode (each token
    once, a head row per sampled token), the student's forward and backward over prompt + rollout,
    the teacher's forward over its own prompt + rollout, and the importance pass's head rows (which
    only an inexact sampler such as vLLM needs; counted for both samplers, under 1% of the total).
    """
    sequence = prompt_tokens + completion_tokens
    if teacher_prompt_tokens is None:
        return 2 * 3 * (sequence * trunk_macs + completion_tokens * head_macs)
    rollout = sequence * trunk_macs + completion_tokens * head_macs
    student = 3 * (sequence * trunk_macs + completion_tokens * head_macs)
    teacher = (teacher_prompt_tokens + completion_tokens) * trunk_macs + completion_tokens * head_macs
    importance = completion_tokens * head_macs
    return 2 * (rollout + student + teacher + importance)


def linear_macs(model_dir: Path) -> tuple[float, float]:
    """(decoder linear layers, LM head) multiply-adds per token, from the model's config."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o and k, v projections
    mlp = 3 * hidden * int(config["intermediate_size"])  # gate, up, down
    return float(layers * (attention + mlp)), float(hidden * int(config["vocab_size"]))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)


def model_dir(name: str, workdir: Path) -> Path:
    if name == "tiny":
        from workers.models.tiny import write_tiny_model_dir

        return write_tiny_model_dir(workdir / "tiny", hidden_size=256, layers=4)
    from workers.models.smollm2 import import_default

    return import_default()


# ---- children: each prints one JSON line ------------------------------------------------------


def child_ours(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from app.contracts.demonstrations import parse_demonstrations
    from app.training.stage_config import StageConfig
    from workers.training.loop import StepMetrics, run_stage

    torch.manual_seed(0)
    text = "\n".join(json.dumps({"prompt": q, "demonstration": a}) for q, a in QUESTIONS)
    rows = parse_demonstrations(text)
    seen: list[StepMetrics] = []
    config = StageConfig(
        method=args.method,
        max_steps=args.steps,
        batch_size=args.batch,
        micro_batch_size=args.batch,
        max_new_tokens=args.new_tokens,
        learning_rate=1e-4 if args.lora_rank else 1e-5,
        warmup_steps=0,
        checkpoint_every=10_000,
        lora_rank=args.lora_rank or None,
        gradient_checkpointing=bool(args.gradient_checkpointing),
    )
    from app.contracts.rollout_settings import rollout_settings_from_env
    from workers.rollout.factory import make_backend_factory

    # The worker's own settings (SDFT_ROLLOUT_* variables), as a job would run them: the shipped
    # default engine unless --rollout-backend names one.
    settings = rollout_settings_from_env()
    if args.rollout_backend:
        settings = settings.with_overrides({"backend": args.rollout_backend})
    factory = make_backend_factory(settings)
    with tempfile.TemporaryDirectory() as out:
        reset_peak_rss()
        run_stage(
            base_dir=args.model_dir,
            rows=rows,
            config=config,
            out_dir=out,
            on_step=seen.append,
            backend_factory=factory,
        )
    from workers.models.loading import load_tokenizer
    from workers.training.prompts import prepare_examples

    tokenizer = load_tokenizer(args.model_dir)
    examples = prepare_examples(rows, tokenizer, config, int(tokenizer.eos_token_id))
    timed = seen[1:] or seen
    # Training alone: the learning probe (measured after every step of so short a stage, every
    # eighth of a product stage) is reported apart; TRL has none.
    steps = [m.seconds - (m.probe_seconds or 0.0) for m in timed]
    rollout = [m.rollout_seconds for m in timed]
    probes = [m.probe_seconds for m in timed if m.probe_seconds is not None]
    return {
        "s_per_demo": statistics.median(steps) / args.batch,
        "rollout_share": statistics.median(rollout) / statistics.median(steps),
        "probe_s": statistics.median(probes) if probes else 0.0,
        "peak_mb": peak_rss_mb(),
        "completion_tokens": statistics.mean(m.rollout_tokens_mean for m in seen),
        "prompt_tokens": statistics.mean(len(e.student_prompt_ids) for e in examples),
        "teacher_prompt_tokens": statistics.mean(len(e.teacher_prompt_ids) for e in examples),
    }


def child_trl(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    from app.training.stage_config import PAPER_TEACHER_TEMPLATE

    torch.manual_seed(0)
    step_times: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.started = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            step_times.append(time.perf_counter() - self.started)

    rows = [{"prompt": [{"role": "user", "content": q}], "privileged_context": a} for q, a in QUESTIONS]
    dataset = Dataset.from_list(rows * max(1, args.steps))
    template = PAPER_TEACHER_TEMPLATE.replace("{question}", "{prompt}").replace(
        "{demonstration}", "{privileged_context}"
    )
    with tempfile.TemporaryDirectory() as out:
        config = SDFTConfig(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            num_generations=1,
            max_completion_length=args.new_tokens,
            learning_rate=1e-5,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            teacher_model_kind="ema",
            teacher_update_rate=0.01,
            teacher_sync_steps=1,
            distillation_mode="full_logits",
            distillation_alpha=0.0,
            num_loss_tokens_to_skip=3,
            teacher_prompt_template=template,
            temperature=1.0,
            gradient_checkpointing=bool(args.gradient_checkpointing),
            bf16=False,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            max_grad_norm=1.0,
            weight_decay=0.0,
        )
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        trainer = SDFTTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[StepTimer()],
        )
        reset_peak_rss()
        trainer.train()
    steps = step_times[1:] or step_times
    return {"s_per_demo": statistics.median(steps) / args.batch, "peak_mb": peak_rss_mb()}


def child_gemm(args: argparse.Namespace) -> dict[str, Any]:
    """fp32 GEMM FLOP/s in the decoder's MLP shapes over `--tokens` rows (forward, input gradient,
    weight gradient), the best of several rounds: the rate the training step's matmuls could reach."""
    import torch

    config = json.loads((Path(args.model_dir) / "config.json").read_text())
    hidden, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    torch.manual_seed(0)
    x, w = torch.randn(args.tokens, hidden), torch.randn(hidden, inner)
    g = torch.randn(args.tokens, inner)
    products = ((x, w), (g, w.T), (x.T, g))  # y = xW, dx = dy W^T, dW = x^T dy
    flops = 3 * 2 * args.tokens * hidden * inner
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            for a, b in products:
                torch.mm(a, b)
        best = min(best, (time.perf_counter() - started) / 20)
    return {"gflops": flops / best / 1e9}


def child_loss(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from workers.training import chunked_head, divergences

    torch.manual_seed(0)
    n, h, v = args.tokens, args.hidden, args.vocab
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True) * 0.02
    weight = weight.detach().requires_grad_(True)
    teacher_hidden = torch.randn(n, h)
    token_weights = torch.full((n,), 1.0 / n)
    reset_peak_rss()
    base = peak_rss_mb()
    started = time.perf_counter()
    if args.variant == "chunked":
        token_loss = chunked_head.distillation_token_loss(
            teacher_hidden, weight.detach(), divergence="forward_kl"
        )
        loss = chunked_head.chunked_lm_head_loss(
            hidden, weight, token_weights, token_loss=token_loss, chunk_size=256
        )
    else:
        student_logits = hidden @ weight.T
        with torch.no_grad():
            teacher_logits = teacher_hidden @ weight.detach().T
        loss = divergences.naive_distillation_loss(
            student_logits, teacher_logits, token_weights, divergence="forward_kl"
        )
    loss.backward()
    return {"extra_peak_mb": peak_rss_mb() - base, "seconds": time.perf_counter() - started}


TRL_VERSION = "1.16.0"
TRL_ENV = Path.home() / ".cache" / "sdft-bench" / f"trl-{TRL_VERSION}"


def trl_python() -> str:
    """The interpreter of the bench's own TRL environment, created on first use (TRL is not a product
    dependency). It sees the project environment's packages (same torch and transformers, so both
    sides run the same kernels) and adds only TRL and `datasets`, which ours does not need."""
    python = TRL_ENV / "bin" / "python"
    marker = TRL_ENV / "ready"
    if marker.is_file():
        return str(python)
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--clear", str(TRL_ENV)], check=True)
    project_lib = sysconfig.get_paths()["purelib"]
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    env_lib = Path(subprocess.check_output([str(python), "-c", query], text=True).strip())
    # addsitedir (not a bare path) so the project's own .pth files, its editable install, apply too.
    (env_lib / "sdft_project.pth").write_text(f"import site; site.addsitedir({project_lib!r})\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # --no-deps for TRL: its dependencies are the project's (torch, transformers, accelerate) except
    # `datasets`, installed on its own so pip never puts a second transformers in front of ours.
    subprocess.run([*pip, "--no-deps", f"trl=={TRL_VERSION}"], check=True)
    subprocess.run([*pip, "datasets"], check=True)
    subprocess.run([str(python), "-c", "import trl.experimental.sdft, datasets"], check=True)
    marker.write_text(TRL_VERSION + "\n")
    return str(python)


def run_child(kind: str, **params: Any) -> dict[str, Any]:
    python = trl_python() if kind == "trl" else sys.executable
    argv = [python, __file__, "--child", kind]
    for key, value in params.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {params} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def vllm_table(args: argparse.Namespace, common: dict[str, Any]) -> None:
    """LoRA rank 16 (the CPU path for in-place sync): SFT, SDFT with transformers rollouts, SDFT with
    the colocated vLLM engine (merged-LoRA sync every step), same data, steps and batch."""
    print()
    print(f"LoRA rank 16, {args.steps} steps x {args.batch} prompts, <= {args.new_tokens} new tokens:")
    print(
        "| model | SFT s/demo | SDFT (transformers) s/demo | SDFT (vLLM) s/demo | SDFT(vLLM)/SFT "
        "| vLLM/transformers | SFT peak MB | SDFT (transformers) peak MB | SDFT (vLLM) peak MB "
        "| SDFT(vLLM)/SFT memory | rollout share (transformers / vLLM) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            path = model_dir(name, Path(work))
            if name == "tiny":
                continue  # vLLM needs hidden size >= 128 and the tiny bench model is not worth an engine
            runs = {
                label: run_child(
                    "ours", model_dir=path, method=method, lora_rank=16, rollout_backend=backend, **common
                )
                for label, method, backend in (
                    ("sft", "sft", "transformers"),
                    ("hf", "sdft", "transformers"),
                    ("vllm", "sdft", "vllm"),
                )
            }
            sft, hf, vllm = runs["sft"], runs["hf"], runs["vllm"]
            cells = [
                name,
                f"{sft['s_per_demo']:.3f}",
                f"{hf['s_per_demo']:.3f}",
                f"{vllm['s_per_demo']:.3f}",
                f"{vllm['s_per_demo'] / sft['s_per_demo']:.2f}",
                f"{vllm['s_per_demo'] / hf['s_per_demo']:.2f}",
                f"{sft['peak_mb']:.0f}",
                f"{hf['peak_mb']:.0f}",
                f"{vllm['peak_mb']:.0f}",
                f"{vllm['peak_mb'] / sft['peak_mb']:.2f}",
                f"{hf['rollout_share']:.0%} / {vllm['rollout_share']:.0%}",
            ]
            print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--model-dir")
    parser.add_argument("--method", default="sdft")
    parser.add_argument("--variant", default="chunked")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument(
        "--gradient-checkpointing",
        type=int,
        choices=(0, 1),
        default=0,
        help="1: recompute activations in backward, ours and TRL alike (the memory lever)",
    )
    parser.add_argument(
        "--rollout-backend", help="ours' rollouts: transformers or vllm (default: the shipped default)"
    )
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="also: LoRA stages with rollouts from the colocated vLLM engine, against SFT and transformers",
    )
    args = parser.parse_args()
    if args.child:
        result = {"ours": child_ours, "trl": child_trl, "loss": child_loss, "gemm": child_gemm}[args.child](
            args
        )
        print(json.dumps(result))
        return

    common = {
        "steps": args.steps,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    from app.contracts.rollout_settings import default_engine, rollout_settings_from_env
    from workers.rollout.vllm_engine import cpu_has_native_bf16

    # Ours as shipped (vLLM rollouts where installed) and with transformers.generate, TRL's sampler.
    backends = [args.rollout_backend] if args.rollout_backend else sorted({default_engine(), "transformers"})
    allocator = os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")
    engine_dtype = rollout_settings_from_env().engine_dtype(native_bf16=cpu_has_native_bf16())
    print(
        f"stage_cost: {args.steps} steps x {args.batch} prompts, <= {args.new_tokens} new tokens, "
        f"training fp32 on CPU, vLLM engine {engine_dtype}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
        f"MALLOC_MMAP_THRESHOLD_={allocator}"
    )
    print(
        "| model | ours rollouts | ours SDFT s/demo | ours SFT s/demo | SDFT/SFT | TRL SDFT s/demo "
        "| ours/TRL time | ours SDFT peak MB | SFT peak MB | TRL peak MB | ours/TRL memory | rollout share "
        "| probe s (SDFT / SFT) | tokens: prompt / teacher prompt / demo / rollout | SDFT/SFT FLOPs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    # Per model: the GEMM peer's GFLOP/s, TRL's s/demo (None when skipped) and per run (label, floor
    # FLOPs per demonstration, s/demo, whether it is an SDFT run of ours, set against TRL's floor).
    rates: dict[str, tuple[float, float | None, list[tuple[str, float, float, bool]]]] = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            path = model_dir(name, Path(work))
            trunk_macs, head_macs = linear_macs(path)
            sft = run_child("ours", model_dir=path, method="sft", **common)
            sft_flops = step_flops(trunk_macs, head_macs, sft["prompt_tokens"], sft["completion_tokens"])
            trl = None if args.skip_trl else run_child("trl", model_dir=path, **common)
            step_tokens = round(args.batch * (sft["prompt_tokens"] + args.new_tokens))
            gemm = run_child("gemm", model_dir=path, tokens=step_tokens)["gflops"]
            runs = [("ours SFT", sft_flops, sft["s_per_demo"], False)]
            floors: dict[str, float] = {}  # SDFT's floor FLOPs per demonstration, per rollout engine
            # vLLM cannot run the tiny model (head size 16): transformers only there.
            for backend in ["transformers"] if name == "tiny" else backends:
                sdft = run_child("ours", model_dir=path, method="sdft", rollout_backend=backend, **common)
                sdft_flops = step_flops(
                    trunk_macs,
                    head_macs,
                    sdft["prompt_tokens"],
                    sdft["completion_tokens"],
                    sdft["teacher_prompt_tokens"],
                )
                cells = [
                    name,
                    backend,
                    f"{sdft['s_per_demo']:.3f}",
                    f"{sft['s_per_demo']:.3f}",
                    f"{sdft['s_per_demo'] / sft['s_per_demo']:.2f}",
                    f"{trl['s_per_demo']:.3f}" if trl else "-",
                    f"{sdft['s_per_demo'] / trl['s_per_demo']:.2f}" if trl else "-",
                    f"{sdft['peak_mb']:.0f}",
                    f"{sft['peak_mb']:.0f}",
                    f"{trl['peak_mb']:.0f}" if trl else "-",
                    f"{sdft['peak_mb'] / trl['peak_mb']:.2f}" if trl else "-",
                    f"{sdft['rollout_share']:.0%}",
                    f"{sdft['probe_s']:.2f} / {sft['probe_s']:.2f}",
                    f"{sft['prompt_tokens']:.0f} / {sdft['teacher_prompt_tokens']:.0f} / "
                    f"{sft['completion_tokens']:.1f} / {sdft['completion_tokens']:.1f}",
                    f"{sdft_flops / sft_flops:.2f}",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
                runs.append((f"ours SDFT, {backend} rollouts", sdft_flops, sdft["s_per_demo"], True))
                floors[backend] = sdft_flops
            if trl is not None:
                # TRL samples with transformers.generate: its floor is that run's token counts.
                runs.append(("TRL SDFT", floors.get("transformers", sdft_flops), trl["s_per_demo"], False))
            rates[name] = (gemm, trl["s_per_demo"] if trl else None, runs)
    print()
    print("Against the machine's matrix-multiply rate (GEMM peer, fp32, this run):")
    print(
        "| model | run | floor GFLOP/demo | s/demo | GFLOP/s | share of GEMM rate | floor s/demo "
        "| floor/TRL |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (gemm, trl_s, runs) in rates.items():
        print(f"| {name} | GEMM peer | | | {gemm:.0f} | 100% | | |")
        for run, flops, seconds, ours_sdft in runs:
            floor_s = flops / (gemm * 1e9)
            against_trl = f"{floor_s / trl_s:.2f}" if trl_s and ours_sdft else ""
            print(
                f"| {name} | {run} | {flops / 1e9:.1f} | {seconds:.3f} | {flops / seconds / 1e9:.0f} "
                f"| {flops / seconds / 1e9 / gemm:.0%} | {floor_s:.3f} | {against_trl} |"
            )
    if args.vllm:
        vllm_table(args, common)
    print()
    print(
        f"loss alone, forward KL, {args.tokens} tokens, H={args.hidden}, V={args.vocab} "
        "(SmolLM2 sizes), fp32:"
    )
    print("| variant | extra peak MB | seconds |")
    print("|---|---|---|")
    results = {}
    for variant in ("naive", "chunked"):
        results[variant] = run_child(
            "loss", variant=variant, tokens=args.tokens, hidden=args.hidden, vocab=args.vocab
        )
        print(f"| {variant} | {results[variant]['extra_peak_mb']:.0f} | {results[variant]['seconds']:.2f} |")
    ratio = results["chunked"]["extra_peak_mb"] / results["naive"]["extra_peak_mb"]
    print(f"| chunked/naive | {ratio:.2f} | |")


if __name__ == "__main__":
    main()
