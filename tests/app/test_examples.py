"""Built-in example data: every file parses, held-out questions differ, graders accept the answers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from app import examples
from app.contracts.demonstrations import parse_demonstrations
from app.evaluation.graders import grade, normalize_text
from app.evaluation.suites import EvalSuite
from app.examples import generate

DATA = examples.EXAMPLE_DIR
EXPERIMENT = [examples.SKILLS[name] for name in examples.EXPERIMENT_STAGES]


def _suites(skill: examples.SkillData) -> list[EvalSuite]:
    splits: list[examples.Split] = ["test"] if skill.validation is None else ["validation", "test"]
    return [skill.suite(split) for split in splits]


def _question(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))


# --------------------------------------------------------------------------- registry


def test_registry_files_exist_and_parse() -> None:
    assert set(examples.EXPERIMENT_STAGES) <= set(examples.SKILLS)
    assert set(examples.DEMO_STAGES) <= set(examples.SKILLS)
    for name, skill in examples.SKILLS.items():
        assert skill.name == name
        for file in skill.files():
            assert (DATA / file).is_file(), file
        assert skill.demonstrations()
        for suite in _suites(skill):
            assert len(suite) > 0
            assert suite.meta.grader == skill.grader
    for general in (examples.GENERAL_SUITE, examples.GENERAL_CHOICE_SUITE, examples.GENERAL_VALIDATION_SUITE):
        assert (DATA / general.file).is_file()
        assert len(general.suite()) > 0


def test_every_shipped_jsonl_is_generated_and_registered() -> None:
    registered = {file for skill in examples.SKILLS.values() for file in skill.files()}
    registered |= {examples.GENERAL_SUITE.file, examples.GENERAL_CHOICE_SUITE.file, generate.TOOLALPACA_FILE}
    registered |= {examples.GENERAL_VALIDATION_SUITE.file}
    assert {path.name for path in DATA.glob("*.jsonl")} == registered
    assert (DATA / "PROVENANCE.md").is_file()
    assert (DATA / "__init__.py").is_file()


def test_validation_suite_is_named_apart_from_test_suite() -> None:
    skill = examples.SKILLS["knowledge"]
    assert skill.suite("test").meta.name == "knowledge"
    assert skill.suite("validation").meta.name == "knowledge-val"
    with pytest.raises(ValueError, match="no validation split"):
        examples.SKILLS["format-demo"].suite("validation")


def test_load_text_rejects_paths() -> None:
    with pytest.raises(ValueError):
        examples.load_text("../__init__.py")
    with pytest.raises(FileNotFoundError):
        examples.load_text("missing.jsonl")


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("knowledge_train.jsonl", 40),
        ("knowledge_val.jsonl", 40),
        ("knowledge_test.jsonl", 40),
        ("format_train.jsonl", 40),
        ("format_val.jsonl", 20),
        ("format_test.jsonl", 40),
        ("general.jsonl", 80),
        ("format_demo_train.jsonl", 12),
        ("format_demo_test.jsonl", 12),
        ("knowledge_demo_train.jsonl", 8),
        ("knowledge_demo_test.jsonl", 8),
        ("general_choice.jsonl", 80),
        ("toolalpaca-eval.jsonl", 97),
    ],
)
def test_row_counts(name: str, rows: int) -> None:
    assert len(examples.load_text(name).splitlines()) == rows


# --------------------------------------------------------------------------- held-out questions differ


@pytest.mark.parametrize("skill", EXPERIMENT + [examples.SKILLS[n] for n in examples.DEMO_STAGES], ids=str)
def test_no_held_out_question_is_a_training_question(skill: examples.SkillData) -> None:
    trained = {_question(row.question) for row in skill.demonstrations()}
    seen: set[str] = set()
    for suite in _suites(skill):
        questions = [_question(item.messages()[-1]["content"]) for item in suite.items]
        assert not trained & set(questions), suite.meta.name
        # Validation and test ask different questions too.
        assert not seen & set(questions), suite.meta.name
        seen |= set(questions)


def test_knowledge_questions_are_paraphrases_with_unanswered_prompts() -> None:
    skill = examples.SKILLS["knowledge"]
    train = skill.demonstrations()
    val, test = skill.suite("validation"), skill.suite("test")
    assert len(train) == len(val) == len(test) == len(generate.FACTS)
    for row, val_item, test_item in zip(train, val.items, test.items, strict=True):
        questions = {
            normalize_text(row.question),
            *(normalize_text(str(i.prompt)) for i in (val_item, test_item)),
        }
        assert len(questions) == 3
        for item in (val_item, test_item):
            # The answer is not given away by the question, and the demonstration states it.
            assert grade("contains", str(item.prompt), list(item.references)) == 0.0, item.item_id
            assert grade("contains", row.demonstration, list(item.references)) == 1.0, item.item_id


def test_knowledge_demo_is_a_subset_of_the_main_set() -> None:
    main, demo = examples.SKILLS["knowledge"], examples.SKILLS["knowledge-demo"]
    assert {r.row_id for r in demo.demonstrations()} <= {r.row_id for r in main.demonstrations()}
    main_test = {item.item_id: item for item in main.suite().items}
    for item in demo.suite().items:
        assert main_test[item.item_id].canonical() == item.canonical()


def test_invented_names_are_not_reused_across_facts() -> None:
    keys = [
        ref.casefold() for fact in generate.FACTS for ref in (*fact.val_references, *fact.test_references)
    ]
    for number, fact in enumerate(generate.FACTS):
        for other, other_fact in enumerate(generate.FACTS):
            if other == number:
                continue
            for ref in (*fact.val_references, *fact.test_references):
                assert grade("contains", other_fact.demonstration, [ref]) == 0.0, (ref, other_fact)
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- format


def test_format_demonstrations_grade_and_wrong_sums_fail() -> None:
    skill = examples.SKILLS["format"]
    ops = set()
    for row in skill.demonstrations():
        match = re.fullmatch(r"Compute (\d\d) ([+-]) (\d\d)\.", row.question)
        assert match is not None, row.question
        a, op, b = int(match[1]), match[2], int(match[3])
        ops.add(op)
        answer = a + b if op == "+" else a - b
        assert row.demonstration == f"{a} {op} {b} = {answer}\n#### {answer}"
        assert grade("contains", row.demonstration, f"#### {answer}") == 1.0
        assert grade("contains", row.demonstration, f"#### {answer + 1}") == 0.0
        assert grade("contains", f"{a} {op} {b} = {answer}", f"#### {answer}") == 0.0  # no format line
    assert ops == {"+", "-"}
    for suite in _suites(skill):
        for item in suite.items:
            match = re.fullmatch(r"Compute (\d\d) ([+-]) (\d\d)\.", str(item.prompt))
            assert match is not None
            a, op, b = int(match[1]), match[2], int(match[3])
            answer = a + b if op == "+" else a - b
            assert item.references == (f"#### {answer}",)
            assert grade("contains", generate.format_demonstration(a, op, b), list(item.references)) == 1.0
            assert (
                grade("contains", f"{a} {op} {b} = {answer + 10}\n#### {answer + 10}", list(item.references))
                == 0.0
            )


# --------------------------------------------------------------------------- tool use


def _source_rows() -> list[dict[str, object]]:
    text = examples.load_text(generate.TOOLALPACA_FILE)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_tool_split_keeps_tools_apart() -> None:
    tool_of = {f"toolalpaca-{index:03d}": row["tool"] for index, row in enumerate(_source_rows(), start=1)}
    skill = examples.SKILLS["tool-use"]
    train = {tool_of[row.row_id] for row in skill.demonstrations()}
    val = {tool_of[item.item_id] for item in skill.suite("validation").items}
    test = {tool_of[item.item_id] for item in skill.suite("test").items}
    assert val <= train
    assert not (train | val) & test
    assert test == set(generate.TOOL_TEST_TOOLS)
    counts = (len(skill.demonstrations()), len(skill.suite("validation")), len(skill.suite("test")))
    assert sum(counts) == len(tool_of) == 97
    assert counts == (40, 17, 40)


def test_tool_demonstrations_grade_against_their_references() -> None:
    references = {
        f"toolalpaca-{index:03d}": generate.tool_call_reference_from_golden(row["golden_actions"])  # type: ignore[arg-type]
        for index, row in enumerate(_source_rows(), start=1)
    }
    skill = examples.SKILLS["tool-use"]
    for row in skill.demonstrations():
        assert row.demonstration.startswith("Thought: ")
        assert grade("tool_call", row.demonstration, references[row.row_id]) == 1.0, row.row_id
        others = [ref for key, ref in references.items() if ref != references[row.row_id]]
        assert grade("tool_call", row.demonstration, others) == 0.0
    for suite in _suites(skill):
        for item in suite.items:
            assert item.references == (references[item.item_id],)
            golden = json.loads(item.references[0])
            assert grade("tool_call", generate.tool_demonstration(golden), list(item.references)) == 1.0
    source = {f"toolalpaca-{i:03d}": row["prompt"] for i, row in enumerate(_source_rows(), start=1)}
    for row in skill.demonstrations():
        assert row.question == source[row.row_id]


def test_shipped_toolalpaca_copy_is_the_recorded_one() -> None:
    """The copy's sha256 is the one PROVENANCE.md records (the product never reads outside itself)."""
    digest = hashlib.sha256((DATA / generate.TOOLALPACA_FILE).read_bytes()).hexdigest()
    assert digest in (DATA / "PROVENANCE.md").read_text()


# --------------------------------------------------------------------------- general


def test_general_suite_does_not_give_answers_away() -> None:
    suite = examples.GENERAL_SUITE.suite()
    assert {item.grader for item in suite.items} == {"contains"}
    assert len({normalize_text(str(item.prompt)) for item in suite.items}) == len(suite) == 80
    for item in suite.items:
        assert grade("contains", str(item.prompt), list(item.references)) == 0.0, item.item_id
    # Arithmetic is graded on the result even when the model repeats the sum first.
    arithmetic = {str(item.prompt): item for item in suite.items}["What is 2 + 3?"]
    assert grade("contains", "2 + 3 = 5", list(arithmetic.references)) == 1.0
    assert grade("contains", "2 + 3 = 6", list(arithmetic.references)) == 0.0
    assert grade("contains", "2 + 3 = 15", list(arithmetic.references)) == 0.0


def test_general_choice_asks_the_general_questions_among_four_answers() -> None:
    general = {item.messages()[-1]["content"] for item in examples.GENERAL_SUITE.suite().items}
    choice = examples.GENERAL_CHOICE_SUITE.suite()
    assert len(choice) == 80
    for item in choice.items:
        assert item.messages()[-1]["content"] in general
        assert item.options is not None and len(set(item.options)) == 4
        assert item.references[0] in item.options


# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic(tmp_path: Path) -> None:
    written = generate.main(tmp_path, source=DATA / generate.TOOLALPACA_FILE)
    names = {path.name for path in written}
    assert names == {path.name for path in DATA.glob("*.jsonl")}
    for name in sorted(names):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
    for name in sorted(names - {generate.TOOLALPACA_FILE}):
        text = (tmp_path / name).read_text(encoding="utf-8")
        if "demonstration" in text.splitlines()[0]:
            assert parse_demonstrations(text)
