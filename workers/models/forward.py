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

from workers.models.placement import Placement


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


def micro_batches(widths: Sequence[int], size: int) -> list[list[int]]:
    """Row indices in batches of at most `size`, rows of similar width together.

    `pack` pads every row of a batch to its widest, so grouping by width removes padding (long
    tool-use prompts beside short ones); a training step's gradient is the same sum whatever the
    grouping, and scores come back per row.
    """
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    return [order[start : start + size] for start in range(0, len(order), size)]


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


def logits_dtype(hidden: torch.Tensor) -> torch.dtype:
    """Logits are computed in at least fp32 (fp64 stays fp64, for tight reference tests): a bf16
    matmul (CUDA autocast's hidden states) rounds logits of ~20 by ~0.06 before the log-softmax,
    more than the divergences between near-identical distributions it feeds."""
    return torch.promote_types(hidden.dtype, torch.float32)


@torch.no_grad()
def sampled_token_logprobs(
    hidden_NH: torch.Tensor, head_weight_VH: torch.Tensor, ids_N: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """log p(ids) under hidden @ W^T, fp32 [N], chunked, no grad (IS weights and diagnostics)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = hidden_NH.shape[0]
    out_N = torch.empty(n, dtype=torch.float32, device=hidden_NH.device)
    compute = logits_dtype(hidden_NH)
    weight_VH = head_weight_VH.to(compute)
    ids_N = ids_N.to(device=hidden_NH.device, dtype=torch.long)
    for start in range(0, n, chunk_size):
        positions = slice(start, min(start + chunk_size, n))
        logits_nV = hidden_NH[positions].to(compute) @ weight_VH.T
        picked_n = logits_nV.gather(-1, ids_N[positions].unsqueeze(-1)).squeeze(-1)
        out_N[positions] = picked_n - torch.logsumexp(logits_nV, dim=-1)
    return out_N


@torch.no_grad()
def continuation_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    placement: Placement,
    batch_size: int = 16,
) -> list[list[float]]:
    """log p(continuation token j | prompt, earlier continuation tokens) for every pair, batched.

    Pairs are sorted by length so each batch pads little; results come back in input order. Uses the
    training path (pack, final hidden states, lm-head rows of the scored tokens only) so eval scores
    and training losses read the model the same way.
    """
    if len(prompts) != len(continuations):
        raise ValueError("need one continuation per prompt")
    widths = [len(p) + len(c) for p, c in zip(prompts, continuations, strict=True)]
    scores: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for rows in micro_batches(widths, batch_size):
            batch = pack(
                [prompts[i] for i in rows], [continuations[i] for i in rows], pad_token_id, placement.device
            )
            with placement.autocast():
                hidden_BTH = completion_hidden(hidden_states(model, batch), batch)
            b, t, h = hidden_BTH.shape
            logprobs_BT = sampled_token_logprobs(
                hidden_BTH.reshape(b * t, h), head_weight(model), batch.completion_ids.reshape(-1)
            ).view(b, t)
            for position, i in enumerate(rows):
                scores[i] = logprobs_BT[position, : len(continuations[i])].tolist()
    finally:
        model.train(was_training)
    return scores
