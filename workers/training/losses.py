"""Per-token losses for SDFT and the SFT baseline: pure tensor functions, no model, no I/O.

Conventions (see shared/reference/sdft-algorithm.md §4):

- p is the student distribution (gets gradients), q the teacher (always detached).
- ``forward_kl`` = KL(q‖p) = Σ_v q (log q − log p): the paper's default; d/dz_student = p − q.
- ``reverse_kl`` = KL(p‖q) = Σ_v p (log p − log q), teacher log-probs floored at −30.
- ``jsd`` = α·KL(q‖M) + (1−α)·KL(p‖M), M = (1−α)p + αq, α ∈ (0, 1). JSD_α/α → forward KL as
  α → 0 and JSD_α/(1−α) → reverse KL as α → 1 (TRL's 0 = forward, 1 = reverse convention).
- Softmaxes are taken in at least fp32 whatever the logits' dtype.
- No sampling temperature is applied here: callers divide both sides' logits by the same τ.

Memory: the naive full-vocab path keeps several N×V tensors alive at once (student logits, their
log_softmax saved for backward, teacher logits and log_softmax, the elementwise divergence, the
logits' gradient): gigabytes per sequence at V ≈ 150k. ``chunked_lm_head_loss`` fuses the lm-head
matmul with the loss and its gradient so that only chunk×V tensors ever exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DIVERGENCES",
    "SUPPORTS",
    "TokenLoss",
    "chunked_lm_head_loss",
    "completion_loss_mask",
    "cross_entropy_token_loss",
    "cross_entropy_tokens",
    "distillation_token_loss",
    "naive_distillation_loss",
    "sampled_token_logprobs",
    "sequence_mean_token_weights",
    "token_divergence",
    "truncated_importance_weights",
]

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
SUPPORTS = ("full", "teacher_topk", "sampled_token")

# Reverse KL multiplies by log q; a teacher zero (top-k/top-p filtered token, -inf logit) would give inf.
TEACHER_LOGPROB_FLOOR = -30.0
# log(1 - e^s) needs s < 0 strictly; TRL clamps the same way.
TAIL_LOGSUMEXP_MAX = -1e-7

# token_loss(student_logits_nV, positions) -> loss_n; positions is the slice of [0, N) in the chunk.
TokenLoss = Callable[[Tensor, slice], Tensor]


def validate_divergence_args(
    *, divergence: str, jsd_alpha: float, support: str, top_k: int, has_sampled_ids: bool
) -> None:
    """Raise ValueError for an invalid divergence/support combination (callable before training)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}, got {support!r}")
    if divergence == "jsd" and not 0.0 < jsd_alpha < 1.0:
        # JSD_α → 0 at both endpoints; use forward_kl (α=0) / reverse_kl (α=1) instead.
        raise ValueError(f"jsd_alpha must be in (0, 1), got {jsd_alpha}; use forward_kl/reverse_kl")
    if support == "teacher_topk" and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if support == "sampled_token":
        if divergence != "reverse_kl":
            # The one-sample estimator is unbiased only for the reverse-KL gradient.
            raise ValueError("support='sampled_token' requires divergence='reverse_kl'")
        if not has_sampled_ids:
            raise ValueError("support='sampled_token' requires sampled_ids_N")


def _upcast(x: Tensor) -> Tensor:
    # At least fp32 (bf16 log_softmax loses ~3 digits); fp64 stays fp64 so tests can be tight.
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _kl_from_logprobs(log_a_NK: Tensor, log_b_NK: Tensor) -> Tensor:
    """KL(a‖b) = Σ a (log a − log b) over the last dim; entries with a = 0 contribute exactly 0."""
    a_NK = log_a_NK.exp()
    # where() on log a (not on the product) keeps both value and gradient NaN-free when log a = -inf.
    safe_log_a_NK = torch.where(a_NK > 0, log_a_NK, torch.zeros_like(log_a_NK))
    safe_log_b_NK = torch.where(a_NK > 0, log_b_NK, torch.zeros_like(log_b_NK))
    return (a_NK * (safe_log_a_NK - safe_log_b_NK)).sum(dim=-1)


def _divergence_from_logprobs(
    log_p_NK: Tensor, log_q_NK: Tensor, *, divergence: str, jsd_alpha: float
) -> Tensor:
    """Divergence between two (possibly binned) distributions given as log-probs over the last dim."""
    if divergence == "forward_kl":
        return _kl_from_logprobs(log_q_NK, log_p_NK)
    if divergence == "reverse_kl":
        return _kl_from_logprobs(log_p_NK, log_q_NK.clamp(min=TEACHER_LOGPROB_FLOOR))
    # jsd: mixture in log space so neither p nor q underflowing breaks log M. Where both are exactly 0
    # (e.g. a vocab entry masked to -inf in both models) logsumexp's backward would be NaN; such entries
    # add 0 to both KL terms, so any finite stand-in for log M is fine there.
    both_zero_NK = torch.isneginf(log_p_NK) & torch.isneginf(log_q_NK)
    zeros_NK = torch.zeros_like(log_p_NK)
    log_m_NK = torch.logsumexp(
        torch.stack(
            [
                torch.where(both_zero_NK, zeros_NK, log_p_NK) + math.log(1.0 - jsd_alpha),
                torch.where(both_zero_NK, zeros_NK, log_q_NK) + math.log(jsd_alpha),
            ]
        ),
        dim=0,
    )
    return jsd_alpha * _kl_from_logprobs(log_q_NK, log_m_NK) + (1.0 - jsd_alpha) * _kl_from_logprobs(
        log_p_NK, log_m_NK
    )


def _with_tail_bin(log_probs_NK: Tensor) -> Tensor:
    """Append log(1 − Σ_k prob) so k full-vocab log-probs become a proper (k+1)-bin distribution."""
    s_N1 = torch.logsumexp(log_probs_NK, dim=-1, keepdim=True).clamp(max=TAIL_LOGSUMEXP_MAX)
    return torch.cat([log_probs_NK, torch.log(-torch.expm1(s_N1))], dim=-1)


def token_divergence(
    student_logits_NV: Tensor,
    teacher_logits_NV: Tensor,
    *,
    divergence: str,
    jsd_alpha: float = 0.5,
    support: str = "full",
    top_k: int = 20,
    sampled_ids_N: Tensor | None = None,
) -> Tensor:
    """Per-position divergence between student and (detached) teacher logits, shape [N], ≥ fp32.

    support:
      - "full": over the whole vocabulary.
      - "teacher_topk": over the teacher's top-k ids plus one tail bin; both sides use their
        full-vocab log-probs at those ids (not renormalized over k).
      - "sampled_token": sg[log p(y) − log q(y)] · log p(y); its value is not a divergence, but its
        gradient is the one-sample REINFORCE estimate of ∇ KL(p‖q). Needs reverse_kl + sampled_ids_N.
    """
    validate_divergence_args(
        divergence=divergence,
        jsd_alpha=jsd_alpha,
        support=support,
        top_k=top_k,
        has_sampled_ids=sampled_ids_N is not None,
    )
    log_p_NV = F.log_softmax(_upcast(student_logits_NV), dim=-1)
    log_q_NV = F.log_softmax(_upcast(teacher_logits_NV.detach()), dim=-1)

    if support == "full":
        return _divergence_from_logprobs(log_p_NV, log_q_NV, divergence=divergence, jsd_alpha=jsd_alpha)

    if support == "teacher_topk":
        k = min(top_k, log_q_NV.shape[-1])
        topk_ids_NK = log_q_NV.topk(k, dim=-1).indices
        log_p_NK1 = _with_tail_bin(log_p_NV.gather(-1, topk_ids_NK))
        log_q_NK1 = _with_tail_bin(log_q_NV.gather(-1, topk_ids_NK))
        return _divergence_from_logprobs(log_p_NK1, log_q_NK1, divergence=divergence, jsd_alpha=jsd_alpha)

    # sampled_token (validated above: reverse_kl with ids).
    assert sampled_ids_N is not None
    ids_N1 = sampled_ids_N.to(device=log_p_NV.device, dtype=torch.long).unsqueeze(-1)
    log_p_y_N = log_p_NV.gather(-1, ids_N1).squeeze(-1)
    log_q_y_N = log_q_NV.gather(-1, ids_N1).squeeze(-1).clamp(min=TEACHER_LOGPROB_FLOOR)
    return (log_p_y_N - log_q_y_N).detach() * log_p_y_N


def cross_entropy_tokens(student_logits_NV: Tensor, target_ids_N: Tensor) -> Tensor:
    """Per-token cross-entropy −log p(target), shape [N], ≥ fp32 (SFT baseline)."""
    return F.cross_entropy(_upcast(student_logits_NV), target_ids_N.long(), reduction="none")


def naive_distillation_loss(
    student_logits_NV: Tensor,
    teacher_logits_NV: Tensor,
    token_weights_N: Tensor,
    *,
    divergence: str = "forward_kl",
    jsd_alpha: float = 0.5,
    support: str = "full",
    top_k: int = 20,
    sampled_ids_N: Tensor | None = None,
) -> Tensor:
    """Reference: Σ_n w_n · token_divergence(full logits)_n. Materializes N×V; tests/benchmarks only."""
    loss_N = token_divergence(
        student_logits_NV,
        teacher_logits_NV,
        divergence=divergence,
        jsd_alpha=jsd_alpha,
        support=support,
        top_k=top_k,
        sampled_ids_N=sampled_ids_N,
    )
    return (token_weights_N.to(loss_N.dtype) * loss_N).sum()


# ---------------------------------------------------------------------------------------------------------
# Chunked lm-head + loss
# ---------------------------------------------------------------------------------------------------------


def _chunks_with_weight(token_weights_N: Tensor, chunk_size: int) -> list[bool]:
    """Which chunks have any non-zero weight; one host sync for all chunks instead of one per chunk."""
    n = token_weights_N.shape[0]
    num_chunks = -(-n // chunk_size)
    nonzero_N = token_weights_N.detach() != 0
    padded = F.pad(nonzero_N, (0, num_chunks * chunk_size - n), value=False)
    return [bool(x) for x in padded.view(num_chunks, chunk_size).any(dim=1).tolist()]


def _chunked_loss_and_grads(
    hidden_NH: Tensor,
    head_weight_VH: Tensor,
    token_weights_N: Tensor,
    token_loss: TokenLoss,
    chunk_size: int,
    need_hidden_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss Σ w·token_loss and (optionally) its grads wrt hidden / head weight, chunk by chunk."""
    n = hidden_NH.shape[0]
    # Accumulate in at least fp32 (fp64 inputs stay fp64 so reference comparisons can be tight).
    loss = torch.zeros((), dtype=torch.promote_types(hidden_NH.dtype, torch.float32), device=hidden_NH.device)
    grad_hidden_NH = torch.zeros_like(hidden_NH) if need_hidden_grad else None
    grad_weight_acc_VH = (
        torch.zeros(
            head_weight_VH.shape,
            dtype=torch.promote_types(head_weight_VH.dtype, torch.float32),
            device=head_weight_VH.device,
        )
        if need_weight_grad
        else None
    )
    if n == 0:
        return loss, grad_hidden_NH, grad_weight_acc_VH
    need_any_grad = need_hidden_grad or need_weight_grad

    with torch.enable_grad() if need_any_grad else torch.no_grad():
        # Leaf copy in the hidden's dtype, made once: logits are computed in the hidden's dtype.
        weight_leaf_VH = head_weight_VH.detach().to(hidden_NH.dtype).requires_grad_(need_weight_grad)
        for chunk_idx, has_weight in enumerate(_chunks_with_weight(token_weights_N, chunk_size)):
            if not has_weight:
                continue  # zero loss, zero grads: nothing to add
            positions = slice(chunk_idx * chunk_size, min((chunk_idx + 1) * chunk_size, n))
            hidden_leaf_nH = hidden_NH[positions].detach().requires_grad_(need_hidden_grad)
            logits_nV = hidden_leaf_nH @ weight_leaf_VH.T
            loss_n = token_loss(logits_nV, positions)
            weights_n = token_weights_N[positions].detach().to(loss_n.dtype)
            # Zero-weight positions may hold padding garbage; keep a non-finite value there out of the sum.
            loss_n = torch.where(weights_n != 0, loss_n, torch.zeros_like(loss_n))
            chunk_loss = (weights_n * loss_n).sum()
            if need_any_grad:
                leaves = [
                    t
                    for t, need in ((hidden_leaf_nH, need_hidden_grad), (weight_leaf_VH, need_weight_grad))
                    if need
                ]
                # Backprop now, while this chunk's n×V activations are alive; they are freed on return.
                grads = list(torch.autograd.grad(chunk_loss, leaves))
                if grad_hidden_NH is not None:
                    grad_hidden_NH[positions] = grads.pop(0)
                if grad_weight_acc_VH is not None:
                    grad_weight_acc_VH += grads.pop(0)
            loss = loss + chunk_loss.detach().to(loss.dtype)
    return loss, grad_hidden_NH, grad_weight_acc_VH


class _ChunkedLMHeadLoss(torch.autograd.Function):
    """Gradients are computed in forward (per chunk) and only the [N,H] and [V,H] grads are saved."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_NH: Tensor,
        head_weight_VH: Tensor,
        token_weights_N: Tensor,
        token_loss: TokenLoss,
        chunk_size: int,
    ) -> Tensor:
        need_hidden_grad, need_weight_grad = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        loss, grad_hidden_NH, grad_weight_acc_VH = _chunked_loss_and_grads(
            hidden_NH,
            head_weight_VH,
            token_weights_N,
            token_loss,
            chunk_size,
            need_hidden_grad,
            need_weight_grad,
        )
        grad_weight_VH = None if grad_weight_acc_VH is None else grad_weight_acc_VH.to(head_weight_VH.dtype)
        ctx.save_for_backward(grad_hidden_NH, grad_weight_VH)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        grad_hidden_NH, grad_weight_VH = ctx.saved_tensors
        grad_hidden_out = (
            None if grad_hidden_NH is None else grad_hidden_NH * grad_output.to(grad_hidden_NH.dtype)
        )
        grad_weight_out = (
            None if grad_weight_VH is None else grad_weight_VH * grad_output.to(grad_weight_VH.dtype)
        )
        return grad_hidden_out, grad_weight_out, None, None, None


def chunked_lm_head_loss(
    hidden_NH: Tensor,
    head_weight_VH: Tensor,
    token_weights_N: Tensor,
    *,
    token_loss: TokenLoss,
    chunk_size: int = 256,
) -> Tensor:
    """Σ_n token_weights[n] · token_loss(hidden[n] @ W^T) as a (≥ fp32) scalar, never materializing N×V.

    Why: the naive path (full logits → log_softmax → divergence → backward) holds several N×V tensors,
    gigabytes per sequence at V = 150k. Here each chunk's logits are built from detached leaf copies,
    the chunk's weighted loss is backpropagated immediately with ``torch.autograd.grad`` and only the
    [N,H] hidden grad and an fp32 [V,H] weight-grad accumulator survive the forward; backward just
    scales them by grad_output. Peak extra memory is O(chunk·V + V·H).

    Caller contract:
      - token_loss(logits_nV, positions) gets the chunk's student logits (hidden's dtype, casting to fp32
        is its job, as token_divergence / cross_entropy_tokens do) and the python slice of positions.
        It is called inside this function's forward: autograd only reaches ``hidden_NH`` and
        ``head_weight_VH``; tensors it closes over get no gradient.
      - token_weights_N is treated as a constant (no gradient). Zero-weight positions are excluded from
        the sum even if their loss is non-finite, and all-zero chunks are skipped.
      - A frozen head (requires_grad False, e.g. under LoRA) skips the [V,H] gradient entirely.
      - Double backward is not supported.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if hidden_NH.dim() != 2 or head_weight_VH.dim() != 2 or token_weights_N.dim() != 1:
        raise ValueError("expected hidden [N,H], head weight [V,H] and token weights [N]")
    if hidden_NH.shape[0] != token_weights_N.shape[0] or hidden_NH.shape[1] != head_weight_VH.shape[1]:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden_NH.shape)}, head weight {tuple(head_weight_VH.shape)}, "
            f"token weights {tuple(token_weights_N.shape)}"
        )
    if not torch.is_grad_enabled() or not (hidden_NH.requires_grad or head_weight_VH.requires_grad):
        # Function.apply would still report needs_input_grad under no_grad; skip the per-chunk backward.
        loss, _, _ = _chunked_loss_and_grads(
            hidden_NH, head_weight_VH, token_weights_N, token_loss, chunk_size, False, False
        )
        return loss
    out = _ChunkedLMHeadLoss.apply(hidden_NH, head_weight_VH, token_weights_N, token_loss, chunk_size)
    assert isinstance(out, Tensor)
    return out


def distillation_token_loss(
    teacher_hidden_NH: Tensor,
    teacher_head_weight_VH: Tensor,
    *,
    divergence: str = "forward_kl",
    jsd_alpha: float = 0.5,
    support: str = "full",
    top_k: int = 20,
    sampled_ids_N: Tensor | None = None,
) -> TokenLoss:
    """token_loss for chunked_lm_head_loss: teacher chunk logits (no grad) + token_divergence.

    teacher_hidden_NH must be aligned position-for-position with the student hidden passed to
    chunked_lm_head_loss. Arguments are validated now, so a bad config fails before any forward pass.
    """
    validate_divergence_args(
        divergence=divergence,
        jsd_alpha=jsd_alpha,
        support=support,
        top_k=top_k,
        has_sampled_ids=sampled_ids_N is not None,
    )
    teacher_hidden_NH = teacher_hidden_NH.detach()
    # One cast up front rather than a V×H copy per chunk when the dtypes differ.
    teacher_weight_VH = teacher_head_weight_VH.detach().to(teacher_hidden_NH.dtype)

    def token_loss(student_logits_nV: Tensor, positions: slice) -> Tensor:
        with torch.no_grad():
            teacher_logits_nV = teacher_hidden_NH[positions] @ teacher_weight_VH.T
        return token_divergence(
            student_logits_nV,
            teacher_logits_nV,
            divergence=divergence,
            jsd_alpha=jsd_alpha,
            support=support,
            top_k=top_k,
            sampled_ids_N=None if sampled_ids_N is None else sampled_ids_N[positions],
        )

    return token_loss


def cross_entropy_token_loss(target_ids_N: Tensor) -> TokenLoss:
    """token_loss for chunked_lm_head_loss computing per-token cross-entropy against target_ids_N."""

    def token_loss(student_logits_nV: Tensor, positions: slice) -> Tensor:
        return cross_entropy_tokens(student_logits_nV, target_ids_N[positions])

    return token_loss


@torch.no_grad()
def sampled_token_logprobs(
    hidden_NH: Tensor, head_weight_VH: Tensor, ids_N: Tensor, chunk_size: int = 256
) -> Tensor:
    """log p(ids) under hidden @ W^T, fp32 [N], chunked, no grad (IS weights and diagnostics)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = hidden_NH.shape[0]
    out_N = torch.empty(n, dtype=torch.float32, device=hidden_NH.device)
    weight_VH = head_weight_VH.to(hidden_NH.dtype)
    ids_N = ids_N.to(device=hidden_NH.device, dtype=torch.long)
    for start in range(0, n, chunk_size):
        positions = slice(start, min(start + chunk_size, n))
        logits_nV = (hidden_NH[positions] @ weight_VH.T).float()
        picked_n = logits_nV.gather(-1, ids_N[positions].unsqueeze(-1)).squeeze(-1)
        out_N[positions] = picked_n - torch.logsumexp(logits_nV, dim=-1)
    return out_N


# ---------------------------------------------------------------------------------------------------------
# Weights and masks
# ---------------------------------------------------------------------------------------------------------


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
