"""Load local Hugging Face model directories (never the hub) and pick device and precision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Placement:
    """Where a stage runs. Weights stay fp32 everywhere (an fp32 master copy, so small AdamW updates
    are not rounded away); on CUDA the forward passes run under bf16 autocast."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> torch.autocast:
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled)


def default_placement(device: str | None = None) -> Placement:
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Placement(chosen, torch.bfloat16 if chosen.type == "cuda" else None)


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


def load_model(path: str | Path, placement: Placement) -> PreTrainedModel:
    root = check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(str(root), local_files_only=True, dtype=torch.float32)
    model.to(placement.device)  # type: ignore[arg-type]
    # Dropout off: on-policy rollouts and the teacher must see the same function the loss trains.
    model.config.use_cache = False
    return model


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
