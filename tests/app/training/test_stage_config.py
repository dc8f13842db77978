from __future__ import annotations

import pytest

from app.training.stage_config import (
    PAPER_TEACHER_TEMPLATE,
    ConfigError,
    StageConfig,
    parse_stage_config,
    resolve,
)


def test_defaults_are_the_papers_where_the_method_is_sdft() -> None:
    config = StageConfig()
    assert config.method == "auto"  # the readiness probe picks sdft or the fallback per stage
    assert (config.divergence, config.support, config.loss_normalization) == (
        "forward_kl",
        "full",
        "sequence",
    )
    assert (config.teacher, config.ema_rate, config.skip_first_tokens) == ("ema", 0.01, 3)
    assert (config.rollouts_per_prompt, config.temperature, config.max_grad_norm) == (1, 1.0, 1.0)
    assert PAPER_TEACHER_TEMPLATE.rstrip().endswith("including the thinking process.")


def test_auto_scales_to_the_dataset() -> None:
    # Small data: enough passes that MIN_AUTO_EXAMPLES demonstrations are seen (at most 10 epochs).
    small = resolve(StageConfig(), 10)
    assert (small.batch_size, small.epochs, small.max_steps, small.learning_rate) == (4, 10.0, 25, 5e-5)
    facts = resolve(StageConfig(), 40)
    assert (facts.batch_size, facts.epochs, facts.max_steps) == (8, 8.0, 40)
    big = resolve(StageConfig(), 1000)
    assert (big.batch_size, big.epochs, big.max_steps, big.warmup_steps) == (32, 2.0, 63, 6)
    assert resolve(StageConfig(max_steps=300), 1000).warmup_steps == 10
    assert resolve(StageConfig(method="sft_retain"), 40).learning_rate == 5e-5  # every full-FT method
    lora = resolve(StageConfig(lora_rank=8), 100)
    assert lora.learning_rate == 2e-4 and lora.lora_alpha == 16.0
    assert big.diagnostics_every == 7 and facts.retention_batch_size == 8
    fixed = resolve(StageConfig(batch_size=4, learning_rate=1e-5, epochs=1, warmup_steps=0), 10)
    assert (fixed.batch_size, fixed.learning_rate, fixed.max_steps, fixed.warmup_steps) == (4, 1e-5, 3, 0)
    with pytest.raises(ValueError):
        resolve(StageConfig(), 0)


def test_rollout_length_comes_from_the_demonstrations() -> None:
    assert resolve(StageConfig(), 10).max_new_tokens is None, "unknown until a tokenizer has seen them"
    assert resolve(StageConfig(), 10, longest_demonstration_tokens=12).max_new_tokens == 31
    assert resolve(StageConfig(), 10, longest_demonstration_tokens=4000).max_new_tokens == 1024
    assert resolve(StageConfig(max_new_tokens=64), 10, longest_demonstration_tokens=4000).max_new_tokens == 64


def test_replay_only_when_there_is_something_to_replay() -> None:
    assert resolve(StageConfig(), 10).replay_fraction == 0.0
    assert resolve(StageConfig(), 10, replay_rows=5).replay_fraction == 0.25
    assert resolve(StageConfig(replay_fraction=0.5), 10, replay_rows=5).replay_fraction == 0.5
    assert resolve(StageConfig(replay_fraction=0.5), 10).replay_fraction == 0.0


def test_every_problem_is_reported_with_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_stage_config(
            {"foo": 1, "learning_rate": -1, "batch_size": "x", "divergence": "l2", "epochs": "auto"}
        )
    keys = dict(info.value.problems)
    assert set(keys) == {"foo", "learning_rate", "batch_size", "divergence"}
    assert keys["foo"] == "unknown key"
    assert "greater than 0" in keys["learning_rate"]


def test_bad_combinations_are_rejected_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="reverse_kl") as support:
        parse_stage_config({"support": "sampled_token"})
    with pytest.raises(ConfigError, match="question") as template:
        parse_stage_config({"teacher_template": "no slots"})
    assert [key for key, _ in support.value.problems + template.value.problems] == [
        "support",
        "teacher_template",
    ]
    assert (
        parse_stage_config({"support": "sampled_token", "divergence": "reverse_kl"}).support
        == "sampled_token"
    )
