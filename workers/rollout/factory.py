"""Pick a stage's rollout backend from `RolloutSettings`: one plain if/else, decided once per stage.

A colocated vLLM engine that cannot be built (vLLM absent, or its engine fails to start) is replaced
by transformers with a warning: slower, never wrong. The stage records the engine that ran.
"""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedTokenizerBase

from app.contracts.rollout_settings import RolloutSettings
from workers.models.placement import Placement
from workers.rollout.base import BackendFactory, RolloutBackend, RolloutShape
from workers.rollout.hf_generate import TransformersBackend


def transformers_backend(
    student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, placement: Placement, shape: RolloutShape
) -> RolloutBackend:
    """`transformers.generate` on the live student: needs nothing extra, always in sync."""
    return TransformersBackend(student, int(tokenizer.pad_token_id), placement)


def warn_engine_fallback(purpose: str, error: BaseException) -> None:
    """Say that a vLLM engine did not start and transformers takes over `purpose`."""
    warnings.warn(
        f"the vLLM engine for {purpose} did not start ({type(error).__name__}: {error}); "
        f"transformers generates the {purpose} instead (slower)",
        stacklevel=3,
    )


def engine_fallback_note(purpose: str, requested: str, ran: str | None) -> str | None:
    """A job's warning when vLLM was asked to generate `purpose` but transformers did (else None;
    `ran` None: nothing was generated)."""
    if requested != "vllm" or ran != "transformers":
        return None
    return (
        f"the vLLM engine did not start, so transformers generated the {purpose} instead (slower); "
        "the worker log says why"
    )


def make_backend_factory(settings: RolloutSettings) -> BackendFactory:
    """The `backend_factory` for `run_stage`."""
    if settings.backend == "transformers":
        return transformers_backend
    if settings.backend == "vllm":

        def colocated(
            student: torch.nn.Module,
            tokenizer: PreTrainedTokenizerBase,
            placement: Placement,
            shape: RolloutShape,
        ) -> RolloutBackend:
            from workers.rollout.vllm_engine import VllmEngineBackend, student_model_dir

            try:
                return VllmEngineBackend(
                    student_model_dir(student),
                    settings,
                    student=student,
                    device=placement.device,
                    shape=shape,
                )
            except Exception as error:  # vLLM absent, or its engine failed to start
                warn_engine_fallback("rollouts", error)
                return transformers_backend(student, tokenizer, placement, shape)

        return colocated
    if settings.backend == "vllm-server":

        def server(
            student: torch.nn.Module,
            tokenizer: PreTrainedTokenizerBase,
            placement: Placement,
            shape: RolloutShape,
        ) -> RolloutBackend:
            from workers.rollout.vllm_server import VllmServerBackend

            return VllmServerBackend(settings, student=student)

        return server
    raise ValueError(f"unknown rollout backend {settings.backend!r}")
