"""Teacher and student prompts: same chat template, system kept, the teacher never truncated."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.contracts.demonstrations import DatasetError, parse_demonstrations
from app.training.stage_config import StageConfig
from workers.models.chat import ChatRenderer
from workers.models.loading import load_tokenizer
from workers.training.prompts import SHORTENED_MARKER, prepare_examples, teacher_messages

ROW = (
    '{"messages": [{"role": "system", "content": "Answer in French."}, '
    '{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Bleu."}]}'
)


def test_teacher_wraps_the_last_user_turn_and_keeps_the_system_message() -> None:
    row = parse_demonstrations(ROW)[0]
    messages = teacher_messages(row, StageConfig().teacher_template)
    assert messages[0] == {"role": "system", "content": "Answer in French."}
    content = messages[1]["content"]
    question_at = content.index("What colour is the sky?")
    example_at = content.index("This is an example for a response to the question:")
    demo_at = content.index("Bleu.")
    own_at = content.index("Now answer with a response of your own, including the thinking process.")
    assert question_at < example_at < demo_at < own_at


def test_student_and_teacher_prompts_share_the_template_and_end_in_the_assistant_prefix(
    tiny_model_dir: Path,
) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    row = parse_demonstrations(ROW)[0]
    [example] = prepare_examples([row], tokenizer, StageConfig(), int(tokenizer.eos_token_id))
    student = tokenizer.decode(example.student_prompt_ids)
    teacher = tokenizer.decode(example.teacher_prompt_ids)
    prefix = "<|im_start|>assistant\n"
    assert student.endswith(prefix) and teacher.endswith(prefix)
    assert student.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
    assert teacher.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
    assert "Bleu." not in student and "Bleu." in teacher
    assert example.demonstration_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.demonstration_ids[:-1]) == "Bleu."


def test_template_kwargs_reach_both_roles(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = "{% if shout %}LOUD {% endif %}" + tokenizer.chat_template
    row = parse_demonstrations(ROW)[0]
    [example] = prepare_examples([row], tokenizer, StageConfig(chat_template_kwargs={"shout": True}), 2)
    assert tokenizer.decode(example.student_prompt_ids).startswith("LOUD ")
    assert tokenizer.decode(example.teacher_prompt_ids).startswith("LOUD ")


def _long_rows() -> list:
    demo = " ".join(f"step {i} of the derivation" for i in range(200))
    return parse_demonstrations(
        '{"prompt": "short question?", "demonstration": "ok"}\n'
        + '{"prompt": "What is the answer to the long one?", "demonstration": "'
        + demo
        + '"}\n'
    )


def test_a_teacher_prompt_that_does_not_fit_fails_its_row_never_truncates(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    config = StageConfig(max_teacher_prompt_tokens=300)
    with pytest.raises(DatasetError) as info:
        prepare_examples(_long_rows(), tokenizer, config, 2)
    [problem] = info.value.problems
    assert problem.line == 2 and problem.field == "demonstration"
    assert "never truncated" in problem.reason


def test_shortening_cuts_the_demonstrations_middle_and_keeps_the_question(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    config = StageConfig(max_teacher_prompt_tokens=300, teacher_overflow="shorten_demonstration")
    examples = prepare_examples(_long_rows(), tokenizer, config, 2)
    long = examples[1]
    assert long.demonstration_shortened and len(long.teacher_prompt_ids) <= 300
    text = tokenizer.decode(long.teacher_prompt_ids)
    assert "What is the answer to the long one?" in text
    assert "step 0 of" in text and "step 199 of" in text and SHORTENED_MARKER.strip() in text
    # The SFT target is the whole demonstration, never shortened.
    assert "step 100 of" in tokenizer.decode(long.demonstration_ids)


def test_a_student_prompt_over_the_limit_is_reported_with_its_line(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    with pytest.raises(DatasetError) as info:
        prepare_examples(_long_rows(), tokenizer, StageConfig(max_prompt_tokens=10), 2)
    assert {p.line for p in info.value.problems} == {1, 2}
    assert all(p.field == "prompt" for p in info.value.problems)


def test_renderer_round_trips_text(tiny_model_dir: Path) -> None:
    renderer = ChatRenderer(load_tokenizer(tiny_model_dir))
    ids = renderer.prompt_ids([{"role": "user", "content": "hi"}])
    assert renderer.tokenizer.decode(ids).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
