"""The transformers backend samples from the student's own distribution at our temperature (the
model's generation_config does not apply) and keeps the sampled tokens' log-probabilities step by
step, never a batch x steps x vocabulary tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from workers.models.loading import load_model
from workers.models.placement import default_placement
from workers.models.tiny import write_tiny_model_dir
from workers.rollout.base import Completion, SamplingParams
from workers.rollout.hf_generate import TransformersBackend

PROMPTS = [[1, 40, 41, 42, 43], [1, 7, 8], [1, 90, 91, 92]]
CPU = default_placement("cpu")


def _generate(model_dir: Path, params: SamplingParams) -> list[list[Completion]]:
    return TransformersBackend(load_model(model_dir, CPU), 2, CPU).generate(PROMPTS, params)


def test_the_models_generation_config_does_not_bias_the_samples(tmp_path: Path) -> None:
    plain = write_tiny_model_dir(tmp_path / "plain")
    biased = write_tiny_model_dir(tmp_path / "biased")  # the same weights (same seed)
    config_path = biased / "generation_config.json"
    config = json.loads(config_path.read_text())
    extra = {
        "repetition_penalty": 5.0,
        "no_repeat_ngram_size": 2,
        "min_new_tokens": 6,
        "suppress_tokens": [9],
    }
    config_path.write_text(json.dumps({**config, **extra}))
    for params in (
        SamplingParams(max_new_tokens=10, temperature=0.8, num_samples=2, seed=4, stop_token_ids=(2,)),
        SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(2,)),
    ):
        assert _generate(biased, params) == _generate(plain, params)


class _LargestNewTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op allocates while active (views are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.numel = max(self.numel, t.numel())
        return out


def test_sampled_logprobs_are_kept_step_by_step(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, CPU)
    steps, temperature = 64, 0.8
    params = SamplingParams(max_new_tokens=steps, temperature=temperature, seed=2)  # no stop: every step runs
    largest = _LargestNewTensor()
    with largest:
        rollouts = TransformersBackend(model, 2, CPU).generate(PROMPTS, params)
    vocab = int(model.config.vocab_size)
    assert largest.numel < len(PROMPTS) * steps * vocab, "no [batch, steps, vocab] tensor"
    with torch.no_grad():
        for prompt, [rollout] in zip(PROMPTS, rollouts, strict=True):
            assert len(rollout.token_ids) == len(rollout.logprobs) == steps
            ids = torch.tensor([prompt + list(rollout.token_ids)])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature
            expected = logits.log_softmax(-1).gather(-1, torch.tensor(rollout.token_ids)[:, None]).squeeze(-1)
            torch.testing.assert_close(torch.tensor(rollout.logprobs), expected, rtol=0, atol=1e-4)


def test_a_stop_request_interrupts_generation_within_seconds(tiny_model_dir: Path) -> None:
    """A cancelled job must not sit through a step of long rollouts: generation asks should_stop as it
    goes and raises GenerationStopped (checks are at most a second apart)."""
    import time

    from workers.models.loading import load_model, load_tokenizer
    from workers.models.placement import default_placement
    from workers.rollout.base import GenerationStopped, SamplingParams
    from workers.rollout.hf_generate import TransformersBackend

    placement = default_placement("cpu")
    tokenizer = load_tokenizer(tiny_model_dir)
    backend = TransformersBackend(
        load_model(tiny_model_dir, placement), int(tokenizer.pad_token_id), placement
    )
    started = time.monotonic()
    # No stop token and a very long budget: uninterrupted, this would run for minutes.
    params = SamplingParams(max_new_tokens=20000, temperature=1.0, seed=0)
    with pytest.raises(GenerationStopped):
        backend.generate([[1, 2, 3]], params, should_stop=lambda: time.monotonic() - started > 0.5)
    assert time.monotonic() - started < 5.0
