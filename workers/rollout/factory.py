"""Pick a stage's rollout backend from `RolloutSettings`: one plain if/else, decided once per stage."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from app.contracts.rollout_settings import RolloutSettings
from workers.models.loading import Placement
from workers.rollout.base import BackendFactory, RolloutBackend
from workers.rollout.hf_generate import TransformersBackend


def transformers_backend(
    student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, placement: Placement
) -> RolloutBackend:
    """`transformers.generate` on the live student: needs nothing extra, always in sync."""
    return TransformersBackend(student, int(tokenizer.pad_token_id), placement)


def make_backend_factory(settings: RolloutSettings) -> BackendFactory:
    """The `backend_factory` for `run_stage`."""
    if settings.backend == "transformers":
        return transformers_backend
    if settings.backend == "vllm":

        def colocated(
            student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, placement: Placement
        ) -> RolloutBackend:
            from workers.rollout.vllm_engine import VllmEngineBackend, student_model_dir

            return VllmEngineBackend(
                student_model_dir(student), settings, student=student, device=placement.device
            )

        return colocated
    if settings.backend == "vllm-server":

        def server(
            student: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, placement: Placement
        ) -> RolloutBackend:
            from workers.rollout.vllm_server import VllmServerBackend

            return VllmServerBackend(settings, student=student)

        return server
    raise ValueError(f"unknown rollout backend {settings.backend!r}")
