"""The rollout protocol: how a training stage or an evaluation asks a backend for completions.

A backend is chosen once, when it is built (`make_backend`), never inside the loop. Backends return
token ids, never text, so the trainer scores exactly the tokens that were sampled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from workers.models.placement import Placement

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0 means greedy
    num_samples: int = 1
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class RolloutShape:
    """The most one `generate` call of a stage or an evaluation asks for: how many sequences, and
    the longest of them (prompt + new tokens). A vLLM engine on CPU sizes its KV cache from it."""

    sequences: int
    sequence_tokens: int


@dataclass(frozen=True)
class Completion:
    """One sampled continuation. `token_ids` includes the stop token when the turn ended by itself;
    `logprobs` are the sampler's log-probabilities of those tokens (at its temperature), in order.
    It may be one shorter than `token_ids` when the sampler did not report the stop token's (a
    vLLM server that does not echo it): such a token has no sampler log-probability."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] = field(default=())
    finish_reason: FinishReason = "stop"


class RolloutBackend(Protocol):
    name: str
    # True when the sampler computes the same numbers as the trainer (same weights, kernels and
    # dtype), so importance weights would all be 1 and are skipped.
    exact_numerics: bool

    def generate(
        self, prompts: Sequence[Sequence[int]], params: SamplingParams, should_stop: StopCheck | None = None
    ) -> list[list[Completion]]:  # [prompt][sample]
        """Sample; a backend that generates token by token checks `should_stop` as it goes and raises
        GenerationStopped when it says so (a vLLM engine finishes a batch in seconds: it is checked
        between steps instead)."""
        ...

    def sync_weights(self, step: int) -> bool:
        """Make the next `generate` sample from the student's weights at optimizer step `step`, when
        a sync is due then (`sync_every`); True when it does, False when it serves older weights (or
        no student)."""
        ...

    def close(self) -> None: ...


StopCheck = Callable[[], bool]


def engine_name(backend: RolloutBackend | None) -> str:
    """The engine rollouts ran on, as step metrics and checkpoints record it ("none": no rollouts)."""
    return "none" if backend is None else backend.name


class GenerationStopped(Exception):
    """`should_stop` said so in the middle of a generate call (a cancelled job): nothing is returned."""


# Builds a stage's backend around its student: (student, tokenizer, placement, shape) -> backend.
BackendFactory = Callable[
    ["torch.nn.Module", "PreTrainedTokenizerBase", "Placement", RolloutShape], RolloutBackend
]
