"""The logit at column (prompt_end - 1 + j) must predict completion token j, on both the student and
the teacher side, with left-padded prompts of different lengths in one batch. An off-by-one still
trains (the loss still falls), so this is pinned with greedy decoding: re-scoring a greedy
completion must reproduce its tokens by argmax."""

from __future__ import annotations

from pathlib import Path

import torch

from app.training.stage_config import StageConfig
from workers.models.forward import completion_hidden, head_weight, hidden_states, pack
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.rollout.base import SamplingParams
from workers.rollout.hf_generate import TransformersBackend
from workers.training.prompts import prepare_examples


def _greedy_then_rescore(model_dir: Path, tiny_rows: list, role: str, shift: int = 0) -> tuple[float, float]:
    placement = default_placement("cpu")
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, placement).eval()
    examples = prepare_examples(tiny_rows, tokenizer, StageConfig(), int(tokenizer.eos_token_id))
    prompts = [e.student_prompt_ids if role == "student" else e.teacher_prompt_ids for e in examples]
    assert len({len(p) for p in prompts}) > 1, "prompts of different lengths exercise the left padding"
    backend = TransformersBackend(model, int(tokenizer.pad_token_id), placement)
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    completions = [c[0] for c in backend.generate(prompts, params)]
    batch = pack(prompts, [c.token_ids for c in completions], int(tokenizer.pad_token_id), placement.device)
    with torch.no_grad():
        hidden = hidden_states(model, batch)
        width = batch.completion_ids.shape[1]
        start = batch.completion_start - 1 + shift
        aligned = completion_hidden(hidden, batch) if shift == 0 else hidden[:, start : start + width]
        logits = aligned @ head_weight(model).T
    agree = total = 0
    logprob_gap = 0.0
    for i, c in enumerate(completions):
        n = len(c.token_ids)
        predicted = logits[i, :n].argmax(-1).tolist()
        agree += sum(int(a == b) for a, b in zip(predicted, c.token_ids, strict=True))
        total += n
        rescored = logits[i, :n].log_softmax(-1).gather(-1, batch.completion_ids[i, :n, None]).squeeze(-1)
        logprob_gap = max(logprob_gap, float((rescored - torch.tensor(c.logprobs)).abs().max()))
    return agree / total, logprob_gap


def test_student_side_reproduces_greedy_tokens(tiny_model_dir: Path, tiny_rows: list) -> None:
    agreement, gap = _greedy_then_rescore(tiny_model_dir, tiny_rows, "student")
    assert agreement == 1.0
    # The sampler's log-probs are the trainer's (same weights, fp32): importance weights would be 1.
    assert gap < 1e-4


def test_teacher_side_reproduces_greedy_tokens(tiny_model_dir: Path, tiny_rows: list) -> None:
    agreement, _ = _greedy_then_rescore(tiny_model_dir, tiny_rows, "teacher")
    assert agreement == 1.0


def test_off_by_one_is_detected(tiny_model_dir: Path, tiny_rows: list) -> None:
    for shift in (-1, 1):
        agreement, _ = _greedy_then_rescore(tiny_model_dir, tiny_rows, "student", shift=shift)
        assert agreement < 0.5
