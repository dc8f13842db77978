"""Evaluation results cached by (model checkpoint sha, suite sha, effective decoding): one concept,
`ScoreCache`, with two stores. `EvalCache` keeps one JSON file per key (the CLI and the experiment);
the job pipeline records scores in the registry (workers/jobs/scores.py). A parent model is scored
once per suite and decoding, then every gate against it reuses the result.

The file store writes atomically (temp file + fsync + rename), so a crash never leaves a half-written
result that a later run would trust. Results with transient failures (the backend or model raised)
are not cached: a retry may succeed, and a cached failure would count against a model forever.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase

from app.contracts.artifacts import model_dir_sha256
from app.contracts.rollout_settings import RolloutSettings
from app.evaluation.results import SuiteResult, effective_decoding, eval_cache_key
from app.evaluation.suites import EvalSuite
from workers.evaluation.engine import generation_shape, make_eval_backend
from workers.evaluation.runner import evaluate_suite
from workers.models.loading import load_model, load_tokenizer, model_dir_context_length, stop_token_ids
from workers.models.placement import Placement, default_placement
from workers.rollout.base import RolloutBackend

_KEY = re.compile(r"^[0-9a-f]{64}$")


class ScoreCache(Protocol):
    """Where evaluation results are kept, by (checkpoint sha, suite, effective decoding)."""

    def lookup(
        self, model_sha256: str, suite: EvalSuite, decoding: Mapping[str, Any]
    ) -> SuiteResult | None: ...

    def store(
        self, model_sha256: str, suite: EvalSuite, decoding: Mapping[str, Any], result: SuiteResult
    ) -> None: ...


class EvalCache:
    """File-based result cache: `<root>/<key>.json` holding SuiteResult.to_dict()."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def lookup(self, model_sha256: str, suite: EvalSuite, decoding: Mapping[str, Any]) -> SuiteResult | None:
        return _usable_hit(self.get(eval_cache_key(model_sha256, suite.sha256, decoding)), suite)

    def store(
        self, model_sha256: str, suite: EvalSuite, decoding: Mapping[str, Any], result: SuiteResult
    ) -> None:
        self.put(eval_cache_key(model_sha256, suite.sha256, decoding), result)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"cache keys are sha256 hex digests, got {key!r}")
        return self.root / f"{key}.json"

    def get(self, key: str) -> SuiteResult | None:
        """The stored result, or None when absent or unreadable (an unreadable file is a miss, warned)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return SuiteResult.from_dict(json.loads(text))
        except ValueError as error:
            warnings.warn(f"ignoring unreadable cached evaluation {path}: {error}", stacklevel=2)
            return None

    def put(self, key: str, result: SuiteResult) -> Path:
        path = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(dir=self.root, prefix=f".{key[:12]}.", suffix=".tmp")
        temporary = Path(name)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(result.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)  # atomic: readers see the old file or the whole new one
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return path


def effective_suite_decoding(
    suite: EvalSuite,
    *,
    engine: str,
    seed: int = 0,
    batch_size: int = 16,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The decoding an evaluation of `suite` runs with on this engine (see effective_decoding)."""
    return effective_decoding(
        suite.meta.decoding.model_dump(mode="json"),
        engine=engine,
        seed=seed,
        batch_size=batch_size,
        chat_template_kwargs=chat_template_kwargs,
    )


def suite_cache_key(
    model_sha256: str,
    suite: EvalSuite,
    *,
    engine: str,
    seed: int = 0,
    batch_size: int = 16,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The file cache's key of evaluating `suite` on a checkpoint with these settings."""
    decoding = effective_suite_decoding(
        suite, engine=engine, seed=seed, batch_size=batch_size, chat_template_kwargs=chat_template_kwargs
    )
    return eval_cache_key(model_sha256, suite.sha256, decoding)


def _usable_hit(hit: SuiteResult | None, suite: EvalSuite) -> SuiteResult | None:
    # A hit for other content under the same key would mean a corrupted or hand-edited cache.
    return hit if hit is not None and hit.suite_sha256 == suite.sha256 else None


def evaluate_cached(
    cache: ScoreCache,
    backend: RolloutBackend,
    tokenizer: PreTrainedTokenizerBase,
    suite: EvalSuite,
    *,
    model_sha256: str,
    **settings: Any,
) -> SuiteResult:
    """The cached result for (model_sha256, suite, decoding on this backend) if there is one, else
    `evaluate_suite(backend, tokenizer, suite, **settings)` stamped with model_sha256 and stored
    (unless it had transient failures)."""
    decoding = effective_suite_decoding(
        suite,
        engine=backend.name,
        seed=settings.get("seed", 0),
        batch_size=settings.get("batch_size", 16),
        chat_template_kwargs=settings.get("chat_template_kwargs"),
    )
    hit = cache.lookup(model_sha256, suite, decoding)
    if hit is not None:
        return hit
    result = replace(evaluate_suite(backend, tokenizer, suite, **settings), model_sha256=model_sha256)
    if not result.has_transient_failures:
        cache.store(model_sha256, suite, decoding, result)
    return result


@dataclass(frozen=True)
class ModelEvaluation:
    """Every requested suite's result for one model directory; cached[i] says results[i] was reused.
    `engine` generated the rest: the one asked for, or transformers when a vLLM engine did not start
    (None: everything came from the cache)."""

    model_dir: Path
    model_sha256: str
    results: tuple[SuiteResult, ...]
    cached: tuple[bool, ...]
    engine: str | None = None


def evaluate_model_dir(
    model_dir: str | Path,
    suites: Sequence[EvalSuite],
    *,
    backend_kind: str = "transformers",
    cache: ScoreCache | None = None,
    seed: int = 0,
    batch_size: int = 16,
    placement: Placement | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    rollout: RolloutSettings | None = None,
) -> ModelEvaluation:
    """Evaluate a local model directory on every suite, through the cache when one is given.

    The model is loaded only when some suite is not cached, so re-gating against a scored parent
    costs one hash of its files. The transformers weights are loaded for the transformers backend, or
    for scoring choice items under vLLM. progress(suite name, done, total) follows each suite.
    """
    root = Path(model_dir)
    sha = model_dir_sha256(root)
    results: list[SuiteResult | None] = [None] * len(suites)
    if cache is not None:
        for index, suite in enumerate(suites):
            decoding = effective_suite_decoding(
                suite,
                engine=backend_kind,
                seed=seed,
                batch_size=batch_size,
                chat_template_kwargs=chat_template_kwargs,
            )
            results[index] = cache.lookup(sha, suite, decoding)
    cached = tuple(result is not None for result in results)
    missing = [index for index, result in enumerate(results) if result is None]
    engine = None
    if missing:
        placement = placement or default_placement()
        tokenizer = load_tokenizer(root)
        needs_weights = backend_kind == "transformers" or any(
            item.grader == "choice" for index in missing for item in suites[index].items
        )
        model = load_model(root, placement) if needs_weights else None
        context_length = model_dir_context_length(root)
        shape = generation_shape(
            [suites[index] for index in missing],
            tokenizer,
            batch_size=batch_size,
            chat_template_kwargs=chat_template_kwargs,
            context_length=context_length,
        )
        backend = make_eval_backend(
            backend_kind,
            root,
            model=model,
            tokenizer=tokenizer,
            placement=placement,
            batch_size=batch_size,
            rollout=rollout,
            shape=shape,
        )
        engine = backend.name
        settings: dict[str, Any] = {
            "seed": seed,
            "batch_size": batch_size,
            "model_for_choice": model,
            "placement": placement,
            "chat_template_kwargs": chat_template_kwargs,
            "stop_ids": stop_token_ids(tokenizer, root),
            "context_length": context_length,
        }
        try:
            for index in missing:
                suite = suites[index]
                report = None if progress is None else partial(progress, suite.meta.name)
                if cache is None:
                    result = evaluate_suite(backend, tokenizer, suite, progress=report, **settings)
                    results[index] = replace(result, model_sha256=sha)
                else:
                    results[index] = evaluate_cached(
                        cache, backend, tokenizer, suite, model_sha256=sha, progress=report, **settings
                    )
        finally:
            backend.close()
    return ModelEvaluation(
        model_dir=root,
        model_sha256=sha,
        results=tuple(result for result in results if result is not None),
        cached=cached,
        engine=engine,
    )
