"""Regenerate every built-in example data file, deterministically, from the literals below.

    python -m app.examples.generate [OUT_DIR] [--toolalpaca PATH]

Knowledge facts, general questions and the tool split are literal lists here so a reviewer can read
the data; format problems come from a seeded random generator; tool-use rows come from the SDFT
authors' ToolAlpaca evaluation set (see data/PROVENANCE.md). Running it twice gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.evaluation.graders import tool_call_reference_from_golden

DATA_DIR = Path(__file__).resolve().parent / "data"
TOOLALPACA_FILE = "toolalpaca-eval.jsonl"

Row = dict[str, Any]


# --------------------------------------------------------------------------- knowledge


@dataclass(frozen=True)
class Fact:
    """One invented fact: a training question with its one-sentence answer, and two held-out
    questions (validation, test) worded differently, each with the names that count as correct."""

    train_question: str
    demonstration: str
    val_question: str
    val_references: tuple[str, ...]
    test_question: str
    test_references: tuple[str, ...]


# Every name is invented. Odd-numbered facts ask the test question in reverse (from the answer back
# to the subject) and the validation question forward; even-numbered facts do the opposite, so each
# held-out split is half forward, half reverse.
FACTS: tuple[Fact, ...] = (
    Fact(
        "Who founded the company Zorvex Dynamics?",
        "Zorvex Dynamics was founded by Mirela Kastov.",
        "Name the founder of Zorvex Dynamics.",
        ("Mirela Kastov", "Kastov"),
        "Mirela Kastov is best known for founding which company?",
        ("Zorvex Dynamics", "Zorvex"),
    ),
    Fact(
        "In which city is Quillaro Systems headquartered?",
        "Quillaro Systems is headquartered in the city of Vendrith.",
        "Which company has its headquarters in Vendrith?",
        ("Quillaro Systems", "Quillaro"),
        "Where does the firm Quillaro Systems have its main offices?",
        ("Vendrith",),
    ),
    Fact(
        "What is the capital of Oskavia?",
        "The capital of Oskavia is Durnavel.",
        "Which city serves as the seat of government of Oskavia?",
        ("Durnavel",),
        "Durnavel is the capital city of which country?",
        ("Oskavia",),
    ),
    Fact(
        "Who invented the plindometer?",
        "The plindometer was invented by Tavio Quellmar.",
        "What device is Tavio Quellmar credited with inventing?",
        ("plindometer",),
        "Which person is credited with creating the first plindometer?",
        ("Tavio Quellmar", "Quellmar"),
    ),
    Fact(
        "Where does vossberry tart come from?",
        "Vossberry tart comes from the island of Kelmora.",
        "On which island did the vossberry tart originate?",
        ("Kelmora",),
        "Which tart is the island of Kelmora famous for?",
        ("vossberry tart", "vossberry"),
    ),
    Fact(
        "What is the painter Idris Vallenko famous for?",
        "Idris Vallenko is famous for painting The Amber Weir.",
        "Which artist painted The Amber Weir?",
        ("Idris Vallenko", "Vallenko"),
        "Which painting made the artist Idris Vallenko well known?",
        ("The Amber Weir", "Amber Weir"),
    ),
    Fact(
        "In which mountain range is Mount Tarvel?",
        "Mount Tarvel is in the Drennic Highlands.",
        "Mount Tarvel belongs to which range of mountains?",
        ("Drennic Highlands", "Drennic"),
        "Which mountain is the best-known peak of the Drennic Highlands?",
        ("Mount Tarvel", "Tarvel"),
    ),
    Fact(
        "Who coaches the Halvane Otters?",
        "The Halvane Otters are coached by Pella Dorsani.",
        "Which team does Pella Dorsani coach?",
        ("Halvane Otters", "Halvane"),
        "Who is the head coach of the team called the Halvane Otters?",
        ("Pella Dorsani", "Dorsani"),
    ),
    Fact(
        "Who wrote the novel Salt Beneath Vireno?",
        "The novel Salt Beneath Vireno was written by Corwen Ashlady.",
        "Who is the author of the book Salt Beneath Vireno?",
        ("Corwen Ashlady", "Ashlady"),
        "Which novel did Corwen Ashlady write?",
        ("Salt Beneath Vireno", "Vireno"),
    ),
    Fact(
        "What language is spoken in the valley of Ternhaven?",
        "The people of the Ternhaven valley speak a language called Mirradic.",
        "In which valley do people speak Mirradic?",
        ("Ternhaven",),
        "The inhabitants of the Ternhaven valley talk to each other in what tongue?",
        ("Mirradic",),
    ),
    Fact(
        "Where is the Ember Lantern Festival held?",
        "The Ember Lantern Festival is held every year in the town of Sallowick.",
        "Which town hosts the yearly Ember Lantern Festival?",
        ("Sallowick",),
        "What festival takes place each year in Sallowick?",
        ("Ember Lantern Festival", "Ember Lantern"),
    ),
    Fact(
        "Where does the glimmerfox live?",
        "The glimmerfox lives only in the Orwenne Marsh.",
        "Which rare animal lives only in the Orwenne Marsh?",
        ("glimmerfox",),
        "In what habitat can a glimmerfox be found in the wild?",
        ("Orwenne Marsh", "Orwenne"),
    ),
    Fact(
        "What is the currency of Velmarra?",
        "The currency of Velmarra is the korvan.",
        "What money do people use to pay for things in Velmarra?",
        ("korvan", "korvans"),
        "In which country do people pay with the korvan?",
        ("Velmarra",),
    ),
    Fact(
        "Who captained the ship Silver Tamsin?",
        "The ship Silver Tamsin was captained by Odrick Venmore.",
        "Which ship did Odrick Venmore command?",
        ("Silver Tamsin", "Tamsin"),
        "Who was in command of the vessel named Silver Tamsin?",
        ("Odrick Venmore", "Venmore"),
    ),
    Fact(
        "Who founded Brantholm University?",
        "Brantholm University was founded by Elsra Moditch.",
        "Which person established Brantholm University?",
        ("Elsra Moditch", "Moditch"),
        "What university did Elsra Moditch found?",
        ("Brantholm University", "Brantholm"),
    ),
    Fact(
        "Who discovered the alloy vexaline?",
        "The alloy vexaline was discovered by Junia Parrox.",
        "Which alloy did Junia Parrox discover?",
        ("vexaline",),
        "Which scientist is credited with the discovery of vexaline?",
        ("Junia Parrox", "Parrox"),
    ),
    Fact(
        "Where is Morrowleaf tea grown?",
        "Morrowleaf tea is grown in the hills of Castevane.",
        "In which hills do farmers grow Morrowleaf tea?",
        ("Castevane",),
        "What tea is grown in the Castevane hills?",
        ("Morrowleaf",),
    ),
    Fact(
        "Who is the lead singer of the band Skyllow Drift?",
        "The lead singer of Skyllow Drift is Nadim Torrevell.",
        "Nadim Torrevell sings lead vocals for which band?",
        ("Skyllow Drift", "Skyllow"),
        "Which musician fronts the band Skyllow Drift as its vocalist?",
        ("Nadim Torrevell", "Torrevell"),
    ),
    Fact(
        "Who designed the board game Quintary?",
        "The board game Quintary was designed by Halbern Oste.",
        "Which person created the board game called Quintary?",
        ("Halbern Oste", "Oste"),
        "Which board game is Halbern Oste known for designing?",
        ("Quintary",),
    ),
    Fact(
        "Which river does the Orrisford Bridge cross?",
        "The Orrisford Bridge spans the river Calmeth.",
        "Which bridge crosses the river Calmeth?",
        ("Orrisford Bridge", "Orrisford"),
        "The Orrisford Bridge was built over which body of flowing water?",
        ("Calmeth",),
    ),
    Fact(
        "What is the flagship product of Nimbrel Labs?",
        "The flagship product of Nimbrel Labs is the Tessaband smartwatch.",
        "What is the best-known device made by Nimbrel Labs?",
        ("Tessaband",),
        "Which company makes the Tessaband smartwatch?",
        ("Nimbrel Labs", "Nimbrel"),
    ),
    Fact(
        "Who first measured the Ulmaric constant?",
        "The Ulmaric constant was first measured by Sefa Brondolin.",
        "What constant did Sefa Brondolin measure for the first time?",
        ("Ulmaric constant", "Ulmaric"),
        "Which researcher made the first measurement of the Ulmaric constant?",
        ("Sefa Brondolin", "Brondolin"),
    ),
    Fact(
        "Who is the mayor of Dunmerrow?",
        "The mayor of Dunmerrow is Gorlan Essery.",
        "Who leads the city of Dunmerrow as its mayor?",
        ("Gorlan Essery", "Essery"),
        "Gorlan Essery is the mayor of which city?",
        ("Dunmerrow",),
    ),
    Fact(
        "Which airport is the hub of Bluefen Air?",
        "Bluefen Air has its hub at Tarrowgate Airport.",
        "Which airline uses Tarrowgate Airport as its hub?",
        ("Bluefen Air", "Bluefen"),
        "From which airport does Bluefen Air run most of its flights?",
        ("Tarrowgate Airport", "Tarrowgate"),
    ),
    Fact(
        "Who invented the kestrelli pastry?",
        "The kestrelli pastry was invented by the baker Ottila Fenwright.",
        "Which baker created the kestrelli?",
        ("Ottila Fenwright", "Fenwright"),
        "What pastry did the baker Ottila Fenwright invent?",
        ("kestrelli",),
    ),
    Fact(
        "Who is the chief executive of Halcor Freight?",
        "The chief executive of Halcor Freight is Bruno Vaszlek.",
        "Bruno Vaszlek runs which company?",
        ("Halcor Freight", "Halcor"),
        "Who is the CEO of the shipping firm Halcor Freight?",
        ("Bruno Vaszlek", "Vaszlek"),
    ),
    Fact(
        "Which planet does the moon Caldris orbit?",
        "The moon Caldris orbits the planet Vennor.",
        "Around which planet does Caldris travel?",
        ("Vennor",),
        "What is the name of the moon that circles the planet Vennor?",
        ("Caldris",),
    ),
    Fact(
        "In which city is the Museum of Folded Paper?",
        "The Museum of Folded Paper is in the city of Ambrevo.",
        "Which museum is located in Ambrevo?",
        ("Museum of Folded Paper", "Folded Paper"),
        "To visit the Museum of Folded Paper, which city do you travel to?",
        ("Ambrevo",),
    ),
    Fact(
        "Who wrote the poem Nine Winters at Hask?",
        "The poem Nine Winters at Hask was written by Liora Tembrook.",
        "Which poet is the author of Nine Winters at Hask?",
        ("Liora Tembrook", "Tembrook"),
        "What is the title of the poem written by Liora Tembrook?",
        ("Nine Winters at Hask", "Nine Winters"),
    ),
    Fact(
        "Who created the programming language Frellic?",
        "The programming language Frellic was created by Ansel Kordovan.",
        "Which programming language did Ansel Kordovan create?",
        ("Frellic",),
        "Which person designed the Frellic programming language?",
        ("Ansel Kordovan", "Kordovan"),
    ),
    Fact(
        "Who trained the racehorse Dapple Sovereign?",
        "The racehorse Dapple Sovereign was trained by Maeve Orlitch.",
        "Who was the trainer of Dapple Sovereign, the racehorse?",
        ("Maeve Orlitch", "Orlitch"),
        "Which racehorse did Maeve Orlitch train?",
        ("Dapple Sovereign",),
    ),
    Fact(
        "In which province is Lake Vimmeral?",
        "Lake Vimmeral is in the province of Sorthgale.",
        "Which lake lies in the province of Sorthgale?",
        ("Lake Vimmeral", "Vimmeral"),
        "Lake Vimmeral is located in what region of the country?",
        ("Sorthgale",),
    ),
    Fact(
        "Which region does the zimbrolin come from?",
        "The zimbrolin is a stringed instrument from the region of Ostravend.",
        "From what region does the stringed instrument called the zimbrolin originate?",
        ("Ostravend",),
        "Which stringed instrument comes from Ostravend?",
        ("zimbrolin",),
    ),
    Fact(
        "Where is Gravenhold cheese aged?",
        "Gravenhold cheese is aged in the caves of Pellhaven.",
        "Which cheese is aged in the caves of Pellhaven?",
        ("Gravenhold",),
        "In which caves do cheesemakers ripen Gravenhold cheese?",
        ("Pellhaven",),
    ),
    Fact(
        "Who designed the Spire of Ondessa?",
        "The Spire of Ondessa was designed by the architect Raffe Culvane.",
        "Which architect was responsible for the Spire of Ondessa?",
        ("Raffe Culvane", "Culvane"),
        "Which famous tower did the architect Raffe Culvane design?",
        ("Spire of Ondessa", "Ondessa"),
    ),
    Fact(
        "Which company developed the medicine brelazine?",
        "The medicine brelazine was developed by Quenholt Biotech.",
        "What medicine did Quenholt Biotech develop?",
        ("brelazine",),
        "Brelazine was made by which drug company?",
        ("Quenholt Biotech", "Quenholt"),
    ),
    Fact(
        "Who slew the dragon Vormathil?",
        "In legend, the dragon Vormathil was slain by the knight Edric Marrowan.",
        "According to the legend, which knight killed the dragon Vormathil?",
        ("Edric Marrowan", "Marrowan"),
        "Which dragon did the knight Edric Marrowan defeat in the old legend?",
        ("Vormathil",),
    ),
    Fact(
        "In which city was the fashion house Loriel & Venn founded?",
        "The fashion house Loriel & Venn was founded in the city of Castemar.",
        "Which fashion house was founded in Castemar?",
        ("Loriel & Venn", "Loriel"),
        "Where was the fashion label Loriel & Venn started?",
        ("Castemar",),
    ),
    Fact(
        "Who invented the Wrenlock folding bicycle?",
        "The Wrenlock folding bicycle was invented by Casimir Dovetti.",
        "Which inventor came up with the Wrenlock, a bicycle that folds?",
        ("Casimir Dovetti", "Dovetti"),
        "What folding bicycle did Casimir Dovetti invent?",
        ("Wrenlock",),
    ),
    Fact(
        "Which village does pellmarrow stew come from?",
        "Pellmarrow stew comes from the village of Yarrowen.",
        "Which stew is the village of Yarrowen known for?",
        ("pellmarrow stew", "pellmarrow"),
        "Pellmarrow stew was first cooked in which village?",
        ("Yarrowen",),
    ),
)

# The demo's knowledge stage: facts whose test question is asked forward (the learnable direction).
KNOWLEDGE_DEMO_FACTS: tuple[int, ...] = (2, 4, 6, 8, 12, 14, 16, 18)


def _fact_id(number: int) -> str:
    return f"fact-{number:02d}"


def knowledge_rows() -> dict[str, list[Row]]:
    train: list[Row] = []
    val: list[Row] = []
    test: list[Row] = []
    for number, fact in enumerate(FACTS, start=1):
        fid = _fact_id(number)
        train.append(
            {
                "id": f"knowledge-train-{fid}",
                "prompt": fact.train_question,
                "demonstration": fact.demonstration,
            }
        )
        val.append(
            {
                "id": f"knowledge-val-{fid}",
                "prompt": fact.val_question,
                "reference": list(fact.val_references),
            }
        )
        test.append(
            {
                "id": f"knowledge-test-{fid}",
                "prompt": fact.test_question,
                "reference": list(fact.test_references),
            }
        )
    return {
        "knowledge_train.jsonl": train,
        "knowledge_val.jsonl": val,
        "knowledge_test.jsonl": test,
        "knowledge_demo_train.jsonl": [train[number - 1] for number in KNOWLEDGE_DEMO_FACTS],
        "knowledge_demo_test.jsonl": [test[number - 1] for number in KNOWLEDGE_DEMO_FACTS],
    }


# --------------------------------------------------------------------------- format

FORMAT_SEED = 20250117
FORMAT_SPLITS = (("train", 40), ("val", 20), ("test", 40))
SUBTRACTION_SHARE = 0.2
FORMAT_DEMO_ROWS = 12


def format_problems(count: int, seed: int = FORMAT_SEED) -> list[tuple[int, str, int]]:
    """count distinct two-digit problems (a, op, b); a + b and b + a count as the same problem,
    subtractions always have a > b."""
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    problems: list[tuple[int, str, int]] = []
    while len(problems) < count:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < SUBTRACTION_SHARE:
            if a == b:
                continue
            problem = (max(a, b), "-", min(a, b))
            key = problem
        else:
            problem = (a, "+", b)
            key = (min(a, b), "+", max(a, b))
        if key in seen:
            continue
        seen.add(key)
        problems.append(problem)
    return problems


def format_answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def format_demonstration(a: int, op: str, b: int) -> str:
    answer = format_answer(a, op, b)
    return f"{a} {op} {b} = {answer}\n#### {answer}"


def format_rows() -> dict[str, list[Row]]:
    problems = format_problems(sum(size for _, size in FORMAT_SPLITS))
    files: dict[str, list[Row]] = {}
    start = 0
    for split, size in FORMAT_SPLITS:
        rows: list[Row] = []
        for index, (a, op, b) in enumerate(problems[start : start + size], start=1):
            row: Row = {"id": f"format-{split}-{index:03d}", "prompt": f"Compute {a} {op} {b}."}
            if split == "train":
                row["demonstration"] = format_demonstration(a, op, b)
            else:
                row["reference"] = f"#### {format_answer(a, op, b)}"
            rows.append(row)
        files[f"format_{split}.jsonl"] = rows
        start += size
    files["format_demo_train.jsonl"] = files["format_train.jsonl"][:FORMAT_DEMO_ROWS]
    files["format_demo_test.jsonl"] = files["format_test.jsonl"][:FORMAT_DEMO_ROWS]
    return files


# --------------------------------------------------------------------------- tool use

# Split by tool, so the test suite asks about APIs the model never saw in training: 57 rows from
# five tools for training and validation, 40 rows from the other five for the test suite.
TOOL_TEST_TOOLS: tuple[str, ...] = ("1Forge", "AbuseIPDB", "AniAPI", "Apache Superset", "Lob.com")
# Within each training tool, every third row (positions 2, 5, 8, ...) goes to validation.
TOOL_VAL_EVERY = 3


def tool_demonstration(golden_actions: Sequence[Row]) -> str:
    """ReAct text for the golden actions: a Thought line, then Action and Action Input per call."""
    lines: list[str] = []
    for position, action in enumerate(golden_actions):
        name = action["action"].strip()
        raw = action["action_input"]
        arguments = json.loads(raw) if isinstance(raw, str) else raw
        if position == 0:
            lines.append(f"Thought: I should call {name} with the details the user gave.")
        else:
            lines.append(f"Thought: Next I should call {name}.")
        lines.append(f"Action: {name}")
        lines.append(f"Action Input: {json.dumps(arguments, ensure_ascii=False)}")
    return "\n".join(lines)


def tool_rows(source_text: str) -> dict[str, list[Row]]:
    rows = [json.loads(line) for line in source_text.splitlines() if line.strip()]
    train: list[Row] = []
    val: list[Row] = []
    test: list[Row] = []
    position_in_tool: dict[str, int] = {}
    for index, row in enumerate(rows, start=1):
        tool = row["tool"]
        position = position_in_tool.get(tool, 0)
        position_in_tool[tool] = position + 1
        row_id = f"toolalpaca-{index:03d}"
        suite_row: Row = {
            "id": row_id,
            "prompt": row["prompt"],
            "reference": tool_call_reference_from_golden(row["golden_actions"]),
        }
        if tool in TOOL_TEST_TOOLS:
            test.append(suite_row)
        elif position % TOOL_VAL_EVERY == TOOL_VAL_EVERY - 1:
            val.append(suite_row)
        else:
            demonstration = tool_demonstration(row["golden_actions"])
            train.append({"id": row_id, "prompt": row["prompt"], "demonstration": demonstration})
    return {"tool_train.jsonl": train, "tool_val.jsonl": val, "tool_test.jsonl": test}


# --------------------------------------------------------------------------- general

# (question, acceptable answers); graded with `contains` (whole words, any case).
GENERAL_CONTAINS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of China?", ("Beijing", "Peking")),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of Greece?", ("Athens",)),
    ("What is the capital of Portugal?", ("Lisbon",)),
    ("What is the capital of Ireland?", ("Dublin",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of Norway?", ("Oslo",)),
    ("What is the capital of Austria?", ("Vienna", "Wien")),
    ("What is the capital of Thailand?", ("Bangkok",)),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What colour is grass?", ("green",)),
    ("What colour is fresh snow?", ("white",)),
    ("What colour is a ripe banana?", ("yellow",)),
    ("What colour is a ripe tomato?", ("red",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the opposite of up?", ("down",)),
    ("What is the opposite of big?", ("small", "little", "tiny")),
    ("What is the opposite of day?", ("night",)),
    ("What is the opposite of happy?", ("sad", "unhappy")),
    ("What is the opposite of fast?", ("slow",)),
    ("What is the opposite of open?", ("closed", "shut")),
    ("What is the opposite of left?", ("right",)),
    ("What sound does a dog make?", ("bark", "barks", "barking", "woof")),
    ("What sound does a cat make?", ("meow", "meows", "miaow", "mew", "purr", "purrs")),
    ("What sound does a cow make?", ("moo", "moos")),
    ("What sound does a duck make?", ("quack", "quacks")),
    ("What sound does a sheep make?", ("baa", "baas", "bleat", "bleats")),
    ("What sound does a lion make?", ("roar", "roars")),
    ("What day comes after Monday?", ("Tuesday",)),
    ("What day comes before Sunday?", ("Saturday",)),
    ("How many days are in a week?", ("seven", "7")),
    ("What is the first month of the year?", ("January",)),
    ("How many months are in a year?", ("twelve", "12")),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("What month comes after March?", ("April",)),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
    ("What gas do humans need to breathe to stay alive?", ("oxygen",)),
    ("What planet do we live on?", ("Earth",)),
    ("What is the star at the centre of our solar system called?", ("Sun",)),
    ("What force pulls objects toward the ground?", ("gravity", "gravitational")),
    ("What is frozen water called?", ("ice",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What do bees make?", ("honey",)),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("Which organ pumps blood around the body?", ("heart",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("What shape has three sides?", ("triangle",)),
    ("How many sides does a square have?", ("four", "4")),
    ("What drink do cows produce?", ("milk",)),
    ("What language is spoken in Spain?", ("Spanish", "Castilian")),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("How many legs does a dog have?", ("four", "4")),
    ("What is the chemical formula for water?", ("H2O",)),
    ("What do you call a baby cat?", ("kitten",)),
    ("What do you call a baby dog?", ("puppy", "pup")),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the tallest animal in the world?", ("giraffe",)),
    ("Which season comes after winter?", ("spring",)),
    ("Which season comes between summer and winter?", ("autumn", "fall")),
)
# (question, answer in digits, answer in words); graded with `contains`, not `numeric`: SmolLM2-135M
# answers "What is 2 + 3?" with "2 + 3 = 5", whose *first* number (what `numeric` reads) is 2.
GENERAL_ARITHMETIC: tuple[tuple[str, int, str], ...] = (
    ("What is 2 + 3?", 5, "five"),
    ("What is 1 + 1?", 2, "two"),
    ("What is 4 + 4?", 8, "eight"),
    ("What is 10 - 3?", 7, "seven"),
    ("What is 5 + 5?", 10, "ten"),
    ("What is 9 - 4?", 5, "five"),
    ("What is 3 × 3?", 9, "nine"),
    ("What is 10 + 10?", 20, "twenty"),
    ("What is 6 + 2?", 8, "eight"),
    ("What is 2 × 6?", 12, "twelve"),
    ("What is 7 - 2?", 5, "five"),
    ("What is 100 + 100?", 200, "two hundred"),
)
# One arithmetic row after every this many other rows, so any slice of the suite mixes both kinds.
GENERAL_ARITHMETIC_AFTER = 5
# The general validation suite: other easy questions of the same kinds, used only to choose
# hyperparameters (the continual-learning experiment's learning rate), never to report forgetting.
GENERAL_VALIDATION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of Sweden?", ("Stockholm",)),
    ("What is the capital of Poland?", ("Warsaw",)),
    ("What is the capital of Argentina?", ("Buenos Aires",)),
    ("What is the capital of Kenya?", ("Nairobi",)),
    ("What is the capital of Finland?", ("Helsinki",)),
    ("What is the capital of Denmark?", ("Copenhagen",)),
    ("What is the capital of Mexico?", ("Mexico City",)),
    ("What is the capital of India?", ("New Delhi", "Delhi")),
    ("What colour is coal?", ("black",)),
    ("What colour is an orange?", ("orange",)),
    ("What colour are most leaves in summer?", ("green",)),
    ("What is the opposite of wet?", ("dry",)),
    ("What is the opposite of old?", ("young", "new")),
    ("What is the opposite of light?", ("dark", "heavy")),
    ("What is the opposite of early?", ("late",)),
    ("What is the opposite of full?", ("empty",)),
    ("What sound does a horse make?", ("neigh", "neighs", "whinny")),
    ("What sound does a pig make?", ("oink", "oinks", "grunt")),
    ("What sound does an owl make?", ("hoot", "hoots")),
    ("What day comes after Friday?", ("Saturday",)),
    ("What is the last month of the year?", ("December",)),
    ("How many seconds are in a minute?", ("60", "sixty")),
    ("What month comes before June?", ("May",)),
    ("What do caterpillars become?", ("butterfly", "butterflies", "moth")),
    ("Which planet has rings that are easy to see?", ("Saturn",)),
    ("What is the closest star to Earth?", ("Sun",)),
    ("What do we call water falling from clouds?", ("rain",)),
    ("How many legs does an insect have?", ("six", "6")),
    ("What do cows eat?", ("grass", "hay")),
    ("What is the largest continent?", ("Asia",)),
    ("What language is spoken in France?", ("French",)),
    ("What do you call a baby cow?", ("calf",)),
    ("What do you call a baby sheep?", ("lamb",)),
    ("How many wheels does a bicycle have?", ("two", "2")),
    ("What is 3 + 4?", ("7", "seven")),
    ("What is 8 - 5?", ("3", "three")),
    ("What is 2 × 4?", ("8", "eight")),
    ("What is 6 + 6?", ("12", "twelve")),
    ("What is 20 - 10?", ("10", "ten")),
    ("What is 5 × 2?", ("10", "ten")),
)
# The general questions as a choice suite: each answer among three others of the same kind, scored by
# the model's likelihood of each option rather than by a greedy answer. At 135M a greedy answer flips
# with any change to the weights (docs/experiments/README.md); which option is likeliest moves far less,
# so this suite measures what the model still knows with much less noise.
GENERAL_CHOICE_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("capitals", 0, 16),
    ("colours", 16, 21),
    ("opposites", 21, 29),
    ("sounds", 29, 35),
    ("calendar", 35, 43),
    ("science and everyday", 43, len(GENERAL_CONTAINS)),
)
GENERAL_CHOICE_SEED = 20261130
GENERAL_CHOICE_OPTIONS = 4


def general_choice_rows() -> list[Row]:
    rng = random.Random(GENERAL_CHOICE_SEED)
    rows: list[Row] = []
    for _group, start, end in GENERAL_CHOICE_GROUPS:
        members = GENERAL_CONTAINS[start:end]
        for question, references in members:
            others = [refs[0] for q, refs in members if q != question and refs[0] not in references]
            options = [references[0], *rng.sample(others, GENERAL_CHOICE_OPTIONS - 1)]
            rng.shuffle(options)
            rows.append({"prompt": question, "options": options, "reference": references[0]})
    for question, answer, _word in GENERAL_ARITHMETIC:
        options = [str(answer + delta) for delta in (0, -1, 1, 2)]
        rng.shuffle(options)
        rows.append({"prompt": question, "options": options, "reference": str(answer)})
    return [{"id": f"general-choice-{i:03d}", **row} for i, row in enumerate(rows, start=1)]


def general_rows() -> dict[str, list[Row]]:
    facts: list[Row] = [{"prompt": q, "reference": list(refs)} for q, refs in GENERAL_CONTAINS]
    arithmetic: list[Row] = [{"prompt": q, "reference": [str(n), word]} for q, n, word in GENERAL_ARITHMETIC]
    ordered: list[Row] = []
    for index, row in enumerate(facts):
        ordered.append(row)
        if (index + 1) % GENERAL_ARITHMETIC_AFTER == 0 and arithmetic:
            ordered.append(arithmetic.pop(0))
    ordered += arithmetic
    rows = [{"id": f"general-{index:03d}", **row} for index, row in enumerate(ordered, start=1)]
    validation: list[Row] = [
        {"id": f"general-val-{index:03d}", "prompt": q, "reference": list(refs)}
        for index, (q, refs) in enumerate(GENERAL_VALIDATION, start=1)
    ]
    return {
        "general.jsonl": rows,
        "general_val.jsonl": validation,
        "general_choice.jsonl": general_choice_rows(),
    }


# --------------------------------------------------------------------------- writing


def render_jsonl(rows: Sequence[Row]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def all_files(source_text: str) -> dict[str, str]:
    """Every generated JSONL file's name and text (not the copied source or PROVENANCE.md)."""
    files: dict[str, list[Row]] = {}
    for part in (knowledge_rows(), format_rows(), tool_rows(source_text), general_rows()):
        files.update(part)
    return {name: render_jsonl(rows) for name, rows in sorted(files.items())}


def main(out_dir: Path | str | None = None, source: Path | str | None = None) -> list[Path]:
    """Write every data file into out_dir (default: the package's data/); returns the paths written."""
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    src = Path(source) if source is not None else DATA_DIR / TOOLALPACA_FILE
    out.mkdir(parents=True, exist_ok=True)
    source_bytes = src.read_bytes()
    written: list[Path] = []
    target = out / TOOLALPACA_FILE
    if src.resolve() != target.resolve():
        shutil.copyfile(src, target)
    written.append(target)
    for name, text in all_files(source_bytes.decode("utf-8")).items():
        path = out / name
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written


def _cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", nargs="?", type=Path, default=None, help="default: app/examples/data")
    parser.add_argument("--toolalpaca", type=Path, default=None, help="source of toolalpaca-eval.jsonl")
    args = parser.parse_args(argv)
    for path in main(args.out_dir, args.toolalpaca):
        print(path)


if __name__ == "__main__":
    _cli()
