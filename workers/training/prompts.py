"""Student and teacher prompts, tokenized once per dataset, with every length problem reported up front.

The student sees the query; the teacher sees the same chat with the last user turn wrapped in the
teacher template around the demonstration. Both use the same chat template and kwargs, so the
completion ids follow an identical assistant prefix in both. The teacher prompt is never cut from
the left (the truncation bug in other implementations silently dropped the question).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from app.contracts.demonstrations import DatasetError, Demonstration, RowProblem
from app.training.stage_config import StageConfig
from workers.models.chat import ChatRenderer

SHORTENED_MARKER = "\n[...]\n"


@dataclass(frozen=True)
class PreparedExample:
    row: Demonstration
    student_prompt_ids: tuple[int, ...]
    teacher_prompt_ids: tuple[int, ...]
    demonstration_ids: tuple[int, ...]  # the SFT target: the demonstration followed by the stop token
    demonstration_shortened: bool = False


def teacher_messages(
    row: Demonstration, template: str, demonstration: str | None = None
) -> list[dict[str, str]]:
    """The query with its last user turn wrapped in the teacher template; system messages kept."""
    messages = row.query_dicts()
    last = messages[-1]
    filled = template.format(question=last["content"], demonstration=demonstration or row.demonstration)
    return [*messages[:-1], {"role": "user", "content": filled}]


def _shorten_middle(
    renderer: ChatRenderer, row: Demonstration, config: StageConfig
) -> tuple[list[int], str] | None:
    """Cut tokens from the middle of the demonstration until the teacher prompt fits (or give up)."""
    demo_ids = renderer.text_ids(row.demonstration)
    overflow = (
        len(renderer.prompt_ids(teacher_messages(row, config.teacher_template)))
        - config.max_teacher_prompt_tokens
    )
    cut = overflow + len(renderer.text_ids(SHORTENED_MARKER)) + 2
    while cut < len(demo_ids):
        keep_head = (len(demo_ids) - cut) // 2
        keep_tail = len(demo_ids) - cut - keep_head
        head = str(renderer.tokenizer.decode(demo_ids[:keep_head]))
        tail = str(renderer.tokenizer.decode(demo_ids[len(demo_ids) - keep_tail :]))
        text = head + SHORTENED_MARKER + tail
        ids = renderer.prompt_ids(teacher_messages(row, config.teacher_template, text))
        if len(ids) <= config.max_teacher_prompt_tokens:
            return ids, text
        cut += len(ids) - config.max_teacher_prompt_tokens
    return None


def prepare_examples(
    rows: Sequence[Demonstration], tokenizer: PreTrainedTokenizerBase, config: StageConfig, stop_token_id: int
) -> list[PreparedExample]:
    """Tokenize every row for both roles; raise DatasetError listing every row that does not fit."""
    renderer = ChatRenderer(tokenizer, config.chat_template_kwargs)
    problems: list[RowProblem] = []
    examples: list[PreparedExample] = []
    for row in rows:
        try:
            student = renderer.prompt_ids(row.query_dicts())
            teacher = renderer.prompt_ids(teacher_messages(row, config.teacher_template))
        except Exception as exc:  # a chat template may reject a conversation shape (e.g. no system role)
            problems.append(RowProblem(row.line, "prompt", f"the chat template failed: {exc}"))
            continue
        if len(student) > config.max_prompt_tokens:
            problems.append(
                RowProblem(
                    row.line,
                    "prompt",
                    f"{len(student)} tokens, over max_prompt_tokens={config.max_prompt_tokens}",
                )
            )
            continue
        shortened = False
        if len(teacher) > config.max_teacher_prompt_tokens:
            fitted = (
                _shorten_middle(renderer, row, config)
                if config.teacher_overflow == "shorten_demonstration"
                else None
            )
            if fitted is None:
                problems.append(
                    RowProblem(
                        row.line,
                        "demonstration",
                        f"the teacher prompt is {len(teacher)} tokens, over max_teacher_prompt_tokens="
                        f"{config.max_teacher_prompt_tokens}; it is never truncated (raise the limit, "
                        "shorten the demonstration, or set teacher_overflow=shorten_demonstration)",
                    )
                )
                continue
            teacher, shortened = fitted[0], True
        demonstration = [*renderer.text_ids(row.demonstration), stop_token_id]
        examples.append(PreparedExample(row, tuple(student), tuple(teacher), tuple(demonstration), shortened))
    if problems:
        raise DatasetError(problems)
    return examples
