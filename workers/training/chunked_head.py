"""The lm head fused with a per-token loss, chunk by chunk: no N×V logits ever exist, forward or backward.

The naive full-vocab path keeps several N×V tensors alive at once (student logits, their log_softmax
saved for backward, teacher logits and log_softmax, the elementwise divergence, the logits' gradient):
gigabytes per sequence at V ≈ 150k. `chunked_lm_head_loss` computes each chunk's logits, loss and
gradient and keeps only the [N,H] and [V,H] gradients. The per-token math lives in divergences.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workers.models.forward import logits_dtype
from workers.training.divergences import cross_entropy_tokens, token_divergence, validate_divergence_args

# token_loss(student_logits_nV, positions) -> loss_n; positions is the slice of [0, N) in the chunk.
TokenLoss = Callable[[Tensor, slice], Tensor]


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
    compute = logits_dtype(hidden_NH)
    loss = torch.zeros((), dtype=compute, device=hidden_NH.device)
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
        # One leaf in the logits' dtype (no copy for an fp32 master weight); hidden chunks are
        # upcast one at a time, and their gradients come back in the hidden's dtype.
        weight_leaf_VH = head_weight_VH.detach().to(compute).requires_grad_(need_weight_grad)
        for chunk_idx, has_weight in enumerate(_chunks_with_weight(token_weights_N, chunk_size)):
            if not has_weight:
                continue  # zero loss, zero grads: nothing to add
            positions = slice(chunk_idx * chunk_size, min((chunk_idx + 1) * chunk_size, n))
            hidden_leaf_nH = hidden_NH[positions].detach().requires_grad_(need_hidden_grad)
            logits_nV = hidden_leaf_nH.to(compute) @ weight_leaf_VH.T
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
      - token_loss(logits_nV, positions) gets the chunk's student logits (at least fp32, see
        `logits_dtype`) and the python slice of positions.
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
    sampled_ids_N: Tensor | None = None,
    **divergence: Any,
) -> TokenLoss:
    """token_loss for chunked_lm_head_loss: teacher chunk logits (no grad) + token_divergence(**divergence)
    (divergence, jsd_alpha, support, top_k; sampled_ids_N for the sampled-token support).

    teacher_hidden_NH must be aligned position-for-position with the student hidden passed to
    chunked_lm_head_loss. Arguments are validated now, so a bad config fails before any forward pass.
    """
    validate_divergence_args(
        divergence=divergence.get("divergence", "forward_kl"),
        jsd_alpha=divergence.get("jsd_alpha", 0.5),
        support=divergence.get("support", "full"),
        top_k=divergence.get("top_k", 20),
        has_sampled_ids=sampled_ids_N is not None,
    )
    teacher_hidden_NH = teacher_hidden_NH.detach()
    compute = logits_dtype(teacher_hidden_NH)
    # One cast up front rather than a V×H copy per chunk (a bf16 teacher's weights on CUDA).
    teacher_weight_VH = teacher_head_weight_VH.detach().to(compute)

    def token_loss(student_logits_nV: Tensor, positions: slice) -> Tensor:
        with torch.no_grad():
            teacher_logits_nV = teacher_hidden_NH[positions].to(compute) @ teacher_weight_VH.T
        sampled = None if sampled_ids_N is None else sampled_ids_N[positions]
        return token_divergence(student_logits_nV, teacher_logits_nV, sampled_ids_N=sampled, **divergence)

    return token_loss


def cross_entropy_token_loss(target_ids_N: Tensor) -> TokenLoss:
    """token_loss for chunked_lm_head_loss computing per-token cross-entropy against target_ids_N."""

    def token_loss(student_logits_nV: Tensor, positions: slice) -> Tensor:
        return cross_entropy_tokens(student_logits_nV, target_ids_N[positions])

    return token_loss
