"""The words a job's events and errors say to the person who runs it, in one place."""

from __future__ import annotations

from pathlib import Path


def stage_title(index: int, total: int, skill: str) -> str:
    return f"stage {index + 1}/{total} ({skill})"


def training(index: int, total: int, skill: str, method: str) -> str:
    return f"{stage_title(index, total, skill)}: training with {method}"


def method_chosen(index: int, total: int, skill: str, reason: str) -> str:
    return f"{stage_title(index, total, skill)}: method auto chose {reason}"


def probing(index: int, total: int) -> str:
    return f"stage {index + 1}/{total}: teacher readiness probe"


def step(index: int, total: int, skill: str, done: int, steps: int) -> str:
    return f"{stage_title(index, total, skill)} step {done}/{steps}"


def leaking(index: int, total: int, step: int, fraction: float) -> str:
    return (
        f"stage {index + 1}/{total} step {step}: {fraction:.0%} of the rollouts contain teacher-template "
        "phrases (the student is copying the teacher's scaffolding); a frozen teacher, a template without "
        "that wording, or method 'sft_retain' avoid it"
    )


def server_base_mismatch(index: int, total: int, parent_id: str) -> str:
    return (
        f"stage {index + 1}/{total}: the vLLM rollout server serves the base model, but this stage starts "
        f"from {parent_id}, a trained version; its adapters would be applied to other weights, so this "
        "stage samples its rollouts with transformers.generate"
    )


def weights_missing(version_id: str, uri: str) -> str:
    return (
        f"the weights of {version_id} ({uri}) are not on this worker; mount the storage directory the API "
        "uses"
    )


def teacher_not_ready(message: str) -> str:
    return f"{message} (set hyperparameters.readiness_probe to 'warn' to train anyway)"


def out_of_memory(index: int, error: BaseException) -> str:
    return (
        f"out of memory while training stage {index}: {error}; lower batch_size, micro_batch_size or "
        "max_new_tokens, or use LoRA"
    )


def evaluating(index: int, total: int, suites: int) -> str:
    return f"stage {index + 1}/{total}: evaluating on {suites} suite(s)"


def evaluated(version_id: str, suite: str, items: int) -> str:
    return f"evaluated {version_id} on {suite} ({items} items)"


def verdict(index: int, total: int, skill: str, decision: str, reason: str) -> str:
    return f"{stage_title(index, total, skill)}: {decision}: {reason}"


def promoted(alias: str, version_id: str) -> str:
    return f"alias {alias} -> {version_id}"


def promotion_skipped(alias: str, expected: str | None, found: str | None, version_id: str) -> str:
    was = expected or "unset"
    now = found or "unset"
    return (
        f"auto_promote of {alias} skipped: it pointed at {was} when the job was created and points at {now} "
        f"now; {version_id} is registered and accepted, promote it yourself if you want it there"
    )


def promotion_cancelled(alias: str) -> str:
    return f"auto_promote of {alias} skipped: the job was cancelled before it could finish"


def resumed(worker_id: str, status: str) -> str:
    return f"resumed by {worker_id} ({status})"


def training_stopped(reason: object) -> str:
    return f"training stopped: {reason}"


def evaluation_stopped(reason: object) -> str:
    return f"evaluation stopped: {reason}"


def checkpoint_dir(path: Path) -> str:
    return f"checkpoint kept at {path}"


def too_many_deliveries(count: int) -> str:
    return (
        f"the job's task was delivered {count} times without finishing (its worker keeps dying, e.g. "
        "killed for memory); giving up: lower batch_size, micro_batch_size or max_new_tokens, or use LoRA"
    )
