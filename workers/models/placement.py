"""Where a model runs: the device, and the precision of its forward passes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    """Where a stage runs. Weights stay fp32 everywhere (an fp32 master copy, so small AdamW updates
    are not rounded away); on CUDA the forward passes run under bf16 autocast."""

    device: torch.device
    autocast_dtype: torch.dtype | None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> torch.autocast:
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled)


def default_placement(device: str | None = None) -> Placement:
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Placement(chosen, torch.bfloat16 if chosen.type == "cuda" else None)
