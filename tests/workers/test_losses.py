"""The per-token divergences, the chunked lm-head loss and the token weights against brute-force float64
Python references."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from workers.models.forward import sampled_token_logprobs
from workers.training.chunked_head import (
    chunked_lm_head_loss,
    cross_entropy_token_loss,
    distillation_token_loss,
)
from workers.training.divergences import cross_entropy_tokens, naive_distillation_loss, token_divergence
from workers.training.token_weights import (
    completion_loss_mask,
    sequence_mean_token_weights,
    token_mean_token_weights,
    truncated_importance_weights,
)

# ---------------------------------------------------------------------------------------------------------
# Brute-force references: plain Python floats, explicit loops.
# ---------------------------------------------------------------------------------------------------------

Row = list[float]


def _softmax(logits: Row) -> Row:
    m = max(logits)
    exps = [math.exp(z - m) for z in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(a: Row, b: Row) -> float:
    return sum(ai * (math.log(ai) - math.log(bi)) for ai, bi in zip(a, b, strict=True) if ai > 0)


def _bins_divergence(p: Row, q: Row, divergence: str, alpha: float) -> float:
    if divergence == "forward_kl":
        return _kl(q, p)
    if divergence == "reverse_kl":
        return sum(pi * (math.log(pi) - max(math.log(qi), -30.0)) for pi, qi in zip(p, q, strict=True))
    m = [(1 - alpha) * pi + alpha * qi for pi, qi in zip(p, q, strict=True)]
    return alpha * _kl(q, m) + (1 - alpha) * _kl(p, m)


def _ref_row(student: Row, teacher: Row, divergence: str, alpha: float, support: str, k: int) -> float:
    p, q = _softmax(student), _softmax(teacher)
    if support == "full":
        return _bins_divergence(p, q, divergence, alpha)
    assert support == "teacher_topk"
    top = sorted(range(len(q)), key=lambda v: -q[v])[:k]
    p_bins = [p[v] for v in top] + [1.0 - sum(p[v] for v in top)]
    q_bins = [q[v] for v in top] + [1.0 - sum(q[v] for v in top)]
    return _bins_divergence(p_bins, q_bins, divergence, alpha)


def _ref_values_and_grads(
    student: list[Row], teacher: list[Row], divergence: str, alpha: float, support: str, k: int
) -> tuple[Row, list[Row]]:
    """Per-row values and central finite-difference gradients wrt the student logits."""
    values, grads = [], []
    eps = 1e-6
    for s_row, t_row in zip(student, teacher, strict=True):
        values.append(_ref_row(s_row, t_row, divergence, alpha, support, k))
        g_row = []
        for v in range(len(s_row)):
            plus, minus = list(s_row), list(s_row)
            plus[v] += eps
            minus[v] -= eps
            f_plus = _ref_row(plus, t_row, divergence, alpha, support, k)
            f_minus = _ref_row(minus, t_row, divergence, alpha, support, k)
            g_row.append((f_plus - f_minus) / (2 * eps))
        grads.append(g_row)
    return values, grads


# Hand-made 2×5 logits with distinct teacher values (no top-k ties).
STUDENT = [[1.0, -0.5, 0.3, 2.0, -1.2], [0.1, 0.2, -2.0, 0.7, 1.5]]
TEACHER = [[0.4, 1.1, -0.8, 1.9, -0.3], [-1.0, 0.9, 0.0, 2.2, -0.6]]


def _logits() -> tuple[Tensor, Tensor]:
    student = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    return student, teacher


def _per_row_grads(loss_N: Tensor, student: Tensor) -> Tensor:
    # Rows are independent, so grad of the sum gives each row's own gradient.
    (grad,) = torch.autograd.grad(loss_N.sum(), student)
    return grad


CASES = [
    (div, alpha, support, k)
    for div, alpha in [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1)]
    for support, k in [("full", 20), ("teacher_topk", 2), ("teacher_topk", 4)]
]


@pytest.mark.parametrize(("divergence", "alpha", "support", "k"), CASES)
def test_token_divergence_matches_brute_force(divergence: str, alpha: float, support: str, k: int) -> None:
    student, teacher = _logits()
    loss_N = token_divergence(
        student, teacher, divergence=divergence, jsd_alpha=alpha, support=support, top_k=k
    )
    ref_values, ref_grads = _ref_values_and_grads(STUDENT, TEACHER, divergence, alpha, support, k)
    assert loss_N.shape == (2,)
    torch.testing.assert_close(loss_N, torch.tensor(ref_values, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    grad = _per_row_grads(loss_N, student)
    torch.testing.assert_close(grad, torch.tensor(ref_grads, dtype=torch.float64), rtol=1e-6, atol=1e-8)


def test_token_divergence_fp32_internal_for_low_precision_inputs() -> None:
    student, teacher = _logits()
    loss_N = token_divergence(student.detach().bfloat16(), teacher.bfloat16(), divergence="forward_kl")
    assert loss_N.dtype == torch.float32
    ref = token_divergence(
        student.detach().bfloat16().double(), teacher.bfloat16().double(), divergence="forward_kl"
    )
    torch.testing.assert_close(loss_N.double(), ref, rtol=1e-5, atol=1e-6)


def test_sign_convention_by_hand() -> None:
    # teacher probs [0.5, 0.5], student probs [0.9, 0.1]
    student = torch.tensor([[math.log(0.9), math.log(0.1)]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    forward = token_divergence(student, teacher, divergence="forward_kl")
    reverse = token_divergence(student, teacher, divergence="reverse_kl")
    expected_forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    expected_reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert forward.item() == pytest.approx(expected_forward, rel=1e-12)
    assert forward.item() == pytest.approx(0.5108, abs=1e-4)
    assert reverse.item() == pytest.approx(expected_reverse, rel=1e-12)
    assert reverse.item() == pytest.approx(0.3681, abs=1e-4)
    (grad,) = torch.autograd.grad(forward.sum(), student)
    torch.testing.assert_close(grad, torch.tensor([[0.9 - 0.5, 0.1 - 0.5]], dtype=torch.float64))


def test_forward_kl_gradient_is_p_minus_q() -> None:
    student, teacher = _logits()
    (grad,) = torch.autograd.grad(token_divergence(student, teacher, divergence="forward_kl").sum(), student)
    torch.testing.assert_close(grad, student.detach().softmax(-1) - teacher.softmax(-1))


def test_teacher_gets_no_gradient() -> None:
    student, teacher = _logits()
    teacher.requires_grad_(True)
    loss = token_divergence(student, teacher, divergence="jsd").sum()
    grads = torch.autograd.grad(loss, [student, teacher], allow_unused=True)
    assert grads[0] is not None
    assert grads[1] is None


def test_jsd_endpoints_recover_kl_directions() -> None:
    student, teacher = _logits()
    forward = token_divergence(student, teacher, divergence="forward_kl")
    reverse = token_divergence(student, teacher, divergence="reverse_kl")
    small = 1e-5
    jsd_small = token_divergence(student, teacher, divergence="jsd", jsd_alpha=small)
    jsd_large = token_divergence(student, teacher, divergence="jsd", jsd_alpha=1 - small)
    # JSD_α/α → KL(q‖p) as α → 0 and JSD_α/(1−α) → KL(p‖q) as α → 1.
    torch.testing.assert_close(jsd_small / small, forward, rtol=1e-3, atol=0)
    torch.testing.assert_close(jsd_large / small, reverse, rtol=1e-3, atol=0)
    assert not torch.allclose(forward, reverse, rtol=1e-2)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_jsd_alpha_outside_open_interval_raises(alpha: float) -> None:
    student, teacher = _logits()
    with pytest.raises(ValueError, match="jsd_alpha"):
        token_divergence(student, teacher, divergence="jsd", jsd_alpha=alpha)


def test_invalid_names_raise() -> None:
    student, teacher = _logits()
    with pytest.raises(ValueError, match="divergence"):
        token_divergence(student, teacher, divergence="kl")
    with pytest.raises(ValueError, match="support"):
        token_divergence(student, teacher, divergence="forward_kl", support="student_topk")


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_teacher_topk_with_k_equal_vocab_matches_full(divergence: str) -> None:
    student, teacher = _logits()
    full = token_divergence(student, teacher, divergence=divergence)
    topk = token_divergence(student, teacher, divergence=divergence, support="teacher_topk", top_k=5)
    # The tail bin holds ~1e-7 mass (clamped logsumexp), so agreement is close but not exact.
    torch.testing.assert_close(topk, full, rtol=0, atol=1e-5)
    g_full = _per_row_grads(full, student)
    g_topk = _per_row_grads(topk, student)
    torch.testing.assert_close(g_topk, g_full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_teacher_topk_with_small_k_differs_but_is_finite(divergence: str) -> None:
    student, teacher = _logits()
    full = token_divergence(student, teacher, divergence=divergence)
    topk = token_divergence(student, teacher, divergence=divergence, support="teacher_topk", top_k=2)
    assert torch.isfinite(topk).all()
    assert (topk - full).abs().max() > 1e-3
    # Binning can only lose information (data processing inequality).
    assert (topk <= full + 1e-12).all()
    assert torch.isfinite(_per_row_grads(topk, student)).all()


def test_teacher_topk_with_peaked_teacher_is_finite_fp32() -> None:
    # Teacher puts ~all mass on its top-k: the tail logsumexp clamp must prevent log(0).
    student = torch.randn(3, 50, requires_grad=True)
    teacher = torch.full((3, 50), -100.0)
    teacher[:, :3] = 10.0
    loss = token_divergence(student, teacher, divergence="reverse_kl", support="teacher_topk", top_k=3)
    assert torch.isfinite(loss).all()
    assert torch.isfinite(_per_row_grads(loss, student)).all()


def test_sampled_token_matches_hand_formula_and_is_unbiased_for_reverse_kl() -> None:
    student, teacher = _logits()
    ids = torch.tensor([3, 1])
    loss = token_divergence(
        student, teacher, divergence="reverse_kl", support="sampled_token", sampled_ids_N=ids
    )
    for n in range(2):
        p, q = _softmax(STUDENT[n]), _softmax(TEACHER[n])
        y = int(ids[n])
        coef = math.log(p[y]) - math.log(q[y])
        assert loss[n].item() == pytest.approx(coef * math.log(p[y]), rel=1e-12)
    grad = _per_row_grads(loss, student)
    for n in range(2):
        p, q = _softmax(STUDENT[n]), _softmax(TEACHER[n])
        y = int(ids[n])
        coef = math.log(p[y]) - math.log(q[y])
        expected = [coef * ((1.0 if v == y else 0.0) - p[v]) for v in range(5)]
        torch.testing.assert_close(
            grad[n], torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12
        )

    # E_{y~p}[sampled-token gradient] equals the analytic reverse-KL gradient.
    p_NV = student.detach().softmax(-1)
    expected_grad = torch.zeros_like(p_NV)
    for y in range(5):
        ids_y = torch.full((2,), y)
        loss_y = token_divergence(
            student, teacher, divergence="reverse_kl", support="sampled_token", sampled_ids_N=ids_y
        )
        expected_grad += p_NV[:, y : y + 1] * _per_row_grads(loss_y, student)
    reverse_full = token_divergence(student, teacher, divergence="reverse_kl")
    torch.testing.assert_close(expected_grad, _per_row_grads(reverse_full, student), rtol=1e-10, atol=1e-12)


def test_sampled_token_requires_reverse_kl_and_ids() -> None:
    student, teacher = _logits()
    with pytest.raises(ValueError, match="reverse_kl"):
        token_divergence(
            student,
            teacher,
            divergence="forward_kl",
            support="sampled_token",
            sampled_ids_N=torch.tensor([0, 1]),
        )
    with pytest.raises(ValueError, match="sampled_ids_N"):
        token_divergence(student, teacher, divergence="reverse_kl", support="sampled_token")


def test_reverse_kl_floors_minus_inf_teacher() -> None:
    student, teacher = _logits()
    teacher = teacher.clone()
    teacher[0, 2] = float("-inf")
    for support in ["full", "teacher_topk"]:
        loss = token_divergence(student, teacher, divergence="reverse_kl", support=support, top_k=4)
        assert torch.isfinite(loss).all()
        assert torch.isfinite(_per_row_grads(loss, student)).all()
    ids = torch.tensor([2, 0])
    loss = token_divergence(
        student, teacher, divergence="reverse_kl", support="sampled_token", sampled_ids_N=ids
    )
    assert torch.isfinite(loss).all()
    assert torch.isfinite(_per_row_grads(loss, student)).all()


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("support", ["full", "teacher_topk"])
def test_vocab_entry_impossible_for_both_models_is_ignored(divergence: str, support: str) -> None:
    # e.g. padded vocab rows masked to -inf in both models: 0·log 0 terms must be 0, not NaN.
    student, teacher = _logits()
    student_inf = student.detach().clone()
    student_inf[:, 4] = float("-inf")
    student_inf.requires_grad_(True)
    teacher_inf = teacher.clone()
    teacher_inf[:, 4] = float("-inf")
    loss = token_divergence(student_inf, teacher_inf, divergence=divergence, support=support, top_k=4)
    grad = _per_row_grads(loss, student_inf)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # Same as the 4-token problem without that entry.
    small = token_divergence(student[:, :4], teacher[:, :4], divergence=divergence, support=support, top_k=4)
    torch.testing.assert_close(loss, small, rtol=0, atol=1e-5 if support == "teacher_topk" else 1e-12)
    torch.testing.assert_close(grad[:, :4], _per_row_grads(small, student)[:, :4], rtol=0, atol=1e-5)
    assert (grad[:, 4] == 0).all()


def test_cross_entropy_tokens() -> None:
    student, _ = _logits()
    targets = torch.tensor([3, 0])
    ce = cross_entropy_tokens(student.bfloat16(), targets)
    assert ce.dtype == torch.float32
    ce64 = cross_entropy_tokens(student, targets)
    for n in range(2):
        assert ce64[n].item() == pytest.approx(-math.log(_softmax(STUDENT[n])[int(targets[n])]), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Chunked lm-head loss
# ---------------------------------------------------------------------------------------------------------

N, H, V = 13, 6, 11


def _problem(dtype: torch.dtype, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(N, generator=gen, dtype=dtype)
    weights[[2, 7]] = 0.0  # masked positions
    return {
        "hidden": torch.randn(N, H, generator=gen, dtype=dtype),
        "weight": torch.randn(V, H, generator=gen, dtype=dtype),
        "teacher_hidden": torch.randn(N, H, generator=gen, dtype=dtype),
        "teacher_weight": torch.randn(V, H, generator=gen, dtype=dtype),
        "token_weights": weights,
        "ids": torch.randint(0, V, (N,), generator=gen),
    }


DIV_KWARGS: list[dict[str, Any]] = [
    {"divergence": "forward_kl"},
    {"divergence": "reverse_kl"},
    {"divergence": "jsd", "jsd_alpha": 0.3},
    {"divergence": "forward_kl", "support": "teacher_topk", "top_k": 4},
    {"divergence": "reverse_kl", "support": "sampled_token"},
]


def _div_kwargs(kwargs: dict[str, Any], ids: Tensor) -> dict[str, Any]:
    if kwargs.get("support") == "sampled_token":
        return {**kwargs, "sampled_ids_N": ids}
    return kwargs


def _chunked_and_naive(
    prob: dict[str, Tensor],
    kwargs: dict[str, Any],
    chunk_size: int,
    weight_grad: bool,
    hidden_grad: bool = True,
) -> tuple[tuple[Tensor, list[Tensor | None]], tuple[Tensor, list[Tensor | None]]]:
    results = []
    for chunked in (True, False):
        hidden = prob["hidden"].clone().requires_grad_(hidden_grad)
        weight = prob["weight"].clone().requires_grad_(weight_grad)
        kw = _div_kwargs(kwargs, prob["ids"])
        if chunked:
            token_loss = distillation_token_loss(prob["teacher_hidden"], prob["teacher_weight"], **kw)
            loss = chunked_lm_head_loss(
                hidden, weight, prob["token_weights"], token_loss=token_loss, chunk_size=chunk_size
            )
        else:
            teacher_logits = prob["teacher_hidden"] @ prob["teacher_weight"].T
            loss = naive_distillation_loss(hidden @ weight.T, teacher_logits, prob["token_weights"], **kw)
        inputs = [t for t in (hidden, weight) if t.requires_grad]
        grads = list(torch.autograd.grad(loss, inputs))
        out: list[Tensor | None] = [
            grads.pop(0) if hidden_grad else None,
            grads.pop(0) if weight_grad else None,
        ]
        results.append((loss.detach(), out))
    return results[0], results[1]


@pytest.mark.parametrize("kwargs", DIV_KWARGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_chunked_matches_naive_fp64(kwargs: dict[str, Any], chunk_size: int, weight_grad: bool) -> None:
    prob = _problem(torch.float64)
    (loss_c, grads_c), (loss_n, grads_n) = _chunked_and_naive(prob, kwargs, chunk_size, weight_grad)
    torch.testing.assert_close(loss_c, loss_n, rtol=1e-12, atol=1e-12)
    assert grads_c[0] is not None and grads_n[0] is not None
    torch.testing.assert_close(grads_c[0], grads_n[0], rtol=1e-11, atol=1e-12)
    if weight_grad:
        assert grads_c[1] is not None and grads_n[1] is not None
        torch.testing.assert_close(grads_c[1], grads_n[1], rtol=1e-11, atol=1e-12)
        assert grads_c[1].abs().max() > 0


@pytest.mark.parametrize("kwargs", DIV_KWARGS[:3], ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_chunked_matches_naive_fp32(kwargs: dict[str, Any]) -> None:
    prob = _problem(torch.float32, seed=1)
    (loss_c, grads_c), (loss_n, grads_n) = _chunked_and_naive(prob, kwargs, chunk_size=4, weight_grad=True)
    torch.testing.assert_close(loss_c, loss_n, rtol=1e-5, atol=1e-6)
    for g_c, g_n in zip(grads_c, grads_n, strict=True):
        assert g_c is not None and g_n is not None
        torch.testing.assert_close(g_c, g_n, rtol=1e-5, atol=1e-6)


def test_chunked_weight_grad_only_when_hidden_is_constant() -> None:
    prob = _problem(torch.float64, seed=2)
    (loss_c, grads_c), (loss_n, grads_n) = _chunked_and_naive(
        prob, {"divergence": "forward_kl"}, chunk_size=3, weight_grad=True, hidden_grad=False
    )
    torch.testing.assert_close(loss_c, loss_n, rtol=1e-12, atol=1e-12)
    assert grads_c[1] is not None and grads_n[1] is not None
    torch.testing.assert_close(grads_c[1], grads_n[1], rtol=1e-11, atol=1e-12)


def test_chunked_without_any_grad_returns_value() -> None:
    prob = _problem(torch.float64, seed=3)
    token_loss = distillation_token_loss(
        prob["teacher_hidden"], prob["teacher_weight"], divergence="forward_kl"
    )
    loss = chunked_lm_head_loss(prob["hidden"], prob["weight"], prob["token_weights"], token_loss=token_loss)
    teacher_logits = prob["teacher_hidden"] @ prob["teacher_weight"].T
    naive = naive_distillation_loss(
        prob["hidden"] @ prob["weight"].T, teacher_logits, prob["token_weights"], divergence="forward_kl"
    )
    assert not loss.requires_grad
    torch.testing.assert_close(loss, naive, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        hidden = prob["hidden"].clone().requires_grad_(True)
        loss_ng = chunked_lm_head_loss(hidden, prob["weight"], prob["token_weights"], token_loss=token_loss)
    assert not loss_ng.requires_grad
    torch.testing.assert_close(loss_ng, naive, rtol=1e-12, atol=1e-12)


def test_chunked_tied_weights_accumulate() -> None:
    # hidden depends on the same matrix used as lm head (tied embeddings): both paths must add up.
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(V, H, generator=gen, dtype=torch.float64)
    proj = torch.randn(H, H, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, V, (N,), generator=gen)
    targets = torch.randint(0, V, (N,), generator=gen)
    token_weights = torch.rand(N, generator=gen, dtype=torch.float64)

    def run(chunked: bool) -> tuple[Tensor, Tensor, Tensor]:
        weight = emb.clone().requires_grad_(True)
        projection = proj.clone().requires_grad_(True)
        hidden = torch.tanh(weight[ids] @ projection)
        if chunked:
            loss = chunked_lm_head_loss(
                hidden, weight, token_weights, token_loss=cross_entropy_token_loss(targets), chunk_size=4
            )
        else:
            loss = (token_weights * cross_entropy_tokens(hidden @ weight.T, targets)).sum()
        loss = loss + 0.1 * weight.square().sum()  # a third use of the weight
        g_w, g_p = torch.autograd.grad(loss, [weight, projection])
        return loss.detach(), g_w, g_p

    for a, b in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


def test_chunked_backward_scales_by_grad_output() -> None:
    prob = _problem(torch.float64, seed=5)
    hidden = prob["hidden"].clone().requires_grad_(True)
    token_loss = cross_entropy_token_loss(prob["ids"])
    loss = chunked_lm_head_loss(hidden, prob["weight"], prob["token_weights"], token_loss=token_loss)
    (g1,) = torch.autograd.grad(loss, hidden)
    loss = chunked_lm_head_loss(hidden, prob["weight"], prob["token_weights"], token_loss=token_loss)
    (g3,) = torch.autograd.grad(-3.0 * loss, hidden)
    torch.testing.assert_close(g3, -3.0 * g1)
    weight = prob["weight"].clone().requires_grad_(True)
    loss = chunked_lm_head_loss(hidden, weight, prob["token_weights"], token_loss=token_loss)
    g1_h, g1_w = torch.autograd.grad(loss, [hidden, weight])
    loss = chunked_lm_head_loss(hidden, weight, prob["token_weights"], token_loss=token_loss)
    g3_h, g3_w = torch.autograd.grad(-3.0 * loss, [hidden, weight])
    torch.testing.assert_close(g3_h, -3.0 * g1_h)
    torch.testing.assert_close(g3_w, -3.0 * g1_w)


def test_chunked_low_precision_weight_dtype_preserved() -> None:
    prob = _problem(torch.float32, seed=6)
    hidden = prob["hidden"].bfloat16().requires_grad_(True)
    weight = prob["weight"].bfloat16().requires_grad_(True)
    token_loss = distillation_token_loss(prob["teacher_hidden"].bfloat16(), prob["teacher_weight"].bfloat16())
    loss = chunked_lm_head_loss(hidden, weight, prob["token_weights"], token_loss=token_loss, chunk_size=4)
    assert loss.dtype == torch.float32
    g_h, g_w = torch.autograd.grad(loss, [hidden, weight])
    assert g_h.dtype == torch.bfloat16 and g_w.dtype == torch.bfloat16
    assert torch.isfinite(g_h).all() and torch.isfinite(g_w).all()


@pytest.mark.parametrize("kwargs", DIV_KWARGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_masked_positions_contribute_nothing(kwargs: dict[str, Any]) -> None:
    prob = _problem(torch.float64, seed=7)
    masked = (prob["token_weights"] == 0).nonzero().flatten()
    assert masked.numel() == 2

    def run(p: dict[str, Tensor], chunked: bool) -> tuple[Tensor, Tensor, Tensor]:
        hidden = p["hidden"].clone().requires_grad_(True)
        weight = p["weight"].clone().requires_grad_(True)
        kw = _div_kwargs(kwargs, p["ids"])
        if chunked:
            loss = chunked_lm_head_loss(
                hidden,
                weight,
                p["token_weights"],
                token_loss=distillation_token_loss(p["teacher_hidden"], p["teacher_weight"], **kw),
                chunk_size=3,
            )
        else:
            loss = naive_distillation_loss(
                hidden @ weight.T, p["teacher_hidden"] @ p["teacher_weight"].T, p["token_weights"], **kw
            )
        g_h, g_w = torch.autograd.grad(loss, [hidden, weight])
        return loss.detach(), g_h, g_w

    changed = {k: v.clone() for k, v in prob.items()}
    changed["hidden"][masked] = 50.0 * torch.randn(2, H, dtype=torch.float64)
    changed["teacher_hidden"][masked] = -50.0 * torch.randn(2, H, dtype=torch.float64)
    changed["ids"][masked] = (changed["ids"][masked] + 1) % V
    for chunked in (True, False):
        base, other = run(prob, chunked), run(changed, chunked)
        torch.testing.assert_close(base[0], other[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(base[2], other[2], rtol=1e-11, atol=1e-12)
        keep = prob["token_weights"] != 0
        torch.testing.assert_close(base[1][keep], other[1][keep], rtol=1e-11, atol=1e-12)
        assert (other[1][masked] == 0).all()


@pytest.mark.parametrize("kwargs", DIV_KWARGS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_minus_inf_teacher_logprob_at_masked_position_gives_no_nan(kwargs: dict[str, Any]) -> None:
    prob = _problem(torch.float64, seed=8)
    masked = int((prob["token_weights"] == 0).nonzero()[0])
    student = (prob["hidden"] @ prob["weight"].T).requires_grad_(True)
    teacher = prob["teacher_hidden"] @ prob["teacher_weight"].T
    teacher[masked, prob["ids"][masked]] = float("-inf")  # the sampled token, for sampled_token
    teacher[masked, 0] = float("-inf")
    kw = _div_kwargs(kwargs, prob["ids"])
    loss = naive_distillation_loss(student, teacher, prob["token_weights"], **kw)
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert (grad[masked] == 0).all()

    # Same through the chunked path, with the teacher logits handed in via the token_loss closure.
    hidden = prob["hidden"].clone().requires_grad_(True)
    weight = prob["weight"].clone().requires_grad_(True)

    def token_loss(logits_nV: Tensor, positions: slice) -> Tensor:
        return token_divergence(
            logits_nV,
            teacher[positions],
            **{**kw, "sampled_ids_N": kw["sampled_ids_N"][positions]} if "sampled_ids_N" in kw else kw,
        )

    loss_c = chunked_lm_head_loss(hidden, weight, prob["token_weights"], token_loss=token_loss, chunk_size=4)
    g_h, g_w = torch.autograd.grad(loss_c, [hidden, weight])
    assert torch.isfinite(loss_c) and torch.isfinite(g_h).all() and torch.isfinite(g_w).all()


def test_chunked_rejects_bad_shapes_and_chunk_size() -> None:
    prob = _problem(torch.float64)
    token_loss = cross_entropy_token_loss(prob["ids"])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_lm_head_loss(
            prob["hidden"], prob["weight"], prob["token_weights"], token_loss=token_loss, chunk_size=0
        )
    with pytest.raises(ValueError, match="shape mismatch"):
        chunked_lm_head_loss(
            prob["hidden"], prob["weight"], prob["token_weights"][:-1], token_loss=token_loss
        )


def test_distillation_token_loss_validates_eagerly() -> None:
    prob = _problem(torch.float64)
    with pytest.raises(ValueError, match="reverse_kl"):
        distillation_token_loss(
            prob["teacher_hidden"], prob["teacher_weight"], divergence="jsd", support="sampled_token"
        )


class _MaxNumel(TorchDispatchMode):
    """Records the largest newly allocated tensor produced by any op while active (views are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        input_storages = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in input_storages:
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_chunked_never_materializes_full_logits() -> None:
    n, v, h, chunk = 512, 32000, 64, 64
    gen = torch.Generator().manual_seed(9)
    hidden = (0.1 * torch.randn(n, h, generator=gen)).requires_grad_(True)
    weight = (0.1 * torch.randn(v, h, generator=gen)).requires_grad_(True)
    teacher_hidden = 0.1 * torch.randn(n, h, generator=gen)
    teacher_weight = 0.1 * torch.randn(v, h, generator=gen)
    token_weights = torch.full((n,), 1.0 / n)

    def chunked() -> Tensor:
        token_loss = distillation_token_loss(teacher_hidden, teacher_weight, divergence="forward_kl")
        return chunked_lm_head_loss(hidden, weight, token_weights, token_loss=token_loss, chunk_size=chunk)

    def naive() -> Tensor:
        return naive_distillation_loss(hidden @ weight.T, teacher_hidden @ teacher_weight.T, token_weights)

    peaks = {}
    losses = {}
    for name, fn in (("chunked", chunked), ("naive", naive)):
        recorder = _MaxNumel()
        with recorder:
            loss = fn()
            grads = torch.autograd.grad(loss, [hidden, weight])
        peaks[name] = recorder.max_numel
        losses[name] = (loss.detach(), grads)
    assert peaks["chunked"] < n * v / 4
    assert peaks["naive"] >= n * v
    torch.testing.assert_close(losses["chunked"][0], losses["naive"][0], rtol=1e-5, atol=1e-6)
    for g_c, g_n in zip(losses["chunked"][1], losses["naive"][1], strict=True):
        torch.testing.assert_close(g_c, g_n, rtol=1e-4, atol=1e-7)


def test_chunked_frozen_head_allocates_no_weight_sized_tensor() -> None:
    # Under LoRA the lm head is frozen: no [V,H] gradient (or copy) should be built at all.
    n, v, h, chunk = 256, 8000, 64, 16
    gen = torch.Generator().manual_seed(12)
    hidden = (0.1 * torch.randn(n, h, generator=gen)).requires_grad_(True)
    weight = 0.1 * torch.randn(v, h, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    recorder = _MaxNumel()
    with recorder:
        loss = chunked_lm_head_loss(
            hidden, weight, torch.ones(n), token_loss=cross_entropy_token_loss(targets), chunk_size=chunk
        )
        (grad,) = torch.autograd.grad(loss, hidden)
    assert chunk * v <= recorder.max_numel < v * h
    naive = cross_entropy_tokens(hidden @ weight.T, targets).sum()
    torch.testing.assert_close(grad, torch.autograd.grad(naive, hidden)[0], rtol=1e-5, atol=1e-7)


def test_chunked_excludes_non_finite_loss_at_zero_weight_positions() -> None:
    prob = _problem(torch.float64, seed=13)
    zero_weight = prob["token_weights"] == 0
    inner = cross_entropy_token_loss(prob["ids"])

    def token_loss(logits_nV: Tensor, positions: slice) -> Tensor:
        # e.g. a side input that is garbage (inf) at padding positions
        loss_n = inner(logits_nV, positions)
        return torch.where(zero_weight[positions], torch.full_like(loss_n, float("inf")), loss_n)

    hidden = prob["hidden"].clone().requires_grad_(True)
    loss = chunked_lm_head_loss(
        hidden, prob["weight"], prob["token_weights"], token_loss=token_loss, chunk_size=4
    )
    (grad,) = torch.autograd.grad(loss, hidden)
    naive = (
        prob["token_weights"] * cross_entropy_tokens(prob["hidden"] @ prob["weight"].T, prob["ids"])
    ).sum()
    torch.testing.assert_close(loss.detach(), naive, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(grad).all()


def test_chunked_skips_all_zero_chunks() -> None:
    prob = _problem(torch.float64, seed=10)
    token_weights = prob["token_weights"].clone()
    token_weights[:8] = 0.0
    seen: list[slice] = []
    inner: Callable[[Tensor, slice], Tensor] = cross_entropy_token_loss(prob["ids"])

    def token_loss(logits_nV: Tensor, positions: slice) -> Tensor:
        seen.append(positions)
        return inner(logits_nV, positions)

    hidden = prob["hidden"].clone().requires_grad_(True)
    loss = chunked_lm_head_loss(hidden, prob["weight"], token_weights, token_loss=token_loss, chunk_size=4)
    assert [(s.start, s.stop) for s in seen] == [(8, 12), (12, 13)]
    naive = (token_weights * cross_entropy_tokens(prob["hidden"] @ prob["weight"].T, prob["ids"])).sum()
    torch.testing.assert_close(loss.detach(), naive, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(loss, hidden)
    assert (g[:8] == 0).all() and (g[8:] != 0).any()


def test_sampled_token_logprobs() -> None:
    prob = _problem(torch.float64, seed=11)
    hidden = prob["hidden"].clone().requires_grad_(True)
    out = sampled_token_logprobs(hidden, prob["weight"], prob["ids"], chunk_size=5)
    assert out.dtype == torch.float32 and out.shape == (N,)
    assert not out.requires_grad
    expected = (
        (prob["hidden"] @ prob["weight"].T).log_softmax(-1).gather(-1, prob["ids"][:, None]).squeeze(-1)
    )
    torch.testing.assert_close(out, expected.float(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Weights and masks
# ---------------------------------------------------------------------------------------------------------


def test_truncated_importance_weights() -> None:
    trainer = torch.tensor(
        [[0.0, -1.0, -2.0, 0.0], [-1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True
    )
    sampler = torch.tensor(
        [[0.0, -1.5, -0.5, float("-inf")], [-2.0, -1.0, float("nan"), 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    w = truncated_importance_weights(trainer, sampler, mask, cap=2.0)
    assert not w.requires_grad
    # row 0: ratios exp(0)=1, exp(0.5), exp(-1.5); row 1: exp(1) capped at 2, exp(0)=1; row 2: empty → 1.
    expected = torch.tensor([(1.0 + math.exp(0.5) + math.exp(-1.5)) / 3, (2.0 + 1.0) / 2, 1.0])
    torch.testing.assert_close(w, expected)
    # Extreme log-ratios are clamped before exp (no inf), then capped.
    huge = truncated_importance_weights(
        torch.tensor([[1e4, -1e4]]), torch.zeros(1, 2), torch.ones(1, 2), cap=3.0
    )
    torch.testing.assert_close(huge, torch.tensor([(3.0 + math.exp(-20.0)) / 2]))


def test_sequence_mean_token_weights_hand_computed() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    loss = torch.tensor([[1.0, 3.0, 100.0, 100.0], [2.0, 4.0, 6.0, 8.0], [5.0, 5.0, 5.0, 5.0]])
    seq_w = torch.tensor([1.0, 0.5, 2.0])
    w = sequence_mean_token_weights(mask, seq_w, num_sequences_total=3)
    # per-sequence means 2 and 5, sequence weights 1 and 0.5, empty third sequence contributes 0.
    assert (w * loss).sum().item() == pytest.approx((1.0 * 2.0 + 0.5 * 5.0 + 0.0) / 3)
    assert torch.isfinite(w).all() and (w[2] == 0).all()
    unweighted = sequence_mean_token_weights(mask[:2], None, num_sequences_total=2)
    assert (unweighted * loss[:2]).sum().item() == pytest.approx((2.0 + 5.0) / 2)


def test_sequence_mean_token_weights_micro_batches_sum_to_step_mean() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    loss = torch.tensor([[1.0, 3.0, 9.0, 9.0], [2.0, 4.0, 6.0, 8.0]])
    seq_w = torch.tensor([0.8, 1.3])
    whole = (sequence_mean_token_weights(mask, seq_w, num_sequences_total=2) * loss).sum()
    split = sum(
        (
            sequence_mean_token_weights(mask[i : i + 1], seq_w[i : i + 1], num_sequences_total=2)
            * loss[i : i + 1]
        ).sum()
        for i in range(2)
    )
    assert whole.item() == pytest.approx((0.8 * 2.0 + 1.3 * 5.0) / 2)
    assert float(split) == pytest.approx(whole.item())


def test_token_mean_token_weights_weigh_every_counted_token_alike() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    loss = torch.tensor([[1.0, 3.0, 100.0, 100.0], [2.0, 4.0, 6.0, 8.0], [5.0, 5.0, 5.0, 5.0]])
    seq_w = torch.tensor([1.0, 0.5, 2.0])
    # Brute force: the weighted sum over counted tokens, divided by how many tokens count in the step.
    counted = [(b, t) for b in range(3) for t in range(4) if mask[b, t]]
    expected = sum(float(seq_w[b]) * float(loss[b, t]) for b, t in counted) / len(counted)
    w = token_mean_token_weights(mask, seq_w, num_tokens_total=len(counted))
    assert (w * loss).sum().item() == pytest.approx(expected)
    # Split across micro-batches, the sums add up to the step's mean.
    split = sum(
        (token_mean_token_weights(mask[i : i + 1], seq_w[i : i + 1], 6) * loss[i : i + 1]).sum()
        for i in range(3)
    )
    assert float(split) == pytest.approx(expected)
    # Unlike the per-sequence mean, the long sequence's tokens are not diluted: each weighs 1/6.
    assert w[1].tolist() == pytest.approx([0.5 / 6] * 4)
    with pytest.raises(ValueError):
        token_mean_token_weights(mask, None, 0)


def test_completion_loss_mask() -> None:
    ids = torch.zeros(3, 6, dtype=torch.long)
    lengths = torch.tensor([6, 4, 2])
    mask = completion_loss_mask(ids, lengths, skip_first=3)
    expected = torch.tensor(
        [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]],
        dtype=torch.float32,
    )
    assert mask.dtype == torch.float32
    torch.testing.assert_close(mask, expected)
    torch.testing.assert_close(
        completion_loss_mask(ids, lengths, skip_first=0)[1], torch.tensor([1.0, 1, 1, 1, 0, 0])
    )
