"""Rollouts with `transformers.generate` on the student itself: needs nothing extra, always in sync."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.models.loading import Placement
from workers.rollout.base import Completion, SamplingParams


class TransformersBackend:
    name = "transformers"
    exact_numerics = True

    def __init__(self, model: torch.nn.Module, pad_token_id: int, placement: Placement, batch_size: int = 16):
        self.model = model
        self.pad_token_id = pad_token_id
        self.placement = placement
        self.batch_size = batch_size

    def sync_weights(self, step: int) -> None:
        """Nothing to do: generation runs on the live student module."""

    def close(self) -> None:
        """Nothing to release: the model belongs to the trainer."""

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        expanded = [list(p) for p in prompts for _ in range(params.num_samples)]
        results: list[Completion] = []
        # One generator per call, seeded by the caller: rollouts are reproducible and a resumed stage
        # samples exactly what an uninterrupted one would have.
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(params.seed)
        try:
            for start in range(0, len(expanded), self.batch_size):
                results += self._generate_batch(expanded[start : start + self.batch_size], params)
        finally:
            torch.random.set_rng_state(generator_state)
        n = params.num_samples
        return [results[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        width = max(len(p) for p in prompts)
        device = self.placement.device
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long, device=device)
        attention = torch.zeros_like(input_ids)
        for i, p in enumerate(prompts):  # left padding, so every row's completion starts at `width`
            input_ids[i, width - len(p) :] = torch.tensor(p, device=device)
            attention[i, width - len(p) :] = 1
        was_training = self.model.training
        self.model.eval()
        sampling = {} if params.greedy else {"temperature": params.temperature, "top_k": 0, "top_p": 1.0}
        with self.placement.autocast():
            out = self.model.generate(  # type: ignore[operator]
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=not params.greedy,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=list(params.stop_token_ids) or None,
                pad_token_id=self.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
                use_cache=True,
                **sampling,
            )
        self.model.train(was_training)
        new_tokens = out.sequences[:, width:]
        # `scores` are the processed logits (temperature applied), i.e. the sampling distribution.
        logprobs_BTV = torch.stack(out.scores, dim=1).float().log_softmax(-1)
        token_logprobs = logprobs_BTV.gather(-1, new_tokens[:, : logprobs_BTV.shape[1], None]).squeeze(-1)
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
