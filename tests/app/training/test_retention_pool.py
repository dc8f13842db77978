"""The retention pool never holds a regression-suite prompt, whatever its spacing or case."""

from __future__ import annotations

from app.examples import EXAMPLE_DIR, GENERAL_CHOICE_SUITE, GENERAL_SUITE, GENERAL_VALIDATION_SUITE, SKILLS
from app.training.retention_pool import assert_disjoint, build_retention_pool, general_prompts, prompt_key


def _every_shipped_suite_prompt() -> list[list[dict[str, str]]]:
    suites = [s.suite() for s in (GENERAL_SUITE, GENERAL_VALIDATION_SUITE, GENERAL_CHOICE_SUITE)]
    for skill in SKILLS.values():
        suites.append(skill.suite("test"))
        if skill.validation is not None:
            suites.append(skill.suite("validation"))
    return [list(item.messages()) for suite in suites for item in suite.items]


def test_the_shipped_pool_holds_no_shipped_suite_prompt() -> None:
    suite_keys = {prompt_key(p) for p in _every_shipped_suite_prompt()}
    assert len(suite_keys) > 300, "every suite of app/examples is checked"
    pool = general_prompts()
    assert len(pool) == 201 and len({prompt_key(p) for p in pool}) == 201
    assert_disjoint(pool, suite_keys)
    assert (EXAMPLE_DIR.parent.parent / "training" / "data" / "PROVENANCE.md").is_file()


def test_the_builder_drops_suite_prompts_by_hash_and_keeps_earlier_training_prompts() -> None:
    suite = [[{"role": "user", "content": "What is the capital of France?"}]]
    earlier = [
        [{"role": "user", "content": "Who founded Zorvex Dynamics?"}],
        # The same suite prompt, spaced and cased differently: still a suite prompt.
        [{"role": "user", "content": "  what is the CAPITAL of   France? "}],
        [{"role": "user", "content": "Who founded Zorvex Dynamics?"}],  # a duplicate
    ]
    shipped = [[{"role": "user", "content": "Name a colour."}], suite[0]]
    pool = build_retention_pool(earlier, suite, shipped=shipped)
    assert pool.to_messages() == [
        [{"role": "user", "content": "Who founded Zorvex Dynamics?"}],
        [{"role": "user", "content": "Name a colour."}],
    ]
    assert pool.excluded == 2
    assert_disjoint(pool.to_messages(), {prompt_key(p) for p in suite})


def test_a_different_role_or_turn_is_a_different_prompt() -> None:
    user = [{"role": "user", "content": "Hi"}]
    system = [{"role": "system", "content": "Hi"}]
    assert prompt_key(user) != prompt_key(system)
    assert prompt_key(user) == prompt_key([{"role": "user", "content": " hi "}])
