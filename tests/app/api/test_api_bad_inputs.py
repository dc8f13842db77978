"""A corpus of bad inputs across uploads, suites, jobs, aliases and tokens: every one is a 4xx in the
error shape, and nothing is written (row counts per table and stored files are unchanged). Every case
of the hardening review is here: non-finite and unbounded numbers, format-spec templates, a huge error
report, chunked bodies past the limit, deep nesting, and the rest."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.app.api.conftest import TEST_MAX_UPLOAD_BYTES, demonstration_lines, suite_lines, unique, upload

Call = Callable[[TestClient, dict[str, Any]], Any]


def _job(ctx: dict[str, Any], **stage: Any) -> dict[str, Any]:
    hyperparameters = stage.pop("hyperparameters", {})
    body_extra = stage.pop("body", {})
    base_stage = {"skill": "arith", "training_file": ctx["file"], "suites": [ctx["suite"]], "method": "sft"}
    return {
        "base": ctx["base"],
        "stages": [{**base_stage, **stage, "hyperparameters": hyperparameters}],
        **body_extra,
    }


def _post_job(hyperparameters: dict[str, Any] | None = None, **stage: Any) -> Call:
    def call(client: TestClient, ctx: dict[str, Any]) -> Any:
        body = _job(ctx, hyperparameters=hyperparameters or {}, **stage)
        return client.post("/v1/jobs", json=body, headers=ctx["writer"])

    return call


RAW_STAGE = (
    '{"skill": "a", "training_file": "FILE", "suites": ["SUITE"], "method": "sft", "hyperparameters": '
)


def _raw_job(hyperparameters: str) -> Call:
    """A body Python's JSON writer would refuse (NaN, Infinity), sent as raw text."""
    text = '{"base": "BASE", "stages": [' + RAW_STAGE + hyperparameters + "}]}"

    def call(client: TestClient, ctx: dict[str, Any]) -> Any:
        body = text.replace("FILE", ctx["file"]).replace("SUITE", ctx["suite"]).replace("BASE", ctx["base"])
        headers = {**ctx["writer"], "Content-Type": "application/json"}
        return client.post("/v1/jobs", content=body, headers=headers)

    return call


def _upload(content: str | bytes, purpose: str = "demonstrations", **form: str) -> Call:
    return lambda client, ctx: upload(client, ctx["writer"], content, purpose, **form)


def _suite(**body: Any) -> Call:
    def call(client: TestClient, ctx: dict[str, Any]) -> Any:
        full = {"name": unique("bad"), "file": ctx["suite_file"], "grader": "exact_match", **body}
        return client.post(
            "/v1/suites", json={k: v for k, v in full.items() if v is not ...}, headers=ctx["writer"]
        )

    return call


def _alias(method: str, path: str, body: Any = None, who: str = "admin") -> Call:
    def call(client: TestClient, ctx: dict[str, Any]) -> Any:
        real = json.loads(json.dumps(body).replace("BASE", ctx["base"]))
        return client.request(method, path, json=real, headers=ctx[who])

    return call


def _token(body: Any, who: str = "admin") -> Call:
    return lambda client, ctx: client.post("/v1/tokens", json=body, headers=ctx[who])


def _chunked(size: int, path: str = "/v1/jobs") -> Call:
    """A body sent without Content-Length (chunked), larger than the limit."""

    def chunks() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            sent += 64 * 1024
            yield b"x" * (64 * 1024)

    return lambda client, ctx: client.post(path, content=chunks(), headers=ctx["writer"])


def _chunked_upload(size: int) -> Call:
    """A multipart upload streamed without Content-Length, its file part larger than the limit."""
    boundary = "sdftboundary"

    def parts() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndemonstrations\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        sent = 0
        while sent < size:
            sent += 1024 * 1024
            yield b"x" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    def call(client: TestClient, ctx: dict[str, Any]) -> Any:
        headers = {**ctx["writer"], "Content-Type": f"multipart/form-data; boundary={boundary}"}
        return client.post("/v1/files", content=parts(), headers=headers)

    return call


DEEP = "[" * 100_000 + "]" * 100_000
T = "Q: {question} A: {demonstration}"

CASES: dict[str, tuple[Call, int]] = {
    # ---- uploads
    "upload: empty file": (_upload(""), 422),
    "upload: not utf-8": (_upload(b"\xff\xfe\x00bad"), 400),
    "upload: not JSON": (_upload("nope\n"), 422),
    "upload: a JSON array row": (_upload("[1, 2]\n"), 422),
    "upload: missing demonstration": (_upload('{"prompt": "q"}\n'), 422),
    "upload: empty prompt": (_upload('{"prompt": "", "demonstration": "a"}\n'), 422),
    "upload: unknown key": (_upload('{"prompt": "q", "demonstration": "a", "x": 1}\n'), 422),
    "upload: messages without a user turn": (
        _upload('{"messages": [{"role": "assistant", "content": "a"}]}\n'),
        422,
    ),
    "upload: bad role": (
        _upload('{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'),
        422,
    ),
    "upload: duplicate ids": (_upload('{"id": "a", "prompt": "q", "demonstration": "a"}\n' * 2), 422),
    "upload: deeply nested row": (_upload(DEEP + "\n"), 422),
    "upload: a row that is a JSON string": (_upload('"just text"\n'), 422),
    "upload: bad purpose": (_upload(demonstration_lines(), purpose="weights"), 422),
    "upload: unknown grader": (_upload(suite_lines(), purpose="regression_suite", grader="vibes"), 422),
    "upload: bad filename": (
        lambda c, ctx: upload(c, ctx["writer"], demonstration_lines(), "demonstrations", filename="../x"),
        400,
    ),
    "upload: suite without reference": (_upload('{"prompt": "q"}\n', purpose="regression_suite"), 422),
    "upload: suite with an invalid regex": (
        _upload('{"prompt": "q", "reference": "(("}\n', purpose="regression_suite", grader="regex"),
        422,
    ),
    "upload: U+2028 inside a string is not a row break": (
        _upload('{"prompt": "q\u2028", "demonstration": "a"}\n{"prompt": "q2", "demonstration": \n'),
        422,
    ),
    "upload: a message role that is a list": (
        _upload('{"messages": [{"role": ["user"], "content": "q"}, {"role": "assistant", "content": "a"}]}'),
        422,
    ),
    "upload: an integer of 5000 digits": (
        _upload('{"prompt": "q", "reference": ' + "1" * 5000 + "}\n", purpose="regression_suite"),
        422,
    ),
    "upload: a lone surrogate": (_upload('{"prompt": "q\\ud800", "demonstration": "a"}\n'), 422),
    "upload: chunked body past the limit": (_chunked_upload(60 * 1024 * 1024), 413),
    "upload: model that does not exist": (_upload(demonstration_lines(), model="mv_nope"), 404),
    # ---- suites
    "suite: unknown file": (_suite(file="file_nope"), 404),
    "suite: bad name": (_suite(name="Bad Name!"), 422),
    "suite: infinite tolerance": (
        lambda c, ctx: c.post(
            "/v1/suites",
            content=f'{{"name": "inf-tol", "file": "{ctx["suite_file"]}", "tolerance": Infinity}}',
            headers={**ctx["writer"], "Content-Type": "application/json"},
        ),
        422,
    ),
    "suite: tolerance past the scale": (_suite(tolerance=1e9), 422),
    "suite: negative tolerance": (_suite(tolerance=-1), 422),
    "suite: min_score over 100": (_suite(min_score=101), 422),
    "suite: unknown grader": (_suite(grader="vibes"), 422),
    "suite: bad decoding": (_suite(decoding={"greedy": True, "temperature": 0.7}), 422),
    "suite: huge max_new_tokens": (_suite(decoding={"max_new_tokens": 10**9}), 422),
    "suite: unknown key": (_suite(extra=1), 422),
    "suite: demonstrations file as a suite": (
        lambda c, ctx: c.post(
            "/v1/suites", json={"name": unique("s"), "file": ctx["file"]}, headers=ctx["writer"]
        ),
        422,
    ),
    "suite: grader options that do not exist": (_suite(grader_options={"bogus": 1}), 422),
    # ---- jobs
    "job: epochs Infinity": (
        _raw_job('{"epochs": Infinity}'),
        422,
    ),
    "job: learning_rate Infinity": (
        _raw_job('{"learning_rate": Infinity}'),
        422,
    ),
    "job: learning_rate NaN": (
        _raw_job('{"learning_rate": NaN}'),
        422,
    ),
    "job: NaN in a free-form hyperparameter": (_raw_job('{"chat_template_kwargs": {"x": NaN}}'), 422),
    "job: a lone surrogate in metadata": (
        lambda c, ctx: c.post(
            "/v1/jobs",
            content=json.dumps({**_job(ctx), "metadata": {"k": "\ud800"}}),  # sent as the escape \ud800
            headers={**ctx["writer"], "Content-Type": "application/json"},
        ),
        400,
    ),
    "job: batch 1e9 and 1e12 steps": (_post_job({"batch_size": 1e9, "max_steps": 1e12}), 422),
    "job: learning_rate 5": (_post_job({"learning_rate": 5.0}), 422),
    "job: negative warmup": (_post_job({"warmup_steps": -1}), 422),
    "job: huge epochs": (_post_job({"epochs": 1e6}), 422),
    "job: huge max_new_tokens": (_post_job({"max_new_tokens": 10**7}), 422),
    "job: template with a format spec": (
        _post_job({"teacher_template": "{question:>300000000} {demonstration}"}),
        422,
    ),
    "job: template with an attribute": (
        _post_job({"teacher_template": "{question.__class__} {demonstration}"}),
        422,
    ),
    "job: template with a conversion": (_post_job({"teacher_template": "{question!r} {demonstration}"}), 422),
    "job: template with another field": (_post_job({"teacher_template": T + " {secret}"}), 422),
    "job: template without the demonstration": (_post_job({"teacher_template": "{question}"}), 422),
    "job: template with an unmatched brace": (_post_job({"teacher_template": T + " {"}), 422),
    "job: unknown hyperparameter": (_post_job({"learnin_rate": 1e-4}), 422),
    "job: method in hyperparameters": (_post_job({"method": "sdft"}), 422),
    "job: unknown method": (_post_job(method="magic"), 422),
    "job: retention weight 0": (_post_job({"retention_weight": 0}), 422),
    "job: replay fraction 1": (_post_job({"replay_fraction": 1.0}), 422),
    "job: bad skill name": (_post_job(skill="Bad Skill"), 422),
    "job: unknown training file": (_post_job(training_file="file_nope"), 404),
    "job: unknown suite": (_post_job(suites=["suite_nope"]), 404),
    "job: a suite file as training data": (
        lambda c, ctx: c.post(
            "/v1/jobs", json=_job(ctx, training_file=ctx["suite_file"]), headers=ctx["writer"]
        ),
        422,
    ),
    "job: no stages": (
        lambda c, ctx: c.post("/v1/jobs", json={"base": ctx["base"], "stages": []}, headers=ctx["writer"]),
        422,
    ),
    "job: unknown base": (
        lambda c, ctx: c.post("/v1/jobs", json={**_job(ctx), "base": "mv_nope"}, headers=ctx["writer"]),
        404,
    ),
    "job: auto_promote without the scope": (_post_job(body={"auto_promote": "production"}), 403),
    "job: deeply nested body": (
        lambda c, ctx: c.post(
            "/v1/jobs", content=DEEP, headers={**ctx["writer"], "Content-Type": "application/json"}
        ),
        400,
    ),
    "job: chunked body past the limit": (_chunked(2 * 1024 * 1024), 413),
    "job: a reader may not create": (
        lambda c, ctx: c.post("/v1/jobs", json=_job(ctx), headers=ctx["reader"]),
        403,
    ),
    "job: no token": (lambda c, ctx: c.post("/v1/jobs", json=_job(ctx)), 401),
    "job: cancel an unknown job": (
        lambda c, ctx: c.post("/v1/jobs/job_nope/cancel", headers=ctx["writer"]),
        404,
    ),
    # ---- aliases
    "alias: bad name": (_alias("PUT", "/v1/aliases/Bad!Name", {"version": "BASE"}), 422),
    "alias: unknown version": (_alias("PUT", "/v1/aliases/staging-x", {"version": "mv_nope"}), 404),
    "alias: stale expected_version": (
        _alias("PUT", "/v1/aliases/production", {"version": "BASE", "expected_version": "mv_other"}),
        409,
    ),
    "alias: a writer may not promote": (
        _alias("PUT", "/v1/aliases/production", {"version": "BASE"}, who="writer"),
        403,
    ),
    "alias: unknown field": (_alias("PUT", "/v1/aliases/production", {"version": "BASE", "why": "x"}), 422),
    "alias: roll back an unknown alias": (_alias("POST", "/v1/aliases/nope-alias/rollback"), 404),
    "alias: history of an unknown alias": (_alias("GET", "/v1/aliases/nope-alias/history"), 404),
    # ---- tokens
    "token: bad team": (_token({"name": "x", "team": "Bad Team"}), 422),
    "token: bad scope": (_token({"name": "x", "scopes": ["root"]}), 422),
    "token: no name": (_token({"team": "a"}), 422),
    "token: a writer may not create": (_token({"name": "x"}, who="writer"), 403),
    "token: revoke an unknown token": (
        lambda c, ctx: c.delete("/v1/tokens/tok_nope", headers=ctx["admin"]),
        404,
    ),
}


@pytest.fixture(scope="module")
def ctx(
    client: TestClient,
    writer: dict[str, str],
    admin: dict[str, str],
    reader: dict[str, str],
    base_model: dict[str, Any],
    training_file: str,
    suite: dict[str, Any],
) -> dict[str, Any]:
    client.put("/v1/aliases/production", json={"version": base_model["id"]}, headers=admin)
    return {
        "writer": writer,
        "admin": admin,
        "reader": reader,
        "base": base_model["id"],
        "file": training_file,
        "suite": suite["id"],
        "suite_file": suite["file"],
    }


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_4xx_in_the_error_shape_and_writes_nothing(
    client: TestClient, ctx: dict[str, Any], counts: Any, case: str
) -> None:
    call, status = CASES[case]
    before = counts()
    response = call(client, ctx)
    assert response.status_code == status, f"{case}: {response.status_code} {response.text[:500]}"
    error = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}, case
    assert "Traceback" not in response.text
    assert counts() == before, f"{case} wrote something"


def test_a_million_bad_lines_make_a_bounded_report(
    client: TestClient, writer: dict[str, str], counts: Any
) -> None:
    before = counts()
    lines = TEST_MAX_UPLOAD_BYTES // 2 - 1000  # as many bad lines as the upload limit lets through
    response = upload(client, writer, "x\n" * lines, "demonstrations")
    assert response.status_code == 422 and len(response.content) < 100_000
    report = response.json()["error"]["report"]
    assert report["problems_total"] == lines and len(report["problems"]) == 100
    assert report["problems"][0]["line"] == 1
    assert counts() == before


def test_non_finite_numbers_never_reach_the_database(client: TestClient, ctx: dict[str, Any]) -> None:
    body = json.dumps(_job(ctx, hyperparameters={"learning_rate": 1e-4})).replace("0.0001", "Infinity")
    response = client.post(
        "/v1/jobs", content=body, headers={**ctx["writer"], "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error"]["param"].endswith("learning_rate")
