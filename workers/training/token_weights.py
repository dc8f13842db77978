"""Which completion tokens count, and how much: loss masks, the per-sequence or per-token reduction,
and truncated importance weights. Pure tensor functions."""

from __future__ import annotations

import torch
from torch import Tensor


def truncated_importance_weights(
    trainer_logprobs_BT: Tensor, sampler_logprobs_BT: Tensor, mask_BT: Tensor, cap: float = 2.0
) -> Tensor:
    """Per-sequence weight = masked mean of min(exp(clamp(log p_trainer − log p_sampler, ±20)), cap).

    Corrects for sampler (vLLM) and trainer numerics disagreeing. Detached (a weight, not part of the
    graph); sequences with an empty mask get 1.0. Masked positions may hold -inf/NaN log-probs.
    """
    mask_BT = mask_BT.detach() > 0
    log_ratio_BT = (trainer_logprobs_BT.detach() - sampler_logprobs_BT.detach()).float()
    ratio_BT = log_ratio_BT.clamp(min=-20.0, max=20.0).exp().clamp(max=cap)
    ratio_BT = torch.where(mask_BT, ratio_BT, torch.zeros_like(ratio_BT))
    count_B = mask_BT.sum(dim=-1)
    mean_B = ratio_BT.sum(dim=-1) / count_B.clamp(min=1)
    return torch.where(count_B > 0, mean_B, torch.ones_like(mean_B))


def sequence_mean_token_weights(
    mask_BT: Tensor, sequence_weights_B: Tensor | None, num_sequences_total: int
) -> Tensor:
    """Token weights [B,T] so Σ w·loss = (1/num_sequences_total) Σ_b seq_w_b · masked_mean_t(loss_bt).

    num_sequences_total counts sequences over the whole optimizer step (all gradient-accumulation
    micro-batches), so summing micro-batch losses gives the step's mean. Empty-mask sequences get 0.
    The result is detached.
    """
    if num_sequences_total < 1:
        raise ValueError(f"num_sequences_total must be >= 1, got {num_sequences_total}")
    mask_BT = mask_BT.detach().float()
    per_token_BT = mask_BT / mask_BT.sum(dim=-1, keepdim=True).clamp(min=1.0)
    if sequence_weights_B is not None:
        per_token_BT = per_token_BT * sequence_weights_B.detach().float().unsqueeze(-1)
    return per_token_BT / num_sequences_total


def completion_loss_mask(completion_ids_BT: Tensor, completion_lengths_B: Tensor, skip_first: int) -> Tensor:
    """Float [B,T]: 1 at positions t with skip_first ≤ t < length (length includes the EOS), else 0."""
    positions_1T = torch.arange(completion_ids_BT.shape[-1], device=completion_ids_BT.device).unsqueeze(0)
    lengths_B1 = completion_lengths_B.to(completion_ids_BT.device).unsqueeze(-1)
    return ((positions_1T < lengths_B1) & (positions_1T >= skip_first)).float()


def token_mean_token_weights(
    mask_BT: Tensor, sequence_weights_B: Tensor | None, num_tokens_total: int
) -> Tensor:
    """Token weights [B,T] so Σ w·loss = (1/num_tokens_total) Σ_bt mask_bt · seq_w_b · loss_bt.

    Every counted completion token of the optimizer step weighs the same (DAPO-style), so a long
    sequence is not diluted to the weight of a short one: where the teacher knows better on one or two
    tokens of a long answer, those tokens keep their full weight. num_tokens_total counts the mask over
    the whole step (all micro-batches). The result is detached.
    """
    if num_tokens_total < 1:
        raise ValueError(f"num_tokens_total must be >= 1, got {num_tokens_total}")
    per_token_BT = mask_BT.detach().float()
    if sequence_weights_B is not None:
        per_token_BT = per_token_BT * sequence_weights_B.detach().float().unsqueeze(-1)
    return per_token_BT / num_tokens_total
