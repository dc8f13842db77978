"""Load local Hugging Face model directories (never the hub) and pick device and precision."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from workers.models.forward import head_weight
from workers.models.placement import Placement

# Config fields of model-specific logit transforms (Gemma 2/3, RecurrentGemma, Granite, Cohere).
LOGIT_TRANSFORM_FIELDS = ("final_logit_softcapping", "logits_soft_cap", "logits_scaling", "logit_scale")
HEAD_CHECK_TOKENS = 8


class ModelDirError(ValueError):
    pass


def check_model_dir(path: str | Path) -> Path:
    root = Path(path)
    if not (root / "config.json").is_file():
        raise ModelDirError(f"{root} is not a model directory: config.json is missing")
    if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        raise ModelDirError(f"{root} has no weights (*.safetensors)")
    return root


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tokenizer.chat_template:
        raise ModelDirError(f"the tokenizer in {path} has no chat template")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def without_dropout(config: PretrainedConfig) -> PretrainedConfig:
    """`config` with every dropout rate (`*dropout*`, `*pdrop`) set to 0."""
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, 0.0)
    return config


@torch.no_grad()
def check_logits_are_hidden_times_head(model: PreTrainedModel, root: Path) -> None:
    """Refuse a model whose logits are more than final hidden states @ output embedding.

    The trainer's loss, the importance weights, the learning probe and choice scoring all compute
    exactly that product, chunk by chunk, without running the model's head. An lm_head bias, logit
    scaling (Granite, Cohere) or soft-capping (Gemma 2/3) would make them score another function
    than the one rollouts sample from, so such a model fails here, on a few tokens, instead.
    """
    weight = head_weight(model)
    ids = torch.arange(HEAD_CHECK_TOKENS, device=weight.device).remainder(weight.shape[0])[None]
    ours = model.get_decoder()(input_ids=ids).last_hidden_state @ weight.T
    theirs = model(input_ids=ids).logits
    if ours.shape == theirs.shape and torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4):
        return
    found = [
        f"{name}={getattr(model.config, name)}"
        for name in LOGIT_TRANSFORM_FIELDS
        if getattr(model.config, name, None) is not None
    ]
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        found.append("an lm_head bias")
    raise ModelDirError(
        f"{root}: this model's logits are not its final hidden states times its output embedding "
        f"({', '.join(found) or 'a model-specific transform'}); the trainer computes exactly that "
        "product, so models with an lm_head bias, logit scaling or soft-capping are not supported"
    )


def load_model(path: str | Path, placement: Placement) -> PreTrainedModel:
    root = check_model_dir(path)
    # Dropout off at the source: the student is scored in train mode (gradient checkpointing needs
    # it), and its scores must be the function the rollouts and the teacher see.
    config = without_dropout(AutoConfig.from_pretrained(str(root), local_files_only=True))
    model = AutoModelForCausalLM.from_pretrained(
        str(root), config=config, local_files_only=True, dtype=torch.float32
    )
    model.to(placement.device)  # type: ignore[arg-type]
    model.config.use_cache = False
    check_logits_are_hidden_times_head(model, root)
    return model


# Keys under which model configs give the context length (text_config for multimodal models).
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length_from_config(config: Mapping[str, Any]) -> int | None:
    """The number of positions a model config allows, or None when it does not say."""
    for scope in (config, config.get("text_config") or {}):
        for key in _CONTEXT_KEYS:
            value = scope.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model_dir: str | Path | None = None) -> list[int]:
    """Every id that ends an assistant turn: the tokenizer's EOS plus the generation config's."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        eos = json.loads((Path(model_dir) / "generation_config.json").read_text()).get("eos_token_id")
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(i) for i in eos)
    return sorted(ids)


def model_context_length(model: torch.nn.Module | None) -> int | None:
    config = getattr(model, "config", None)
    return None if config is None else context_length_from_config(config.to_dict())


def model_dir_context_length(model_dir: str | Path) -> int | None:
    path = Path(model_dir) / "config.json"
    return context_length_from_config(json.loads(path.read_text())) if path.is_file() else None
