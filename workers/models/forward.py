"""The forward plumbing training, rollouts and evaluation share: pack (prompt, completion) pairs into
one padded batch, run the decoder to its final hidden states, and find the positions that predict each
completion token. Prompts are left-padded and completions right-padded, so in every row the
completion starts at the same column and the hidden state at column (start - 1 + j) predicts
completion token j, whatever the prompt length: student and teacher prompts differ in length, and
each side is sliced from its own prompt end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import PreTrainedModel


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    completion_start: int  # column of completion token 0 in every row
    completion_ids: torch.Tensor  # [B, T], right-padded
    completion_lengths: torch.Tensor  # [B]


def pack(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> PackedBatch:
    if len(prompts) != len(completions) or not prompts:
        raise ValueError("need one completion per prompt, and at least one")
    prompt_width = max(len(p) for p in prompts)
    completion_width = max(1, max(len(c) for c in completions))
    rows = len(prompts)
    input_ids = torch.full((rows, prompt_width + completion_width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    completion_ids = torch.full((rows, completion_width), pad_id, dtype=torch.long)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        start = prompt_width - len(prompt)
        input_ids[i, start:prompt_width] = torch.tensor(prompt, dtype=torch.long)
        input_ids[i, prompt_width : prompt_width + len(completion)] = torch.tensor(
            completion, dtype=torch.long
        )
        attention[i, start : prompt_width + len(completion)] = 1
        completion_ids[i, : len(completion)] = torch.tensor(completion, dtype=torch.long)
    # Positions count real tokens only, so a left-padded row sees the same positions as an unpadded one.
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    lengths = torch.tensor([len(c) for c in completions], dtype=torch.long)
    return PackedBatch(
        input_ids.to(device),
        attention.to(device),
        position_ids.to(device),
        prompt_width,
        completion_ids.to(device),
        lengths.to(device),
    )


def completion_hidden(hidden_BLH: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Hidden states that predict the completion tokens: [B, T, H]."""
    width = batch.completion_ids.shape[1]
    start = batch.completion_start - 1
    return hidden_BLH[:, start : start + width]


def base_of(model: torch.nn.Module) -> PreTrainedModel:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    assert isinstance(base, PreTrainedModel)
    return base


def hidden_states(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Final (normed) hidden states [B, L, H], without running the lm head over every position."""
    decoder = base_of(model).get_decoder()
    out = decoder(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    hidden: torch.Tensor = out.last_hidden_state
    return hidden


def head_weight(model: torch.nn.Module) -> torch.Tensor:
    head = base_of(model).get_output_embeddings()
    assert isinstance(head, torch.nn.Module)
    weight = head.weight
    assert isinstance(weight, torch.Tensor)
    return weight
