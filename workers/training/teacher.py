"""Teacher weights: an EMA of the student (the paper), the frozen base, or the live student.

The EMA shadow is kept in fp32: a bf16 EMA with rate 0.01 rounds away most of each update and
moved only ~40% as far as the math says in the reference doc's simulation. On CPU the teacher
runs in fp32 and its parameters *are* the shadow; on CUDA it runs in bf16 beside an fp32 shadow.

With LoRA the teacher follows the student's merged weights, W0 + s·BA, so the teacher is a true
EMA of the student function (averaging the A and B factors separately, as TRL does, is not:
EMA(B)·EMA(A) != EMA(B·A)). Only the adapted matrices move, so only those get a shadow.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from workers.models.forward import PackedBatch, head_weight, hidden_states


class Teacher(Protocol):
    kind: str

    def hidden(self, batch: PackedBatch) -> torch.Tensor: ...

    def head_weight(self) -> torch.Tensor: ...

    def update(self) -> None: ...

    def state_tensors(self) -> dict[str, torch.Tensor]: ...

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


class _StudentItself:
    """A teacher that is the student module itself: nothing of its own to move, save or load."""

    kind: str

    def __init__(self, student: torch.nn.Module):
        self.student = student

    @torch.no_grad()
    def hidden(self, batch: PackedBatch) -> torch.Tensor:
        return hidden_states(self.student, batch)

    def head_weight(self) -> torch.Tensor:
        return head_weight(self.student).detach()

    def update(self) -> None:
        """Nothing to do: the student moves itself (live), or the adapter is switched off (frozen)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Nothing saved, nothing to load."""


class LiveTeacher(_StudentItself):
    """The student itself under no-grad. The paper finds this diverges; allowed with a warning."""

    kind = "live"

    def __init__(self, student: torch.nn.Module):
        warnings.warn(
            "teacher='live' uses the current student as its own teacher; the paper reports that this "
            "diverges. Prefer 'ema' (default) or 'frozen'.",
            stacklevel=2,
        )
        super().__init__(student)


class AdapterOffTeacher(_StudentItself):
    """Frozen base teacher for LoRA students: the same module with the adapter switched off."""

    kind = "frozen"

    def __init__(self, student: PeftModel):
        super().__init__(student)
        self.peft = student

    @torch.no_grad()
    def hidden(self, batch: PackedBatch) -> torch.Tensor:
        with self.peft.disable_adapter():
            return hidden_states(self.peft, batch)


def lora_effective_weights(student: PeftModel) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """(teacher parameter name, function giving the student's merged weight) for every adapted matrix."""
    for name, module in student.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            plain_name = name.removeprefix("base_model.model.") + ".weight"

            def merged(module: Any = module) -> torch.Tensor:
                adapter = module.active_adapters[0]
                return module.base_layer.weight + module.get_delta_weight(adapter)

            yield plain_name, merged


class ModelTeacher:
    """A separate copy of the model: frozen at the base, or an EMA of the student (fp32 shadow)."""

    def __init__(
        self,
        base_copy: PreTrainedModel,
        sources: dict[str, Callable[[], torch.Tensor]] | None,
        rate: float,
        dtype: torch.dtype,
    ):
        self.kind = "ema" if sources is not None else "frozen"
        self.rate = rate
        self.sources = sources or {}
        full_precision = dict(base_copy.named_parameters(remove_duplicate=False))
        missing = sorted(set(self.sources) - set(full_precision))
        if missing:
            raise ValueError(f"teacher has no parameter(s) {missing[:3]} to follow")
        # The shadow starts from the fp32 weights, before any cast: fp32 params are their own shadow,
        # lower-precision ones get an fp32 copy beside them.
        keep_own = dtype == torch.float32
        self.shadow = {
            name: full_precision[name].data.float()
            if keep_own
            else full_precision[name].detach().float().clone()
            for name in self.sources
        }
        self.model: PreTrainedModel = base_copy.to(dtype).eval().requires_grad_(False)  # type: ignore[arg-type]
        params = dict(self.model.named_parameters(remove_duplicate=False))
        self.targets = {name: params[name] for name in self.sources}
        if keep_own:
            self.shadow = {name: self.targets[name].data for name in self.sources}

    @torch.no_grad()
    def hidden(self, batch: PackedBatch) -> torch.Tensor:
        return hidden_states(self.model, batch)

    def head_weight(self) -> torch.Tensor:
        return head_weight(self.model)

    @torch.no_grad()
    def update(self) -> None:
        """phi <- (1 - rate) * phi + rate * theta, after every optimizer step."""
        for name, source in self.sources.items():
            shadow = self.shadow[name]
            shadow.lerp_(source().detach().float(), self.rate)
            target = self.targets[name]
            if target.data_ptr() != shadow.data_ptr():
                target.copy_(shadow)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().clone().contiguous() for name, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if set(tensors) != set(self.shadow):
            raise ValueError("the checkpoint's teacher state does not match this stage's teacher")
        for name, value in tensors.items():
            self.shadow[name].copy_(value)
            self.targets[name].copy_(self.shadow[name])


def build_teacher(
    kind: str,
    student: torch.nn.Module,
    base_snapshot: PreTrainedModel | None,
    rate: float,
    dtype: torch.dtype,
) -> Teacher:
    """`base_snapshot` is a copy of the student's starting weights (needed for 'ema', and for 'frozen'
    with full fine-tuning)."""
    if kind == "live":
        return LiveTeacher(student)
    if kind == "frozen" and isinstance(student, PeftModel):
        return AdapterOffTeacher(student)
    if base_snapshot is None:
        raise ValueError(f"teacher '{kind}' needs a copy of the starting weights")
    if kind == "ema" and rate >= 1.0:
        warnings.warn(
            "ema_rate=1.0 copies the student into the teacher after every step: a live teacher one "
            "step behind, and the paper reports that a live teacher diverges. Prefer a small rate "
            "(default 0.01) or teacher='frozen'.",
            stacklevel=2,
        )
    if kind == "frozen":
        return ModelTeacher(base_snapshot, None, rate, dtype)
    if isinstance(student, PeftModel):
        sources = dict(lora_effective_weights(student))
    else:
        sources = {name: _constant(p) for name, p in student.named_parameters()}
    return ModelTeacher(base_snapshot, sources, rate, dtype)


def _constant(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: tensor
