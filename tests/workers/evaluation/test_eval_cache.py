"""The evaluation cache: the key, atomic files, hits that skip the backend, and what is never cached."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import workers.evaluation.cache as cache_module
from app.evaluation.results import ItemRecord, SuiteResult, effective_decoding, eval_cache_key
from app.evaluation.suites import DecodingConfig, EvalSuite, SuiteMeta, parse_suite_jsonl
from workers.evaluation.cache import EvalCache, evaluate_cached, evaluate_model_dir, suite_cache_key
from workers.models.loading import load_model, load_tokenizer
from workers.models.placement import default_placement
from workers.rollout.base import Completion, SamplingParams
from workers.rollout.hf_generate import TransformersBackend

MODEL_SHA = "1" * 64
GREEDY = {"greedy": True, "max_new_tokens": 8, "temperature": 0.0}


def make_suite(name: str = "s", max_new_tokens: int = 6) -> EvalSuite:
    rows = [{"id": f"q{i}", "prompt": f"What is {i} plus {i}?", "reference": str(2 * i)} for i in range(4)]
    meta = SuiteMeta(name=name, decoding=DecodingConfig(max_new_tokens=max_new_tokens))
    return parse_suite_jsonl("\n".join(json.dumps(row) for row in rows), meta)


def sample_result(scores: Sequence[float | None] = (1.0, 0.0, None)) -> SuiteResult:
    records = [
        ItemRecord(f"i{i}", "out", score, error=None if score is not None else "boom")
        for i, score in enumerate(scores)
    ]
    return SuiteResult.from_records(
        suite_name="s", suite_sha256="2" * 64, decoding={**GREEDY, "engine": "transformers"}, records=records
    )


# --------------------------------------------------------------------------- key and results


def test_the_key_changes_with_each_part_and_nothing_else() -> None:
    key = eval_cache_key(MODEL_SHA, "2" * 64, GREEDY)
    assert len(key) == 64 and key == eval_cache_key(MODEL_SHA, "2" * 64, dict(reversed(GREEDY.items())))
    assert key != eval_cache_key("3" * 64, "2" * 64, GREEDY)
    assert key != eval_cache_key(MODEL_SHA, "3" * 64, GREEDY)
    assert key != eval_cache_key(MODEL_SHA, "2" * 64, {**GREEDY, "max_new_tokens": 9})


def test_effective_decoding_adds_seed_only_where_it_matters() -> None:
    greedy = effective_decoding(GREEDY, engine="transformers", seed=5, batch_size=3)
    assert greedy == {**GREEDY, "engine": "transformers"}
    sampled = {"greedy": False, "max_new_tokens": 8, "temperature": 1.0}
    assert effective_decoding(sampled, engine="vllm", seed=5, batch_size=3) == {
        **sampled,
        "engine": "vllm",
        "seed": 5,
        "batch_size": 3,
    }
    with_kwargs = effective_decoding(GREEDY, engine="vllm", chat_template_kwargs={"enable_thinking": False})
    assert with_kwargs["chat_template_kwargs"] == {"enable_thinking": False}
    suite = make_suite()
    assert suite_cache_key(MODEL_SHA, suite, engine="transformers", seed=1) == suite_cache_key(
        MODEL_SHA, suite, engine="transformers", seed=2
    )
    assert suite_cache_key(MODEL_SHA, suite, engine="transformers") != suite_cache_key(
        MODEL_SHA, suite, engine="vllm"
    )


def test_suite_result_summary_round_trip_and_validation() -> None:
    result = sample_result()
    assert (result.n, result.failures) == (3, 1)
    assert result.score == pytest.approx(100 / 3)  # the failed item counts as 0
    assert result.ci_low <= result.score <= result.ci_high
    assert result.item_scores() == {"i0": 1.0, "i1": 0.0, "i2": None}
    assert result.suite_score().score == result.score
    assert SuiteResult.from_dict(json.loads(result.to_json())) == result
    tampered = {**result.to_dict(), "failures": 0}
    with pytest.raises(ValueError, match="failures"):
        SuiteResult.from_dict(tampered)
    with pytest.raises(ValueError, match="format"):
        SuiteResult.from_dict({**result.to_dict(), "format": "other/9"})
    with pytest.raises(ValueError, match="no score and no error"):
        ItemRecord("x", "", None)


# --------------------------------------------------------------------------- files


def test_put_get_round_trip_is_atomic_and_tolerates_damage(tmp_path: Path) -> None:
    cache = EvalCache(tmp_path / "cache")
    key = eval_cache_key(MODEL_SHA, "2" * 64, GREEDY)
    assert cache.get(key) is None
    result = sample_result()
    path = cache.put(key, result)
    assert path == tmp_path / "cache" / f"{key}.json"
    assert cache.get(key) == result
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{key}.json"], "no temporary files left"

    path.write_text('{"format": "suite-result/1", "score": ')  # a torn or hand-edited file
    with pytest.warns(UserWarning, match="unreadable cached evaluation"):
        assert cache.get(key) is None
    path.write_text("[1, 2]")
    with pytest.warns(UserWarning, match="format='list'"):
        assert cache.get(key) is None
    cache.put(key, result)
    assert cache.get(key) == result
    with pytest.raises(ValueError, match="sha256"):
        cache.get("../../etc/passwd")


# --------------------------------------------------------------------------- evaluate_cached


class CountingBackend(TransformersBackend):
    """The real backend, counting generate calls."""

    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.fail = fail

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("engine died")
        return super().generate(prompts, params)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> tuple[Any, Any]:
    placement = default_placement("cpu")
    return load_tokenizer(tiny_model_dir), load_model(tiny_model_dir, placement)


def test_a_hit_never_calls_the_backend(tmp_path: Path, loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    backend = CountingBackend(model, int(tokenizer.pad_token_id), default_placement("cpu"))
    suite = make_suite()
    first = evaluate_cached(EvalCache(tmp_path), backend, tokenizer, suite, model_sha256=MODEL_SHA)
    assert backend.calls == 1 and first.model_sha256 == MODEL_SHA
    again = evaluate_cached(EvalCache(tmp_path), backend, tokenizer, suite, model_sha256=MODEL_SHA)
    assert backend.calls == 1, "the cached parent must not be re-scored"
    assert again == first
    evaluate_cached(EvalCache(tmp_path), backend, tokenizer, suite, model_sha256="4" * 64)
    assert backend.calls == 2, "another checkpoint is another evaluation"
    evaluate_cached(
        EvalCache(tmp_path), backend, tokenizer, make_suite(max_new_tokens=7), model_sha256=MODEL_SHA
    )
    assert backend.calls == 3, "other decoding is another evaluation"


def test_transient_failures_are_not_cached(tmp_path: Path, loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    broken = CountingBackend(model, int(tokenizer.pad_token_id), default_placement("cpu"), fail=True)
    result = evaluate_cached(EvalCache(tmp_path), broken, tokenizer, make_suite(), model_sha256=MODEL_SHA)
    assert result.failures == 4 and result.has_transient_failures
    assert list(tmp_path.iterdir()) == []
    healthy = CountingBackend(model, int(tokenizer.pad_token_id), default_placement("cpu"))
    assert (
        evaluate_cached(
            EvalCache(tmp_path), healthy, tokenizer, make_suite(), model_sha256=MODEL_SHA
        ).failures
        == 0
    )
    assert healthy.calls == 1


def test_model_dir_evaluation_loads_no_model_when_everything_is_cached(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suites = [make_suite("a"), make_suite("b", max_new_tokens=5)]
    cache = EvalCache(tmp_path)
    first = evaluate_model_dir(tiny_model_dir, suites, cache=cache)
    assert first.cached == (False, False) and len(list(tmp_path.iterdir())) == 2

    def no_loading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fully cached evaluation must not load the model")

    monkeypatch.setattr(cache_module, "load_model", no_loading)
    monkeypatch.setattr(cache_module, "load_tokenizer", no_loading)
    second = evaluate_model_dir(tiny_model_dir, suites, cache=cache)
    assert second.cached == (True, True)
    assert second.results == first.results
    assert second.model_sha256 == first.model_sha256 == first.results[0].model_sha256
