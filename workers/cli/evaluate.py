"""`sdft eval` and `sdft gate`: score local models on suites, and judge a candidate against its parent."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from app.contracts.rollout_settings import default_engine
from workers.cli.common import backend_problems, quiet_engine_log, report_problems

EVAL_SUITES_HELP = (
    "suite JSONL (repeatable); metadata from FILE.meta.json when present, else --grader and the file name"
)


def _evaluation_option_problems(args: argparse.Namespace) -> list[str]:
    """Checks `sdft eval` and `sdft gate` share: backend available, batch size, token budget, JSON
    output folder."""
    problems = backend_problems(args.backend)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        problems.append(f"max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    if args.batch_size < 1:
        problems.append(f"batch-size: must be >= 1, got {args.batch_size}")
    if args.json:
        problem = _json_target_problem(Path(args.json))
        if problem:
            problems.append(f"json: {problem}")
    return problems


def _json_target_problem(path: Path) -> str | None:
    """Why the JSON report could not be written there, found before any evaluation runs."""
    folder = path.resolve().parent
    if path.is_dir():
        return f"{path} is a directory; name a file"
    if not folder.is_dir():
        return f"the directory of {path} does not exist"
    if not os.access(path if path.exists() else folder, os.W_OK):
        return f"{path} is not writable"
    return None


def _write_json(path: str, document: dict[str, Any]) -> bool:
    """Write the report; False (reported) when that fails after all: the run's results are printed."""
    try:
        Path(path).write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as error:
        print(f"error: json: cannot write {path}: {error.strerror or error}")
        return False
    return True


def _token_override(args: argparse.Namespace) -> int | None:
    """--max-new-tokens for the suites; an invalid one is reported as the option's problem, once,
    not as every suite's metadata problem (which would hide the suites' own)."""
    return args.max_new_tokens if args.max_new_tokens is not None and args.max_new_tokens >= 1 else None


def cmd_eval(args: argparse.Namespace) -> int:
    quiet_engine_log()
    from workers.cli.suite_files import load_suite_spec
    from workers.models.loading import ModelDirError, check_model_dir

    problems: list[str] = []
    suites = []
    for path in args.suite:
        suite, suite_problems = load_suite_spec(
            path, grader=args.grader, max_new_tokens=_token_override(args)
        )
        problems += suite_problems
        if suite is not None:
            suites.append(suite)
    names = [suite.meta.name for suite in suites]
    problems += [
        f"suite name {name!r} is used by more than one file"
        for name in sorted(set(names))
        if names.count(name) > 1
    ]
    try:
        check_model_dir(args.model)
    except ModelDirError as exc:
        problems.append(f"model: {exc}")
    problems += _evaluation_option_problems(args)
    if problems:
        return report_problems(problems)

    from app.evaluation.leakage import template_leakage
    from app.evaluation.results import render_results_table
    from workers.cli.suite_files import SuiteProgressBars
    from workers.evaluation.cache import EvalCache, evaluate_model_dir

    bars = SuiteProgressBars("eval")
    try:
        evaluation = evaluate_model_dir(
            args.model,
            suites,
            backend_kind=args.backend,
            cache=EvalCache(args.cache) if args.cache else None,
            seed=args.seed,
            batch_size=args.batch_size,
            progress=bars,
        )
    finally:
        bars.close()
    print(render_results_table(evaluation.results))
    for result in evaluation.results:
        # The outputs of a failed item are empty, so they cannot leak; count only evaluated ones.
        leakage = template_leakage([record.output for record in result.records if record.score is not None])
        warning = leakage.warning(f"{result.suite_name} outputs")
        if warning:
            print(f"warning: {warning}")
    if args.json:
        document = {
            "model_dir": str(evaluation.model_dir),
            "model_sha256": evaluation.model_sha256,
            "backend": args.backend,
            # What generated: the backend asked for, or transformers where a vLLM engine did not
            # start; None when every suite came from the cache.
            "engine": evaluation.engine,
            "suites": [
                {**result.to_dict(), "cached": cached}
                for result, cached in zip(evaluation.results, evaluation.cached, strict=True)
            ],
        }
        if not _write_json(args.json, document):
            return 2
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    quiet_engine_log()
    from workers.cli.suite_files import load_suite_spec, split_suite_role
    from workers.models.loading import ModelDirError, check_model_dir

    problems: list[str] = []
    suites, roles = [], []
    for spec in args.suite:
        path, role, role_problem = split_suite_role(spec)
        if role_problem:
            problems.append(role_problem)
            continue
        suite, suite_problems = load_suite_spec(
            path, grader=args.grader, max_new_tokens=_token_override(args)
        )
        problems += suite_problems
        if suite is not None:
            suites.append(suite)
            roles.append(role)
    names = [suite.meta.name for suite in suites]
    problems += [
        f"suite name {name!r} is used by more than one file"
        for name in sorted(set(names))
        if names.count(name) > 1
    ]
    for label, model_dir in (("parent", args.parent), ("candidate", args.candidate)):
        try:
            check_model_dir(model_dir)
        except ModelDirError as exc:
            problems.append(f"{label}: {exc}")
    problems += _evaluation_option_problems(args)
    if problems:
        return report_problems(problems)

    from app.evaluation.gate import GateOptions, SuiteComparison, evaluate_gate
    from app.evaluation.leakage import template_leakage
    from app.settings import get_settings
    from workers.cli.suite_files import SuiteProgressBars
    from workers.evaluation.cache import EvalCache, evaluate_model_dir

    cache = EvalCache(args.cache or get_settings().data_dir / "eval-cache")
    evaluations = {}
    for label, model_dir in (("parent", args.parent), ("candidate", args.candidate)):
        bars = SuiteProgressBars(label)
        try:
            evaluations[label] = evaluate_model_dir(
                model_dir,
                suites,
                backend_kind=args.backend,
                cache=cache,
                seed=args.seed,
                batch_size=args.batch_size,
                progress=bars,
            )
        finally:
            bars.close()
    parent, candidate = evaluations["parent"], evaluations["candidate"]
    comparisons = [
        SuiteComparison.for_suite(suite, role, parent_result.item_scores(), candidate_result.item_scores())
        for suite, role, parent_result, candidate_result in zip(
            suites, roles, parent.results, candidate.results, strict=True
        )
    ]
    report = evaluate_gate(
        comparisons,
        parent_checkpoint_sha256=parent.model_sha256,
        candidate_checkpoint_sha256=candidate.model_sha256,
        options=GateOptions(seed=args.seed),
    )
    print(report.render_table())
    for result in candidate.results:
        leakage = template_leakage([record.output for record in result.records if record.score is not None])
        warning = leakage.warning(f"candidate {result.suite_name} outputs")
        if warning:
            print(f"warning: {warning}")
    if args.json:
        document = {
            "report": report.to_dict(),
            "parent": [result.to_dict() for result in parent.results],
            "candidate": [result.to_dict() for result in candidate.results],
        }
        if not _write_json(args.json, document):
            return 2  # not 1, which says "rejected"
    return 0 if report.accepted else 1


def _add_engine_options(parser: argparse.ArgumentParser, seed_help: str) -> None:
    parser.add_argument("--grader", help="grader for suites without a sidecar (default: exact_match)")
    parser.add_argument(
        "--backend",
        choices=["transformers", "vllm"],
        default=default_engine(),
        help="generation engine (default: vllm where installed; transformers if its engine does not start)",
    )
    parser.add_argument("--max-new-tokens", type=int, help="override the suites' decoding.max_new_tokens")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def register(sub: Any) -> None:
    evaluate = sub.add_parser(
        "eval", help="score a local model on regression suites (n, score, 95%% CI, failures)"
    )
    evaluate.add_argument("--model", required=True, help="local Hugging Face model directory")
    evaluate.add_argument("--suite", required=True, action="append", metavar="FILE", help=EVAL_SUITES_HELP)
    _add_engine_options(evaluate, "sampling seed (sampled suites only)")
    evaluate.add_argument("--cache", help="reuse and store results in this evaluation cache directory")
    evaluate.add_argument("--json", metavar="OUT", help="also write every suite's result, item by item, here")
    evaluate.set_defaults(func=cmd_eval)

    gate = sub.add_parser(
        "gate",
        help="promote or reject a candidate against its parent (exit 0 accepted, 1 rejected, 2 bad input)",
    )
    gate.add_argument("--parent", required=True, help="parent model directory")
    gate.add_argument("--candidate", required=True, help="candidate model directory")
    gate.add_argument(
        "--suite",
        required=True,
        action="append",
        metavar="FILE[:prior|:new]",
        help="suite JSONL and its role: prior (default; must hold) or new (the new skill; must improve)",
    )
    _add_engine_options(gate, "bootstrap (and sampling) seed")
    gate.add_argument("--cache", help="evaluation cache directory (default: $SDFT_DATA_DIR/eval-cache)")
    gate.add_argument("--json", metavar="OUT", help="also write the report and both models' results here")
    gate.set_defaults(func=cmd_gate)
