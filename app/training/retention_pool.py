"""The retention prompt pool: what the retention methods distil the parent's behaviour on.

The pool is the lineage's earlier training prompts plus the general prompts shipped in
`data/general_prompts.jsonl`, deduplicated, and never a prompt of a regression suite: the gate's test
sets must stay unseen. Prompts are compared by `prompt_key`, a hash of the chat messages with case and
whitespace normalized, so a suite prompt cannot slip in with different spacing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

Messages = Sequence[Mapping[str, str]]
GENERAL_PROMPTS_FILE = "general_prompts.jsonl"


def prompt_key(messages: Messages) -> str:
    """sha256 of the conversation with each message's role and case- and whitespace-normalized text."""
    canonical = [[m["role"], " ".join(m["content"].casefold().split())] for m in messages]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode()).hexdigest()


def general_prompts() -> list[list[dict[str, str]]]:
    """The shipped general prompts, each as a single user turn."""
    text = resources.files("app.training.data").joinpath(GENERAL_PROMPTS_FILE).read_text(encoding="utf-8")
    return [
        [{"role": "user", "content": json.loads(line)["prompt"]}]
        for line in text.splitlines()
        if line.strip()
    ]


@dataclass(frozen=True)
class RetentionPool:
    prompts: tuple[tuple[dict[str, str], ...], ...]
    excluded: int  # prompts dropped because a suite holds them

    def to_messages(self) -> list[list[dict[str, str]]]:
        return [list(prompt) for prompt in self.prompts]


def build_retention_pool(
    earlier_prompts: Iterable[Messages],
    suite_prompts: Iterable[Messages],
    *,
    shipped: Iterable[Messages] | None = None,
) -> RetentionPool:
    """Earlier training prompts first, then the shipped general prompts; duplicates and every prompt
    that any suite holds are dropped."""
    forbidden = {prompt_key(p) for p in suite_prompts}
    seen: set[str] = set()
    kept: list[tuple[dict[str, str], ...]] = []
    excluded = 0
    for prompt in [*earlier_prompts, *(general_prompts() if shipped is None else shipped)]:
        key = prompt_key(prompt)
        if key in forbidden:
            excluded += 1
            continue
        if key not in seen:
            seen.add(key)
            kept.append(tuple({"role": m["role"], "content": m["content"]} for m in prompt))
    assert_disjoint(kept, forbidden)
    return RetentionPool(tuple(kept), excluded)


def assert_disjoint(pool: Iterable[Messages], forbidden_keys: set[str]) -> None:
    """Raise if any pool prompt is a suite prompt (a guard on the builder, and a check for tests)."""
    leaked = [p for p in pool if prompt_key(p) in forbidden_keys]
    if leaked:
        raise ValueError(f"{len(leaked)} retention prompt(s) are regression-suite prompts")
