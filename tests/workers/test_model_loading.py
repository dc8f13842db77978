"""What `load_model` guarantees the trainer: logits are the final hidden states times the output
embedding (else the model is refused), and no dropout while the student is scored in train mode."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM, PreTrainedModel

from app.training.stage_config import StageConfig
from workers.models.forward import completion_hidden, head_weight, hidden_states, pack
from workers.models.loading import ModelDirError, load_model, load_tokenizer, stop_token_ids
from workers.models.placement import default_placement
from workers.models.tiny import write_tiny_model_dir
from workers.training.chunked_head import cross_entropy_token_loss
from workers.training.loop import resolve_for
from workers.training.objectives.base import StageContext, backward_micro_batch
from workers.training.prompts import prepare_examples

CPU = default_placement("cpu")
SMALL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
HEADS = {"num_attention_heads": 2, "num_key_value_heads": 2}


def _soft_capped() -> PreTrainedModel:
    return Gemma2ForCausalLM(Gemma2Config(**SMALL, **HEADS, head_dim=16, final_logit_softcapping=2.0))


def _scaled() -> PreTrainedModel:
    return GraniteForCausalLM(GraniteConfig(**SMALL, **HEADS, logits_scaling=4.0))


@pytest.mark.parametrize(
    ("build", "field"),
    [(_soft_capped, "final_logit_softcapping=2.0"), (_scaled, "logits_scaling=4.0")],
    ids=["gemma2-soft-capping", "granite-logit-scaling"],
)
def test_a_model_whose_logits_are_more_than_hidden_times_head_is_refused(
    build: Callable[[], PreTrainedModel], field: str, tmp_path: Path
) -> None:
    build().save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ModelDirError, match=f"not its final hidden states.*{field}"):
        load_model(tmp_path, CPU)


def test_the_trainers_logits_are_the_models_own(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, CPU)
    prompt, completion = [1, 40, 41, 42], [43, 44, 45]
    batch = pack([prompt], [completion], 2, CPU.device)
    with torch.no_grad():
        ours = completion_hidden(hidden_states(model, batch), batch) @ head_weight(model).T
        theirs = model(input_ids=torch.tensor([prompt + completion])).logits[:, len(prompt) - 1 : -1]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_dropout_is_off_while_the_student_is_scored(tmp_path: Path, tiny_rows: list) -> None:
    root = write_tiny_model_dir(tmp_path)
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    tokenizer = load_tokenizer(root)
    student = load_model(root, CPU)
    stage = StageConfig(method="sft")
    examples = prepare_examples(tiny_rows, tokenizer, stage, int(tokenizer.eos_token_id))
    longest = max(len(e.student_prompt_ids) for e in examples)
    ctx = StageContext(
        stage,
        resolve_for(stage, examples),
        student,
        tokenizer,
        tuple(stop_token_ids(tokenizer)),
        CPU,
        longest,
    )
    student.train()  # as in a stage step

    def loss() -> float:
        value, _, _ = backward_micro_batch(
            ctx,
            [e.student_prompt_ids for e in examples],
            [e.demonstration_ids for e in examples],
            skip_first=0,
            scale=1.0,
            total=len(examples),
            weight=1.0,
            token_loss_for=lambda _keep, target: cross_entropy_token_loss(target),
        )
        return value

    assert loss() == loss()
