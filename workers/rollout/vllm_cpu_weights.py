"""The CPU vLLM engine's weights: how a sync packs them, and how they are released between rollouts.

vLLM's CPU backend keeps a linear layer's weight only inside the GEMM handler it packs it into
(oneDNN's blocked layout), and keeps the LM head packed beside the embedding it may share. Each
function here runs inside the engine's worker (`llm.collective_rpc(function, kwargs=...)`; the
engine is in-process, so tensors and generators pass by reference).

Packing sync (`plan_packed_sync`, then `pack_cpu_weights` every sync): the student's tensors go
straight into the backend's packing: a fused layer (q/k/v, gate/up, as the model's
`packed_modules_mapping` names them) gets one concatenation, an unfused one is packed from the
student's own tensor, and the embedding and norms are copied in place. vLLM's layer-wise
`reload_weights` reaches the same packed buffers through a converted copy of every tensor, each
layer's parameters rebuilt and its loaders run: on SmolLM2 in fp32 the packing sync served
bitwise the same rollouts in about a third of the time (0.27 s against 0.79 s per sync with full
fine-tuning, `bench/engine_sync.py`). It is used only for the architectures whose vLLM loader copies
checkpoint tensors without transforming them (`PACKABLE_ARCHITECTURES`) and when the plan covers
every engine weight; otherwise the engine keeps `reload_weights`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Architectures whose vLLM `load_weights` only renames and concatenates (q/k/v, gate/up): a packing
# sync rebuilds what their loader builds. Others (weight permutations, scales folded in at load,
# renaming mappers) keep vLLM's reload.
PACKABLE_ARCHITECTURES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)

_PLAN_ATTRIBUTE = "_sdft_pack_plan"


@dataclass(frozen=True)
class PackTarget:
    """One engine parameter and the checkpoint tensors it is the concatenation of (dim 0, in order);
    `packed`: a linear layer's weight, which the backend packs instead of holding."""

    param: str
    module: str
    parts: tuple[str, ...]
    packed: bool
    rows: int | None = None  # a vocabulary vLLM padded: the checkpoint's rows (the rest are zeros)


def repack_lm_heads(worker: Any) -> None:
    """Re-run the LM head's weight post-processing inside the engine.

    vLLM's CPU backend packs the LM head's weight into a GEMM kernel's own buffer. With tied
    embeddings the checkpoint has no lm_head tensor, so a sync updates the shared embedding but
    never re-packs the head, which would keep computing logits from the old weights. Re-packing is
    idempotent, so an untied head that was already re-packed is merely packed again.
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in worker.model_runner.get_model().modules():
        if isinstance(module, ParallelLMHead):
            module.quant_method.process_weights_after_loading(module)


def plan_packed_sync(worker: Any, checkpoint: Sequence[tuple[str, int]]) -> str | None:
    """Plan the packing sync for a student whose tensors are `checkpoint` (name, element count, in
    model order) and keep it on the worker; returns None, or why the engine must reload instead."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    model = worker.model_runner.get_model()
    architecture = type(model).__name__
    if architecture not in PACKABLE_ARCHITECTURES:
        return f"{architecture} is not among the architectures a packing sync rebuilds"
    fused: Mapping[str, Sequence[str]] = getattr(model, "packed_modules_mapping", {}) or {}
    modules = dict(model.named_modules())
    sizes = dict(checkpoint)
    targets: list[PackTarget] = []
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        module = modules[module_name]
        prefix, _, short = module_name.rpartition(".")
        subs = fused.get(short, [short])
        parts = tuple(f"{prefix}.{sub}.{leaf}" if prefix else f"{sub}.{leaf}" for sub in subs)
        method = getattr(module, "quant_method", None)
        packed = leaf == "weight" and isinstance(method, UnquantizedLinearMethod)
        if packed:  # the backend emptied the weight; its shape is the layer's
            elements = int(module.output_size_per_partition) * int(module.input_size_per_partition)
        else:
            elements = param.numel()
        missing = [part for part in parts if part not in sizes]
        if missing:
            return f"the student has no tensor {missing[0]} for the engine's {name}"
        given = sum(sizes[part] for part in parts)
        rows = None
        if given != elements and not packed and len(parts) == 1 and param.ndim == 2:
            width = param.shape[1]
            rows = given // width if given % width == 0 and given < elements else None
        if given != elements and rows is None:
            return f"the engine's {name} does not hold exactly the student's {', '.join(parts)}"
        targets.append(PackTarget(name, module_name, parts, packed, rows))
    covered = [part for target in targets for part in target.parts]
    if len(covered) != len(set(covered)) or set(covered) != set(sizes):
        extra = sorted(set(sizes) - set(covered))
        if extra:
            return f"the engine has no weight for the student's {extra[0]}"
        return "a student tensor would fill two engine weights"
    setattr(worker, _PLAN_ATTRIBUTE, {part: target for target in targets for part in target.parts})
    return None


@torch.no_grad()
def pack_cpu_weights(worker: Any, weights: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> None:
    """Sync by the plan `plan_packed_sync` kept: `weights` (checkpoint name, tensor), in model
    order, are gathered per engine parameter; a complete linear weight is packed by the backend's
    own post-processing, any other parameter copied in place (and its module post-processed again
    where the backend packs it too). The engine keeps no reference to a student tensor. A separate
    LM head tied to the embedding needs `repack_lm_heads` after, as a reload does."""
    plan: Mapping[str, PackTarget] = getattr(worker, _PLAN_ATTRIBUTE)
    model = worker.model_runner.get_model()
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    copied: set[str] = set()  # modules with a parameter copied in place
    for name, tensor in weights:
        target = plan[name]
        arrived = pending.setdefault(target.param, {})
        arrived[name] = tensor
        if len(arrived) < len(target.parts):
            continue
        del pending[target.param]
        ordered = [arrived[part] for part in target.parts]
        if target.packed:
            module = modules[target.module]
            value = ordered[0] if len(ordered) == 1 else torch.cat(ordered)
            module.weight = torch.nn.Parameter(value.to(dtype), requires_grad=False)
            module.quant_method.process_weights_after_loading(module)
            # A backend that fell back to a plain matmul keeps the weight: never the student's own.
            if module.weight.numel() and module.weight.data_ptr() in {t.data_ptr() for t in ordered}:
                module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=False)
        else:
            param = params[target.param]
            if target.rows is not None:  # as vLLM's embedding loader: the padding rows are zeros
                param[: target.rows].copy_(ordered[0].view(target.rows, -1))
                param[target.rows :].zero_()
            else:
                param.copy_((ordered[0] if len(ordered) == 1 else torch.cat(ordered)).view_as(param))
            copied.add(target.module)
    if pending:
        raise RuntimeError(f"the sync left {sorted(pending)[:3]} incomplete")
    # A module the backend also packs (an embedding that serves as the LM head) is packed again.
    for name in copied:
        if hasattr(modules[name], "cpu_linear"):
            modules[name].quant_method.process_weights_after_loading(modules[name])


def released_linear(*args: Any) -> Any:
    raise RuntimeError("the vLLM engine's weights were released after the last rollout; sync them first")


def release_cpu_weights(worker: Any, names: Sequence[str]) -> dict[str, int]:
    """Free the engine's weights between rollouts; returns the bytes of each freed storage.

    Linear layers keep their weights only inside the GEMM handler the CPU backend packed them into:
    dropping the handler frees them, and the next sync re-runs the packing. The other tensors the
    sync refills (`names`, checkpoint names: the embedding, the norms) keep their shape with their
    storage resized to zero, so the sync's in-place copy finds them once `restore_cpu_weights`
    has resized them back. Tensors the sync does not refill stay as they are.
    """
    model = worker.model_runner.get_model()
    for module in model.modules():
        if hasattr(module, "cpu_linear"):
            module.cpu_linear = released_linear
    params = dict(model.named_parameters())
    sizes: dict[str, int] = {}
    for name in names:
        param = params.get(name)
        storage = None if param is None else param.untyped_storage()
        if storage is not None and storage.nbytes() > 0:  # a tied tensor's storage is freed once
            sizes[name] = storage.nbytes()
            storage.resize_(0)
    return sizes


def restore_cpu_weights(worker: Any, sizes: Mapping[str, int]) -> None:
    """Give the storages `release_cpu_weights` freed their size back (contents undefined until the
    sync that follows overwrites them)."""
    params = dict(worker.model_runner.get_model().named_parameters())
    for name, size in sizes.items():
        params[name].untyped_storage().resize_(size)
