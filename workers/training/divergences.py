"""Per-token divergences and cross-entropy: pure tensor functions of logits, no model, no I/O.

Conventions (see docs/reference/sdft-algorithm.md §4):

- p is the student distribution (gets gradients), q the teacher (always detached).
- ``forward_kl`` = KL(q‖p) = Σ_v q (log q − log p): the paper's default; d/dz_student = p − q.
- ``reverse_kl`` = KL(p‖q) = Σ_v p (log p − log q), teacher log-probs floored at −30.
- ``jsd`` = α·KL(q‖M) + (1−α)·KL(p‖M), M = (1−α)p + αq, α ∈ (0, 1). JSD_α/α → forward KL as
  α → 0 and JSD_α/(1−α) → reverse KL as α → 1 (TRL's 0 = forward, 1 = reverse convention).
- Softmaxes are taken in at least fp32 whatever the logits' dtype.
- No sampling temperature is applied here: callers divide both sides' logits by the same τ.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
SUPPORTS = ("full", "teacher_topk", "sampled_token")

# Reverse KL multiplies by log q; a teacher zero (top-k/top-p filtered token, -inf logit) would give inf.
TEACHER_LOGPROB_FLOOR = -30.0
# log(1 - e^s) needs s < 0 strictly; TRL clamps the same way.
TAIL_LOGSUMEXP_MAX = -1e-7


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


class _ForwardKLFromLogits(torch.autograd.Function):
    """KL(q‖p) per row from student and teacher logits, with its gradient p − q formed in the forward.

    The paper's default loss on every chunk of every step: five passes over the n×V chunk, reusing
    buffers, where the same math through autograd takes about fifteen, each a fresh n×V allocation
    (on CPU most of the head's time went there, not into its matmuls). A -inf logit gives a
    non-finite value here, and `token_divergence` then recomputes the whole chunk by the general path.
    """

    @staticmethod
    def forward(ctx: Any, student_logits_NV: Tensor, teacher_logits_NV: Tensor) -> Tensor:
        log_p_NV = F.log_softmax(student_logits_NV, dim=-1)
        log_q_NV = F.log_softmax(teacher_logits_NV, dim=-1)
        q_NV = log_q_NV.exp()
        loss_N = torch.linalg.vecdot(q_NV, log_q_NV.sub_(log_p_NV))  # Σ_v q (log q − log p)
        ctx.save_for_backward(log_p_NV.exp_().sub_(q_NV))  # d/dz_student = p − q
        return loss_N

    @staticmethod
    def backward(ctx: Any, grad_N: Tensor) -> tuple[Tensor, None]:
        (p_minus_q_NV,) = ctx.saved_tensors
        return p_minus_q_NV * grad_N.unsqueeze(-1), None


def token_divergence(
    student_logits_NV: Tensor,
    teacher_logits_NV: Tensor,
    *,
    divergence: str = "forward_kl",
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
    if support == "full" and divergence == "forward_kl":
        loss_N = _ForwardKLFromLogits.apply(_upcast(student_logits_NV), _upcast(teacher_logits_NV.detach()))
        assert isinstance(loss_N, Tensor)
        if bool(torch.isfinite(loss_N).all()):
            return loss_N
        # A -inf logit (a masked vocabulary entry) makes 0·inf there: the general path handles it.
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
    student_logits_NV: Tensor, teacher_logits_NV: Tensor, token_weights_N: Tensor, **divergence: Any
) -> Tensor:
    """Reference: Σ_n w_n · token_divergence(full logits, **divergence)_n. Materializes N×V; tests and
    benchmarks only."""
    loss_N = token_divergence(student_logits_NV, teacher_logits_NV, **divergence)
    return (token_weights_N.to(loss_N.dtype) * loss_N).sum()
