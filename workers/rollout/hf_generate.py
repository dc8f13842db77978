"""Rollouts with `transformers.generate` on the student itself: needs nothing extra, always in sync.

Only our sampling settings apply: the model's own generation_config (repetition_penalty,
no_repeat_ngram_size, min_length, top_k, ...) is set aside for the call, so the samples are drawn
from the student's distribution at our temperature, which is what makes them on-policy. The sampled
tokens' log-probabilities are kept step by step ([batch] per step, never [batch, steps, vocab]).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from workers.models.forward import base_of
from workers.models.placement import Placement
from workers.rollout.base import Completion, GenerationStopped, SamplingParams, StopCheck

STOP_CHECK_SECONDS = 1.0


class SampledTokenLogprobs(LogitsProcessor):
    """Applies the temperature itself, so it sees the exact distribution every token is drawn from,
    and keeps only the drawn tokens' log-probabilities."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.pending: torch.Tensor | None = None  # [B, V]: the last step's log-probabilities
        self.picked: list[torch.Tensor] = []  # [B] per step whose token is known

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is not None:  # the previous step's token is the last input now
            self.picked.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1))
        processed = scores / self.temperature
        self.pending = processed.float().log_softmax(-1)
        return processed  # type: ignore[return-value]

    def token_logprobs(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """[B, T] log-probabilities of the generated tokens [B, T]."""
        steps = new_tokens.shape[1]
        if len(self.picked) < steps:  # the last token's distribution is still pending
            assert self.pending is not None
            self.picked.append(self.pending.gather(-1, new_tokens[:, -1:]).squeeze(-1))
        return torch.stack(self.picked[:steps], dim=1)


class StopWhenAsked(StoppingCriteria):
    """Asks `should_stop` between tokens, at most every STOP_CHECK_SECONDS (it may query a database),
    and raises GenerationStopped when it says yes: a cancelled job stops generating within seconds,
    not at the end of a step of long rollouts."""

    def __init__(self, should_stop: StopCheck) -> None:
        self.should_stop = should_stop
        self.checked_at = time.monotonic()

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        if time.monotonic() - self.checked_at >= STOP_CHECK_SECONDS:
            self.checked_at = time.monotonic()
            if self.should_stop():
                raise GenerationStopped("stopped while generating")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


@contextmanager
def only_our_generation_settings(model: torch.nn.Module) -> Iterator[None]:
    """transformers fills every setting a call leaves unset from the model's generation_config; a
    blank one for the call leaves its neutral defaults and what the call states."""
    base = base_of(model)
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


class TransformersBackend:
    name = "transformers"
    exact_numerics = True

    def __init__(self, model: torch.nn.Module, pad_token_id: int, placement: Placement, batch_size: int = 16):
        self.model = model
        self.pad_token_id = pad_token_id
        self.placement = placement
        self.batch_size = batch_size

    def sync_weights(self, step: int) -> bool:
        """Nothing to do: generation runs on the live student module."""
        return True

    def close(self) -> None:
        """Nothing to release: the model belongs to the trainer."""

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, should_stop: StopCheck | None = None
    ) -> list[list[Completion]]:
        expanded = [list(p) for p in prompts for _ in range(params.num_samples)]
        results: list[Completion] = []
        # One generator per call, seeded by the caller: rollouts are reproducible and a resumed stage
        # samples exactly what an uninterrupted one would have.
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(params.seed)
        try:
            for start in range(0, len(expanded), self.batch_size):
                results += self._generate_batch(
                    expanded[start : start + self.batch_size], params, should_stop
                )
        finally:
            torch.random.set_rng_state(generator_state)
        n = params.num_samples
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, should_stop: StopCheck | None
    ) -> list[Completion]:
        width = max(len(p) for p in prompts)
        device = self.placement.device
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long, device=device)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(prompts):  # left padding, so every row's completion starts at `width`
            input_ids[i, width - len(p) :] = torch.tensor(p, device=device)
            attention[i, width - len(p) :] = 1
        recorder = SampledTokenLogprobs(1.0 if params.greedy else params.temperature)
        config = GenerationConfig(
            do_sample=not params.greedy,
            **({} if params.greedy else {"top_k": 0}),  # transformers' default top_k is 50
            max_new_tokens=params.max_new_tokens,
            eos_token_id=list(params.stop_token_ids) or None,
            pad_token_id=self.pad_token_id,
            use_cache=True,
        )
        was_training = self.model.training
        self.model.eval()
        with self.placement.autocast(), only_our_generation_settings(self.model):
            sequences = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=config,
                logits_processor=LogitsProcessorList([recorder]),
                stopping_criteria=StoppingCriteriaList([StopWhenAsked(should_stop)] if should_stop else []),
            )
        self.model.train(was_training)
        new_tokens = sequences[:, width:]
        token_logprobs = recorder.token_logprobs(new_tokens)
        stops = set(params.stop_token_ids)
        completions = []
        for row in range(len(prompts)):
            ids = new_tokens[row].tolist()
            length, finish = len(ids), "length"
            for j, tok in enumerate(ids):
                if tok in stops:
                    length, finish = j + 1, "stop"
                    break
            completions.append(
                Completion(
                    token_ids=tuple(ids[:length]),
                    logprobs=tuple(token_logprobs[row, :length].tolist()),
                    finish_reason=finish,  # type: ignore[arg-type]
                )
            )
        return completions
