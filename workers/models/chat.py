"""Chat rendering: messages -> token ids with the model's own chat template, the same way for training
prompts (student and teacher), rollouts and evaluation, so every part sees identical prefixes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase


class ChatRenderer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, template_kwargs: dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.template_kwargs = dict(template_kwargs or {})

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=False, **self.template_kwargs
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id (EOS when the tokenizer has none; padded positions are masked anyway)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def decode_text(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """Completion text as graders see it: special tokens (the stop token) left out. NUL characters
    become U+FFFD: PostgreSQL cannot store them in text or JSONB, and no grader relies on them."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    assert isinstance(text, str)
    return text.replace("\x00", "\ufffd")
