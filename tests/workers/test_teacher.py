"""Teacher weights: the EMA rule, its fp32 shadow, LoRA's merged-weight EMA, the adapter-off teacher."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from workers.models.forward import hidden_states, pack
from workers.models.tiny import build_tiny_model
from workers.training.teacher import (
    AdapterOffTeacher,
    LiveTeacher,
    ModelTeacher,
    build_teacher,
)


def _model() -> torch.nn.Module:
    return build_tiny_model(64, hidden_size=16, layers=1, heads=2, seed=0)


def test_one_update_is_099_old_plus_001_student() -> None:
    student = _model()
    teacher = build_teacher("ema", student, copy.deepcopy(student), 0.01, torch.float32)
    assert isinstance(teacher, ModelTeacher)
    old = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update()
    for name, p in student.named_parameters():
        expected = 0.99 * old[name] + 0.01 * p.detach()
        torch.testing.assert_close(dict(teacher.model.named_parameters())[name], expected, rtol=0, atol=1e-6)


def test_fp32_shadow_moves_as_far_as_the_math_says_where_bf16_does_not() -> None:
    """200 steps of rate 0.01 while the student drifts 1e-5 per step, on weights of scale 0.02
    (the reference doc's simulation): the closed form is the exact target."""
    student = _model()
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(torch.full_like(p, 0.02))
    teacher = build_teacher("ema", student, copy.deepcopy(student), 0.01, torch.bfloat16)
    assert isinstance(teacher, ModelTeacher)
    naive_bf16 = {n: p.detach().to(torch.bfloat16) for n, p in student.named_parameters()}
    steps, drift, rate = 200, 1e-5, 0.01
    for _ in range(steps):
        with torch.no_grad():
            for name, p in student.named_parameters():
                p.add_(drift)
                naive_bf16[name].lerp_(p.to(torch.bfloat16), rate)
        teacher.update()
    # Closed form of the EMA of x_k = x0 + k*d with phi_0 = x0.
    expected_move = sum(rate * (1 - rate) ** (steps - k) * k * drift for k in range(1, steps + 1))
    name = "model.layers.0.mlp.up_proj.weight"
    shadow_move = float(teacher.shadow[name].mean()) - 0.02
    naive_move = float(naive_bf16[name].float().mean()) - float(torch.tensor(0.02, dtype=torch.bfloat16))
    assert shadow_move == pytest.approx(expected_move, rel=1e-3)
    assert abs(naive_move - expected_move) > 0.3 * expected_move, "a bf16 EMA rounds the updates away"
    # The bf16 forward copy follows the shadow.
    assert teacher.targets[name].dtype == torch.bfloat16
    torch.testing.assert_close(teacher.targets[name].float(), teacher.shadow[name], rtol=0, atol=1e-3)


def _lora(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def test_lora_ema_teacher_follows_the_merged_student_weights() -> None:
    base = _model()
    snapshot = copy.deepcopy(base)
    student = _lora(base)
    teacher = build_teacher("ema", student, snapshot, 0.5, torch.float32)
    assert isinstance(teacher, ModelTeacher)
    assert set(teacher.shadow) == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
    }
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    w0 = snapshot.model.layers[0].self_attn.q_proj.weight.detach().clone()
    layer = student.base_model.model.model.layers[0].self_attn.q_proj
    merged = w0 + layer.get_delta_weight("default")
    teacher.update()
    torch.testing.assert_close(teacher.model.model.layers[0].self_attn.q_proj.weight, 0.5 * w0 + 0.5 * merged)
    # Untargeted weights never move.
    torch.testing.assert_close(
        teacher.model.model.layers[0].mlp.up_proj.weight, snapshot.model.layers[0].mlp.up_proj.weight
    )


def test_frozen_lora_teacher_is_the_base_model() -> None:
    base = _model()
    reference = copy.deepcopy(base)
    student = _lora(base)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.fill_(0.5)
    batch = pack([[1, 5, 6, 7]], [[8, 9]], 2, torch.device("cpu"))
    teacher = build_teacher("frozen", student, None, 0.01, torch.float32)
    assert isinstance(teacher, AdapterOffTeacher)
    with torch.no_grad():
        expected = hidden_states(reference, batch)
        adapted = hidden_states(student, batch)
    torch.testing.assert_close(teacher.hidden(batch), expected)
    assert not torch.allclose(adapted, expected), "the adapter is active for the student"


def test_frozen_full_teacher_never_moves_and_live_teacher_warns() -> None:
    student = _model()
    teacher = build_teacher("frozen", student, copy.deepcopy(student), 0.01, torch.float32)
    before = [p.detach().clone() for p in teacher.model.parameters()]  # type: ignore[union-attr]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.model.parameters(), strict=True))  # type: ignore[union-attr]
    with pytest.warns(UserWarning, match="diverges"):
        live = build_teacher("live", student, None, 0.01, torch.float32)
    assert isinstance(live, LiveTeacher)


def test_checkpointed_teacher_state_round_trips() -> None:
    student = _model()
    teacher = build_teacher("ema", student, copy.deepcopy(student), 0.1, torch.bfloat16)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3)
    teacher.update()
    saved = teacher.state_tensors()
    fresh = build_teacher("ema", student, copy.deepcopy(_model()), 0.1, torch.bfloat16)
    fresh.load_state_tensors(saved)
    for name, tensor in saved.items():
        assert torch.equal(fresh.shadow[name], tensor)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="does not match"):
        fresh.load_state_tensors({"nope": torch.zeros(1)})
