"""The experiment's report, rebuilt from its raw record alone (`--report-only` rewrites it).

Figures per recipe are means over seeds with a 95% Student-t interval over seeds. "General" is the
change of the general suite's score from the base, paired on the same items, over all of its items:
the base answers some of them right by a hair, so any change to the weights flips a few either way,
and counting only the items the base got right (as earlier reports did, "kept of base right") counts
every flip down and none up. Both are reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.evaluation.stats import mean_t_interval
from workers.experiments.continual.plan import GENERAL_TOLERANCE, RAW_FORMAT

Log = Callable[[str], None]
# The acceptance bar: auto reaches this share of SFT's new-skill score on every skill...
MIN_SHARE_OF_SFT = 0.8


def _fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _interval(values: Sequence[float], sign: bool = False) -> str:
    if not values:
        return "–"
    mean, low, high = mean_t_interval(values)
    if low is None or high is None:
        return _fmt(mean, sign=sign)
    return f"{_fmt(mean, sign=sign)} [{_fmt(low, sign=sign)}, {_fmt(high, sign=sign)}]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def by_recipe(raw: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    """Each recipe's lineages (one per seed), in the plan's order."""
    grouped: dict[str, list[Mapping[str, Any]]] = {name: [] for name in raw["plan"]["recipes"]}
    for lineage in raw["lineages"]:
        grouped.setdefault(lineage["recipe"], []).append(lineage)
    return {name: lineages for name, lineages in grouped.items() if lineages}


def new_skill_scores(lineages: Sequence[Mapping[str, Any]], skill_index: int) -> list[float]:
    """The skill's test score right after its own stage, one per seed."""
    out = []
    for lineage in lineages:
        stages = lineage["stages"]
        if len(stages) > skill_index:
            stage = stages[skill_index]
            out.append(stage["test_scores"][stage["skill"]]["score"])
    return out


def general_deltas(
    lineages: Sequence[Mapping[str, Any]], stage_index: int, key: str = "general_delta"
) -> list[float]:
    """The general suite's change from the base after a stage: `general_delta` (greedy answers) or
    `general_choice_delta` (the same questions as choices scored by likelihood; absent in older runs)."""
    return [
        lin["stages"][stage_index][key]
        for lin in lineages
        if len(lin["stages"]) > stage_index and key in lin["stages"][stage_index]
    ]


def _retention_key(lineages: Sequence[Mapping[str, Any]]) -> str:
    """What the acceptance check holds general knowledge to: the choice suite where the run scored it."""
    stages = [stage for lin in lineages for stage in lin["stages"]]
    return (
        "general_choice_delta"
        if stages and all("general_choice_delta" in s for s in stages)
        else "general_delta"
    )


def acceptance(raw: Mapping[str, Any]) -> list[str]:
    """Did `auto` reach MIN_SHARE_OF_SFT of SFT's new-skill score on every skill while the final model
    kept general within GENERAL_TOLERANCE points of the base? Sentences computed from the figures."""
    recipes = by_recipe(raw)
    # The service's default is auto; a run without it checks the retention method auto falls back to.
    candidate = next((name for name in ("auto", "sft_retain") if name in recipes), None)
    if candidate is None or "sft" not in recipes:
        return ["(auto or sft_retain, and sft, were not run: no acceptance check.)"]
    skills = raw["plan"]["skills"]
    complete = [lin for lin in recipes[candidate] if len(lin["stages"]) == len(skills)]
    if not complete:
        return [f"({candidate} has no finished lineage yet.)"]
    lines, met = [], True
    for index, skill in enumerate(skills):
        score = mean_t_interval(new_skill_scores(recipes[candidate], index))[0]
        sft = mean_t_interval(new_skill_scores(recipes["sft"], index))[0]
        share = None if sft <= 0 else score / sft
        ok = sft <= 0 or (share is not None and share >= MIN_SHARE_OF_SFT)
        met &= ok
        lines.append(
            f"- {skill}: {candidate} {score:.1f} against SFT's {sft:.1f} points right after the stage "
            + ("(SFT learned nothing here)" if sft <= 0 else f"({100 * (share or 0):.0f}% of SFT's)")
            + ("" if ok else f": **misses** the {100 * MIN_SHARE_OF_SFT:.0f}% bar")
            + "."
        )
    key = _retention_key(complete)
    final = mean_t_interval([lin["stages"][-1][key] for lin in complete])[0]
    sft_done = [lin for lin in recipes["sft"] if len(lin["stages"]) == len(skills)]
    sft_final = mean_t_interval([lin["stages"][-1][key] for lin in sft_done])[0] if sft_done else None
    ok = final >= -GENERAL_TOLERANCE
    met &= ok
    lines.append(
        f"- general ({'choices' if key == 'general_choice_delta' else 'greedy'}) after the last stage: "
        f"{final:+.1f} points from the base"
        + (
            ""
            if ok
            else f": **misses** the {GENERAL_TOLERANCE:g}-point bar by {-GENERAL_TOLERANCE - final:.1f}"
        )
        + f" (SFT: {_fmt(sft_final, sign=True)})."
    )
    verdict = "**Met.**" if met else "**Not met.**"
    return [f"{verdict} `{candidate}`, means over {len(complete)} seed(s):", "", *lines]


def render_report(raw: Mapping[str, Any], *, plot_name: str | None, raw_name: str) -> str:
    if raw.get("format") != RAW_FORMAT:
        raise ValueError(f"not a {RAW_FORMAT} record (format={raw.get('format')!r})")
    plan, general = raw["plan"], raw["general"]
    skills = plan["skills"]
    recipes = by_recipe(raw)
    steps = ", ".join(f"{skill} {plan['steps_by_skill'][skill]}" for skill in skills)
    tuning = "full fine-tuning" if plan["lora_rank"] is None else f"LoRA rank {plan['lora_rank']}"
    out = [
        f"# Continual-learning experiment on {raw['base']['name']}",
        "",
        f"Written by `{raw['command']}` on {raw['finished_at'][:10]} ({raw['machine']}); the run took "
        f"{_minutes(raw['wall_seconds'])} (cached stages included at their measured cost below). Raw "
        f"record: `{raw_name}`.",
        "",
        "## Protocol",
        "",
        f"- Skills in this order, one lineage per recipe and seed: {', '.join(skills)}; "
        f"seeds: {', '.join(str(plan.get('first_seed', 0) + i) for i in range(plan['seeds']))}.",
        f"- Every recipe: {tuning}, "
        f"{plan['batch_size']} prompts per step, steps per stage {steps}, constant learning rate. The rate "
        f"of each recipe is chosen from {', '.join(f'{lr:g}' for lr in plan['learning_rates'])} on the "
        f"first skill with seed 0, on validation suites only: the best new-skill validation score among "
        f"the rates that keep the general validation suite within {GENERAL_TOLERANCE:g} points of the base "
        "(ties: the better general score, then the smaller rate); that rate serves the recipe's every "
        "stage and seed. `auto` trains the method the probe picks with that method's recipe and rate.",
        f"- SDFT: {plan['teacher']} teacher, {plan['teacher_template']} template; retention methods "
        "distil from the frozen parent on the retention pool (earlier stages' training prompts plus the "
        "shipped general prompts, no suite prompt).",
        f"- General suite: all {general['total']} questions (the base answers {general['base_right']} "
        "right); its change from the base is paired on the same items. Test suites are scored greedily "
        f"(`{plan['eval_backend']}`) after every stage; every candidate also goes through the service's gate "
        "against its parent.",
        *(
            [
                "- General (choices): the same questions as choices among four answers of the same kind, "
                "scored by likelihood; the gate holds general knowledge to this suite, because at 135M about "
                "ten greedy answers of 80 flip each way with any change to the weights.",
            ]
            if "general_choice" in raw
            else []
        ),
        "",
        "Recipes:",
        "",
        *[f"- `{name}`: {plan['recipe_details'][name]['description']}." for name in plan["recipes"]],
        "",
        "## Result",
        "",
        "Means over seeds, 95% interval over seeds in brackets (points).",
        "",
    ]
    headers = [
        "recipe",
        *(f"{s} (new)" for s in skills),
        "learned skills at the end",
        "general at the end",
        "general (choices) at the end",
        "general kept of base-right",
        "gates passed",
    ]
    rows = []
    for name, lineages in recipes.items():
        finished = [lin for lin in lineages if len(lin["stages"]) == len(skills)]
        final_learned = [
            sum(lin["stages"][-1]["test_scores"][s]["score"] for s in skills) / len(skills)
            for lin in finished
        ]
        gates = sum(stage["gate"]["accepted"] for lin in lineages for stage in lin["stages"])
        total = sum(len(lin["stages"]) for lin in lineages)
        rows.append(
            [
                f"`{name}`",
                *(_interval(new_skill_scores(lineages, i)) for i in range(len(skills))),
                _interval(final_learned),
                _interval(general_deltas(finished, len(skills) - 1), sign=True),
                _interval(general_deltas(finished, len(skills) - 1, "general_choice_delta"), sign=True),
                _interval([lin["stages"][-1]["general_kept_of_base_right"] for lin in finished]),
                f"{gates}/{total}",
            ]
        )
    out += _table(headers, rows)
    out += [
        "",
        "### Acceptance: does the service's method learn without forgetting?",
        "",
        *acceptance(raw),
        "",
    ]
    if plot_name:
        out += [
            f"![new-skill score against general kept]({plot_name})",
            "",
            "Left: the first skill with seed 0, one point per recipe and learning rate (the chosen rate "
            "ringed). Right: each recipe's lineages after every stage, mean over seeds.",
            "",
        ]
    out += ["## Forgetting matrices (mean over seeds)", ""]
    for name, lineages in recipes.items():
        out += [f"### `{name}`", "", *_matrix(lineages, skills, raw), ""]
    out += ["## How each stage learned", "", *_stage_table(recipes), ""]
    out += ["## Method choice (`auto`) and teacher readiness", "", *_readiness_table(recipes), ""]
    grid = _grid_table(raw) if raw["grid"] else ["Not run: one rate given, and seed 0 is not in this run."]
    out += ["## Learning-rate grid (first skill, seed 0)", "", *grid, ""]
    out += ["## Gate verdicts", "", *_gate_table(recipes), ""]
    return "\n".join(out).rstrip() + "\n"


def _matrix(
    lineages: Sequence[Mapping[str, Any]], skills: Sequence[str], raw: Mapping[str, Any]
) -> list[str]:
    general = raw["general"]["name"]
    suites = [*skills, general, *([raw["general_choice"]["name"]] if "general_choice" in raw else [])]
    base = raw["base_scores"]
    rows = [["base", *(_fmt(base[s]["score"]) for s in suites)]]
    for index, skill in enumerate(skills):
        cells = []
        for suite in suites:
            values = [
                lin["stages"][index]["test_scores"][suite]["score"]
                for lin in lineages
                if len(lin["stages"]) > index
            ]
            cells.append(_interval(values))
        rows.append([f"after {skill}", *cells])
    return _table(["model", *suites], rows)


def _series(pairs: Sequence[Sequence[float]]) -> str:
    return " → ".join(f"{value:.2f}" for _, value in pairs) if pairs else "–"


def _stage_table(recipes: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    rows = []
    for name, lineages in recipes.items():
        for lin in lineages:
            for stage in lin["stages"]:
                t = stage["training"]
                rows.append(
                    [
                        f"`{name}`",
                        str(lin["seed"]),
                        stage["skill"],
                        stage["method"],
                        f"{stage['learning_rate']:g}",
                        f"{t['seconds_per_step']:.1f}",
                        f"{_fmt(t['first_loss'], 3)} → {_fmt(t['last_loss'], 3)}",
                        _series(t["probe_divergence"]),
                        _series(t["probe_score"]),
                        _fmt(t["loss_top5_share"], 2),
                        "yes" if t["stalled"] else "",
                    ]
                )
    return [
        "Probe: a fixed batch of the stage's own demonstrations, measured before training and every "
        "quarter of the steps: KL(teacher with the demonstration ‖ student) per token, and the share of "
        "those prompts the student answers right greedily. Top-5% share: how much of a step's loss the top "
        "5% of token positions carry (1 = all of it).",
        "",
        *_table(
            [
                "recipe",
                "seed",
                "skill",
                "method",
                "lr",
                "s/step",
                "loss",
                "probe KL",
                "probe score",
                "top-5% share",
                "stalled",
            ],
            rows,
        ),
    ]


def _readiness_table(recipes: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    rows = []
    for name, lineages in recipes.items():
        for lin in lineages:
            for stage in lin["stages"]:
                report = stage.get("readiness")
                if not report:
                    continue
                sample = report.get("student_sample_rate")
                rows.append(
                    [
                        f"`{name}`",
                        str(lin["seed"]),
                        stage["skill"],
                        f"{100 * report['student_rate']:.0f}%",
                        f"{100 * report['teacher_rate']:.0f}%",
                        "–" if sample is None else f"{100 * sample:.0f}%",
                        "ready" if report["ready"] else "not ready",
                        (stage.get("choice") or {}).get("reason", "–"),
                    ]
                )
    if not rows:
        return ["No stage was probed."]
    return [
        "Held-out demonstrations, greedy answers without (student) and with (teacher) the demonstration "
        "in context, and the share of the student's own samples (temperature 1) that reach the answer.",
        "",
        *_table(
            ["recipe", "seed", "skill", "student", "teacher", "student samples", "teacher", "auto's choice"],
            rows,
        ),
    ]


def _grid_table(raw: Mapping[str, Any]) -> list[str]:
    rows = [
        [
            f"`{row['recipe']}`",
            f"{row['learning_rate']:g}",
            _fmt(row["validation_new_skill"]),
            _fmt(row["validation_general_delta"], sign=True),
            _fmt(row["test_new_skill"]),
            _fmt(row["test_general_delta"], sign=True),
            "yes" if row.get("chosen") else "",
        ]
        for row in raw["grid"]
    ]
    return _table(
        [
            "recipe",
            "lr",
            "validation: new skill",
            "validation: general",
            "test: new skill",
            "test: general",
            "chosen",
        ],
        rows,
    )


def _gate_table(recipes: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    rows = [
        [
            f"`{name}`",
            str(lin["seed"]),
            stage["skill"],
            "accepted" if stage["gate"]["accepted"] else "rejected",
            stage["gate"]["reason"],
        ]
        for name, lineages in recipes.items()
        for lin in lineages
        for stage in lin["stages"]
    ]
    return _table(["recipe", "seed", "skill", "gate", "why"], rows)


def plot_frontier(raw: Mapping[str, Any], path: Path) -> None:
    """New-skill score against general kept: the grid's points, and every recipe's lineage means."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    recipes = list(raw["plan"]["recipes"])
    palette = colormaps["tab10"]
    color = {name: palette(i % palette.N) for i, name in enumerate(recipes)}
    figure = Figure(figsize=(11, 4.6))
    left, right = figure.subplots(1, 2, sharey=True)
    key = _retention_key([lin for lineages in by_recipe(raw).values() for lin in lineages])
    grid_key = "test_general_choice_delta" if key == "general_choice_delta" else "test_general_delta"
    for row in raw["grid"]:
        left.scatter(
            row[grid_key],
            row["test_new_skill"],
            color=color[row["recipe"]],
            s=60,
            edgecolors="black" if row.get("chosen") else "none",
            linewidths=1.5,
        )
        left.annotate(
            f"{row['learning_rate']:g}",
            (row[grid_key], row["test_new_skill"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    left.set_title(f"{raw['plan']['skills'][0]}, seed 0: each learning rate")
    if not raw["grid"]:
        left.text(0.5, 0.5, "no grid in this run", ha="center", va="center", transform=left.transAxes)
    skills = raw["plan"]["skills"]
    for name, lineages in by_recipe(raw).items():
        xs, ys = [], []
        for index in range(len(skills)):
            deltas = general_deltas(lineages, index, key)
            scores = new_skill_scores(lineages, index)
            if deltas and scores:
                xs.append(mean_t_interval(deltas)[0])
                ys.append(mean_t_interval(scores)[0])
        right.plot(xs, ys, marker="o", color=color[name], label=name)
        for index, (x, y) in enumerate(zip(xs, ys, strict=True)):
            right.annotate(skills[index], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    right.set_title("after each stage: that stage's skill, mean over seeds")
    for axes in (left, right):
        axes.axvline(-GENERAL_TOLERANCE, color="grey", linestyle="--", linewidth=1)
        axes.set_xlabel(
            "general"
            + (" (choices)" if key == "general_choice_delta" else "")
            + ": change from the base (points)"
        )
    left.set_ylabel("new skill: test score (points)")
    right.legend(fontsize="small", loc="best")
    figure.suptitle(f"{raw['base']['name']}: learning the new skill against keeping general knowledge")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)


def write_report(raw_path: Path, log: Log = print) -> Path:
    """The Markdown report and the plot beside a raw record (`<label>.json` -> `.md`, `.png`)."""
    raw = json.loads(raw_path.read_text())
    plot_path = raw_path.with_suffix(".png")
    plot_frontier(raw, plot_path)
    report = raw_path.with_suffix(".md")
    report.write_text(render_report(raw, plot_name=plot_path.name, raw_name=raw_path.name))
    log(f"report: {report}")
    return report
