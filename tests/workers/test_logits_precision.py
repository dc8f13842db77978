"""Logits are computed in fp32 from bf16 hidden states (CUDA autocast's), chunk by chunk, on both the
student's and the teacher's side and for the sampled tokens' log-probabilities: a bf16 matmul would
round logits of ~20 by ~0.06 before the log-softmax."""

from __future__ import annotations

import torch

from workers.models.forward import sampled_token_logprobs
from workers.training.chunked_head import (
    chunked_lm_head_loss,
    cross_entropy_token_loss,
    distillation_token_loss,
)
from workers.training.divergences import cross_entropy_tokens, token_divergence

N, H, V = 24, 64, 512
TIGHT = {"rtol": 1e-5, "atol": 1e-5}


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = (3.0 * torch.randn(N, H, generator=gen)).bfloat16()
    weight = torch.randn(V, H, generator=gen) / 2  # logits of ~20
    return hidden, weight


def test_logits_from_bf16_hidden_states_are_fp32() -> None:
    hidden, weight = _inputs(0)
    teacher_hidden, teacher_weight = _inputs(1)
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2))
    logits = hidden.float() @ weight.T
    teacher_logits = teacher_hidden.float() @ teacher_weight.bfloat16().float().T
    rounded = (hidden @ weight.bfloat16().T).float()
    assert (rounded - logits).abs().max() > 1e-2, "the check must tell a bf16 matmul apart"

    # Student side of the fused loss (an fp32 master weight), and the sampled tokens' log-probs.
    weights = torch.full((N,), 1.0 / N)
    student = chunked_lm_head_loss(
        hidden, weight, weights, token_loss=cross_entropy_token_loss(ids), chunk_size=8
    )
    torch.testing.assert_close(student, (weights * cross_entropy_tokens(logits, ids)).sum(), **TIGHT)
    expected = logits.log_softmax(-1).gather(-1, ids[:, None]).squeeze(-1)
    torch.testing.assert_close(sampled_token_logprobs(hidden, weight, ids, chunk_size=8), expected, **TIGHT)

    # Teacher side: a bf16 teacher (weights and hidden states), as on CUDA.
    token_loss = distillation_token_loss(teacher_hidden, teacher_weight.bfloat16())
    torch.testing.assert_close(
        token_loss(logits, slice(0, N)), token_divergence(logits, teacher_logits), **TIGHT
    )
