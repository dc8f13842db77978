"""Only positions the sampler gave a log-probability count in the importance weight: a stop token a
vLLM server did not echo has none, and a made-up 0.0 (probability 1) would pull the weight down."""

from __future__ import annotations

import torch

from workers.rollout.base import Completion
from workers.rollout.vllm_server import parse_completion
from workers.training.objectives.base import sampler_logprob_table
from workers.training.token_weights import truncated_importance_weights


def test_an_unechoed_stop_token_has_no_sampler_logprob() -> None:
    body = {
        "choices": [
            {
                "token_ids": [4, 5],
                "logprobs": {"token_logprobs": [-1.0, -0.5]},
                "finish_reason": "stop",
                "stop_reason": 2,
            }
        ]
    }
    completion = parse_completion(body, [2])
    assert completion.token_ids == (4, 5, 2) and completion.logprobs == (-1.0, -0.5)


def test_the_importance_weight_counts_only_positions_the_sampler_scored() -> None:
    completions = [Completion((4, 5, 2), (-1.0, -0.5), "stop"), Completion((6, 7, 8), (-1.0, -0.5, -2.0))]
    sampler_BT, scored_BT = sampler_logprob_table(completions, 3, torch.device("cpu"))
    assert scored_BT.tolist() == [[True, True, False], [True, True, True]]
    assert sampler_BT.tolist() == [[-1.0, -0.5, 0.0], [-1.0, -0.5, -2.0]]
    trainer_BT = torch.tensor([[-1.0, -0.5, -3.0], [-1.0, -0.5, -2.0]])  # agrees wherever both scored
    weights = truncated_importance_weights(trainer_BT, sampler_BT, scored_BT)
    assert weights.tolist() == [1.0, 1.0]
