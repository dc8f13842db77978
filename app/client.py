"""The `sdft` client commands: talk to the API over HTTP, plus `serve` and `tokens create` (direct DB).

Token: `SDFT_TOKEN`, else ``token`` in ``~/.config/sdft/config.json`` (``$XDG_CONFIG_HOME`` honoured).
Base URL: `SDFT_API_URL`, else ``api_url`` in that file, else http://127.0.0.1:8000.
`add_client_commands(subparsers)` registers the commands on another argparse parser (the `sdft`
console script); `main(argv)` runs them standalone.

Exit codes: 0 done (a followed job succeeded); 1 the API refused the request, or a followed job ended
otherwise; 2 a usage error, an unusable local file or URL, an API that cannot be reached or something
else answering in its place; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"
TIMEOUT_SECONDS = 60.0
BUSY_RETRIES = 5
MAX_RETRY_AFTER_SECONDS = 30.0
# Spelled as literals so that parsing a command never imports the server stack;
# tests/app/test_client_choices.py keeps each equal to the server's definition.
MAX_PAGE_LIMIT = 100  # app.pagination.MAX_LIMIT
SSE_HEARTBEAT_SECONDS = 15.0  # the default Settings.sse_heartbeat_seconds
JOB_SUCCEEDED = "succeeded"  # JobStatus.SUCCEEDED
# --follow: a stream silent for three keep-alive periods is dead (a dropped NAT/VPN path sends no FIN).
FOLLOW_READ_TIMEOUT_SECONDS = 3 * SSE_HEARTBEAT_SECONDS
# --follow gives up after this many failed connections in a row, waiting 1, 2, 4... s between them.
FOLLOW_FAILURES = 5
FOLLOW_BACKOFF_SECONDS = 1.0
MIN_RECONNECT_SECONDS = 0.5
URL_HINT = "is SDFT_API_URL right?"


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def usage_error(message: str) -> ClientError:
    """A problem with how the client is used or set up (arguments, a local file, the URL and what
    answers there): exit 2, like argparse's usage errors and an unreachable API."""
    return ClientError(message, exit_code=2)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def tcp_port(text: str) -> int:
    """argparse type for a port to listen on."""
    value = _integer(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1 to 65535)")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def page_limit(text: str) -> int:
    """argparse type for --limit: the page sizes the API accepts (1..MAX_PAGE_LIMIT)."""
    value = positive_int(text)
    if value > MAX_PAGE_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PAGE_LIMIT}, got {value}")
    return value


def api_path(template: str, /, **values: Any) -> str:
    """`template` with each {name} filled by its value as one percent-encoded path segment: an id with
    '/', '?', '#' or a bare '.'/'..' must not reach another resource (`files delete ../webhooks/wh_1`)."""
    segments = {
        name: "%2E" * len(value) if value in (".", "..") else quote(value, safe="")
        for name, value in values.items()
        if isinstance(value, str)
    }
    return template.format_map(segments)


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sdft" / "config.json"


def _config() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 or not JSON
        raise usage_error(f"cannot read {path}: {exc}") from None
    return value if isinstance(value, dict) else {}


def _check_url(url: str, source: str) -> str:
    """`url` if it is an http(s) URL with a host; a ClientError naming where it came from if not."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise usage_error(f"{source} {url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise usage_error(f"{source} {url!r} is not an http:// or https:// URL with a host")
    return url


class ApiClient:
    def __init__(self, base_url: str, token: str | None, *, source: str = "the API URL") -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(
            base_url=_check_url(base_url, source), headers=headers, timeout=TIMEOUT_SECONDS
        )

    @classmethod
    def from_environment(cls) -> ApiClient:
        config = _config()
        if os.environ.get("SDFT_API_URL"):
            base_url, source = os.environ["SDFT_API_URL"], "SDFT_API_URL"
        elif config.get("api_url"):
            base_url, source = str(config["api_url"]), f"api_url in {config_path()}"
        else:
            base_url, source = DEFAULT_API_URL, "the default API URL"
        token = os.environ.get("SDFT_TOKEN") or config.get("token")
        return cls(base_url, str(token) if token else None, source=source)

    def request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        """One API call (the JSON answer, or its bytes with `raw`). A busy API's 503 + Retry-After is
        retried when repeating is safe: reads, and writes that carry an Idempotency-Key (the server
        returns the first result for a repeat)."""
        repeatable = method in ("GET", "HEAD") or "Idempotency-Key" in kwargs.get("headers", {})
        for attempt in range(BUSY_RETRIES + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ClientError(f"cannot reach {self.http.base_url}: {exc}", exit_code=2) from None
            if response.is_success:
                return _success_body(response, raw)
            wait = retry_after_seconds(response)
            if not repeatable or wait is None or attempt == BUSY_RETRIES:
                break
            time.sleep(wait)
        raise _error(response)

    def stream_events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, data) from the job's server-sent events until the server says `end`.

        The server closes a stream after sse_max_seconds and expects a reconnect, so a clean close is
        no failure. A dropped connection, one silent past FOLLOW_READ_TIMEOUT_SECONDS and a busy 503 are;
        FOLLOW_FAILURES of them in a row end the watch. Every reconnect resumes with Last-Event-ID."""
        path = api_path("/v1/jobs/{job_id}/events", job_id=job_id)
        timeout = httpx.Timeout(TIMEOUT_SECONDS, read=FOLLOW_READ_TIMEOUT_SECONDS)
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self.http.stream(
                    "GET", path, params={"stream": "true"}, headers=headers, timeout=timeout
                ) as response:
                    busy = retry_after_seconds(response)
                    if busy is None:
                        _check_event_stream(response)
                        opened, received = time.monotonic(), False
                        for event_id, event_type, data in _parse_sse(response.iter_lines()):
                            failures, received = 0, True  # only failures in a row count
                            yield event_type, data
                            if event_type == "end":
                                return
                            last_id = event_id or last_id
                        # A clean close (the server's stream limit): reconnect, at most twice a
                        # second, so that a stream that closes at once with nothing never spins.
                        if not received:
                            time.sleep(max(0.0, MIN_RECONNECT_SECONDS - (time.monotonic() - opened)))
                        continue
                    response.read()
                    failure, wait = _error(response), busy
            except httpx.TransportError as exc:
                failure = ClientError(
                    f"lost the event stream of {job_id}: {exc.__class__.__name__}: {exc}", exit_code=2
                )
                wait = FOLLOW_BACKOFF_SECONDS * 2**failures
            failures += 1
            if failures >= FOLLOW_FAILURES:
                raise ClientError(
                    f"gave up after {failures} failed connections in a row: {failure}", failure.exit_code
                )
            time.sleep(min(wait, MAX_RETRY_AFTER_SECONDS))


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a 503 asks for (Retry-After in seconds, capped), or None if it asks for none."""
    value = response.headers.get("Retry-After", "")
    if response.status_code != 503 or not value.isdigit():
        return None
    return min(float(value), MAX_RETRY_AFTER_SECONDS)


def _not_the_api(response: httpx.Response, what: str) -> ClientError:
    """Something other than the API answered (a login page, a proxy's own error): not this request's
    fault but the setup's, so exit 2 like an unreachable API."""
    content_type = response.headers.get("Content-Type", "no Content-Type")
    return usage_error(
        f"{response.request.method} {response.request.url} {what} "
        f"({response.status_code}, {content_type}): {response.text[:200]!r} ({URL_HINT})"
    )


def _success_body(response: httpx.Response, raw: bool) -> Any:
    """The answer's bytes (`raw`) or JSON. An HTML page is never the API's: a proxy's login page."""
    if response.headers.get("Content-Type", "").startswith("text/html"):
        raise _not_the_api(response, "answered an HTML page")
    if raw:
        return response.content
    try:
        return response.json()
    except ValueError:
        raise _not_the_api(response, "did not answer JSON") from None


def _error(response: httpx.Response) -> ClientError:
    """The API's error answer as a ClientError (exit 1), with the row problems it lists; an error in
    any other shape did not come from the API."""
    try:
        error = response.json()["error"]
        message = f"{response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return _not_the_api(response, "answered an error that is not the API's")
    problems = _row_problems(error)
    if problems:  # listed in full below: the message's own excerpt of them (suites) would repeat them
        message = message.split("\n", 1)[0]
    param = f" (param: {error['param']})" if error.get("param") else ""
    return ClientError("\n".join([message + param, *(f"  {line}" for line in problems)]))


def _row_problems(error: dict[str, Any]) -> list[str]:
    """`line N: field: reason` for each row problem an error lists: a refused upload's report
    (error.report.problems, app/files) or a suite that does not fit its file (error.problems, app/suites)."""
    report = error.get("report")
    listing = report if isinstance(report, dict) else error
    problems = [p for p in listing.get("problems") or [] if isinstance(p, dict)]
    lines = [
        f"line {p['line']}: {p.get('field')}: {p.get('reason')}"
        if p.get("line") is not None
        else f"{p.get('field')}: {p.get('reason')}"  # a whole-file problem
        for p in problems
    ]
    total = listing.get("problems_total")
    if isinstance(total, int) and total > len(problems):
        lines.append(f"... and {total - len(problems)} more")
    return lines


def _check_event_stream(response: httpx.Response) -> None:
    if not response.is_success:
        response.read()
        raise _error(response)
    if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
        response.read()
        raise _not_the_api(response, "did not answer an event stream")


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, dict[str, Any]]]:
    event_id: str | None = None
    event_type = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, event_type, _event_data("\n".join(data))
            event_id, event_type, data = None, "message", []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                event_id = value
            elif field == "event":
                event_type = value
            elif field == "data":
                data.append(value)


def _event_data(text: str) -> dict[str, Any]:
    """An event's data: the API always sends a JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise usage_error(
            f"the event stream sent data that is not a JSON object: {text[:200]!r} ({URL_HINT})"
        )
    return value


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _open_input(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:  # missing, a folder, unreadable
        raise usage_error(f"cannot read {path}: {exc.strerror}") from None


def _output_path(name: str) -> Path:
    """Where to write a download, checked before downloading."""
    path = Path(name)
    if path.is_dir():
        raise usage_error(f"cannot write {path}: it is a folder")
    if not path.parent.is_dir():
        raise usage_error(f"cannot write {path}: there is no folder {path.parent}")
    return path


# --------------------------------------------------------------------------- handlers


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.bootstrap import ensure_embedded
    from app.settings import get_settings

    settings = get_settings()
    if settings.is_sqlite:  # the embedded default sets itself up; production runs migrations separately
        print(f"admin token: {ensure_embedded(settings)}", file=sys.stderr)
    workers = args.api_workers or settings.api_workers
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=workers)
    return 0


def _tokens_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from app.auth.schemas import TokenCreate
    from app.auth.service import create_token
    from app.bootstrap import database_problem
    from app.db import make_engine, make_sessionmaker, session_scope
    from app.errors import loc_to_param
    from app.settings import get_settings

    try:  # the API's own rules for a new token
        body = TokenCreate(name=args.name, team=args.team, scopes=args.scope)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise usage_error(f"{loc_to_param(error['loc'])}: {error['msg']}") from None
    settings = get_settings()
    problem = database_problem(settings)
    if problem is not None:
        raise usage_error(f"{problem} (or set SDFT_DATA_DIR / SDFT_DATABASE_URL)")
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            token, secret = create_token(session, name=body.name, scopes=body.scopes, team=body.team)
    finally:
        engine.dispose()
    print(
        f"created {token.id} for team {token.team} with scopes {', '.join(token.scopes)}; "
        "the token is shown only once:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    for token in ApiClient.from_environment().request("GET", "/v1/tokens")["data"]:
        state = "revoked" if token["revoked_at"] else "active"
        scopes = ",".join(token["scopes"]) or "-"
        prefix = token["prefix"] or "-"
        print(f"{token['id']}  {prefix:<13} {token['team']:<16} {state:<8} {scopes}  {token['name']}")
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().request("DELETE", api_path("/v1/tokens/{token_id}", **vars(args))))
    return 0


def _files_upload(args: argparse.Namespace) -> int:
    path = Path(args.path)
    data = {"purpose": args.purpose}
    if args.model:
        data["model"] = args.model
    if args.grader:
        data["grader"] = args.grader
    with _open_input(path) as f:
        _print(
            ApiClient.from_environment().request(
                "POST", "/v1/files", data=data, files={"file": (path.name, f)}
            )
        )
    return 0


def _jobs_create(args: argparse.Namespace) -> int:
    if args.body == "-":
        name, content = "standard input", sys.stdin.buffer.read()
    else:
        name = args.body
        with _open_input(Path(name)) as f:
            content = f.read()
    try:
        body = json.loads(content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise usage_error(f"{name} is not UTF-8 text: {exc}") from None
    except ValueError as exc:
        raise usage_error(f"{name} is not JSON: {exc}") from None
    # Always a key, so that a busy API's 503 can be retried without creating the job twice: the server
    # answers a repeat of the same key and body with the first job.
    headers = {"Idempotency-Key": args.idempotency_key or str(uuid.uuid4())}
    _print(ApiClient.from_environment().request("POST", "/v1/jobs", json=body, headers=headers))
    return 0


def _list(path: str, *filters: str) -> Callable[[argparse.Namespace], int]:
    """GET a page; `filters` name the arguments sent as query parameters besides limit and after."""

    def handler(args: argparse.Namespace) -> int:
        names = (*filters, "limit", "after")
        params: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
        for pair in getattr(args, "metadata", None) or []:
            key, sep, value = pair.partition("=")
            if not sep:
                raise usage_error(f"--metadata takes KEY=VALUE, not {pair!r}")
            params[f"metadata[{key}]"] = value
        _print(ApiClient.from_environment().request("GET", api_path(path, **vars(args)), params=params))
        return 0

    return handler


def _delete(path_template: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        _print(ApiClient.from_environment().request("DELETE", api_path(path_template, **vars(args))))
        return 0

    return handler


def _files_content(args: argparse.Namespace) -> int:
    output = _output_path(args.output) if args.output else None
    path = api_path("/v1/files/{file_id}/content", **vars(args))
    content = ApiClient.from_environment().request("GET", path, raw=True)
    if output is not None:
        try:
            output.write_bytes(content)
        except OSError as exc:
            raise usage_error(f"cannot write {output}: {exc.strerror}") from None
    else:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    return 0


def _jobs_metrics(args: argparse.Namespace) -> int:
    params = {"format": args.format}
    content = ApiClient.from_environment().request(
        "GET", api_path("/v1/jobs/{job_id}/metrics", **vars(args)), params=params, raw=True
    )
    sys.stdout.write(content.decode("utf-8"))
    sys.stdout.flush()
    return 0


def _models_edit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.description is not None:
        body["description"] = args.description or None
    if args.tag is not None:
        body["tags"] = [] if args.tag == [""] else args.tag
    path = api_path("/v1/models/{version_id}", **vars(args))
    _print(ApiClient.from_environment().request("PATCH", path, json=body))
    return 0


def _webhooks_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"url": args.url, "events": args.event}
    if args.description:
        body["description"] = args.description
    created = ApiClient.from_environment().request("POST", "/v1/webhooks", json=body)
    print("the signing secret is shown only once: store it now", file=sys.stderr)
    _print(created)
    return 0


def _jobs_events(args: argparse.Namespace) -> int:
    """A page of events; with --follow, every event until the job ends: exit 0 if it succeeded, 1 if
    it ended otherwise (failed, rejected, cancelled), so scripts can chain on it."""
    client = ApiClient.from_environment()
    if not args.follow:
        path = api_path("/v1/jobs/{job_id}/events", **vars(args))
        _print(client.request("GET", path, params={"limit": args.limit}))
        return 0
    for event_type, data in client.stream_events(args.job_id):
        print(json.dumps({"event": event_type, **data}), flush=True)
        if event_type == "end":
            return 0 if data.get("status") == JOB_SUCCEEDED else 1
    return 1  # not reached: the stream ends with `end` or raises


def _get(path_template: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        _print(ApiClient.from_environment().request("GET", api_path(path_template, **vars(args))))
        return 0

    return handler


def _jobs_cancel(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().request("POST", api_path("/v1/jobs/{job_id}/cancel", **vars(args))))
    return 0


def _promote(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"version": args.version, "force": args.force}
    if args.expected_version is not None:
        body["expected_version"] = None if args.expected_version == "none" else args.expected_version
    if args.reason:
        body["reason"] = args.reason
    path = api_path("/v1/aliases/{alias}", **vars(args))
    _print(ApiClient.from_environment().request("PUT", path, json=body))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"force": args.force}
    if args.expected_version is not None:
        body["expected_version"] = args.expected_version
    if args.reason:
        body["reason"] = args.reason
    path = api_path("/v1/aliases/{alias}/rollback", **vars(args))
    _print(ApiClient.from_environment().request("POST", path, json=body))
    return 0


# --------------------------------------------------------------------------- parser


def add_client_commands(subparsers: Any) -> dict[str, Any]:
    """Register serve, tokens, files, jobs, models, promote, rollback and webhooks on an argparse subparsers
    object.
    Each command sets `func(args) -> int`; run it through `run_command(args)` for uniform error output.
    Returns the nested subparsers by command name, so the `sdft` script can add its own verbs there."""
    serve = subparsers.add_parser("serve", help="run the API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=tcp_port, default=8000)
    serve.add_argument(
        "--api-workers", type=positive_int, help="API processes (default $SDFT_API_WORKERS or 2)"
    )
    serve.set_defaults(func=_serve)

    tokens = subparsers.add_parser("tokens", help="API tokens: create (on the database), list and revoke")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_sub.add_parser(
        "create", help="create a token on the server's database and print it once (operators)"
    )
    create.add_argument(
        "--scope", action="append", required=True, choices=["jobs:write", "models:promote", "admin"]
    )
    create.add_argument("--name", default="cli")
    create.add_argument("--team", default="default", help="the team its files, suites and jobs belong to")
    create.set_defaults(func=_tokens_create)
    listing = tokens_sub.add_parser("list", help="every token by prefix, team and state (admin)")
    listing.set_defaults(func=_tokens_list)
    revoke = tokens_sub.add_parser("revoke", help="revoke a token at once (admin)")
    revoke.add_argument("token_id")
    revoke.set_defaults(func=_tokens_revoke)

    files = subparsers.add_parser("files", help="uploaded files")
    files_sub = files.add_subparsers(dest="files_command", required=True)
    upload = files_sub.add_parser("upload", help="upload and validate a JSONL file")
    upload.add_argument("path")
    upload.add_argument("--purpose", required=True, choices=["demonstrations", "regression_suite"])
    upload.add_argument("--model", help="version id or alias:NAME for token statistics")
    upload.add_argument("--grader", help="regression_suite: grader whose reference rules to check")
    upload.set_defaults(func=_files_upload)
    files_list = files_sub.add_parser("list", help="the team's files, newest first")
    files_list.add_argument("--purpose", choices=["demonstrations", "regression_suite"])
    files_list.add_argument("--limit", type=page_limit)
    files_list.add_argument("--after")
    files_list.set_defaults(func=_list("/v1/files", "purpose"))
    files_content = files_sub.add_parser("content", help="download a file's stored bytes")
    files_content.add_argument("file_id")
    files_content.add_argument("-o", "--output", help="write here instead of standard output")
    files_content.set_defaults(func=_files_content)
    files_delete = files_sub.add_parser("delete", help="delete a file no suite or job uses")
    files_delete.add_argument("file_id")
    files_delete.set_defaults(func=_delete("/v1/files/{file_id}"))

    jobs = subparsers.add_parser("jobs", help="training jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jobs_create = jobs_sub.add_parser("create", help="create a job from a JSON body file ('-' for stdin)")
    jobs_create.add_argument("body")
    jobs_create.add_argument("--idempotency-key")
    jobs_create.set_defaults(func=_jobs_create)
    jobs_get = jobs_sub.add_parser("get")
    jobs_get.add_argument("job_id")
    jobs_get.set_defaults(func=_get("/v1/jobs/{job_id}"))
    jobs_list = jobs_sub.add_parser("list")
    jobs_list.add_argument("--status")
    jobs_list.add_argument("--limit", type=page_limit)
    jobs_list.add_argument("--after")
    jobs_list.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="repeat for more keys")
    jobs_list.set_defaults(func=_list("/v1/jobs", "status"))
    jobs_metrics = jobs_sub.add_parser("metrics", help="one row per training step (JSONL or CSV)")
    jobs_metrics.add_argument("job_id")
    jobs_metrics.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    jobs_metrics.set_defaults(func=_jobs_metrics)
    jobs_cancel = jobs_sub.add_parser("cancel")
    jobs_cancel.add_argument("job_id")
    jobs_cancel.set_defaults(func=_jobs_cancel)
    events = jobs_sub.add_parser("events", help="a page of events, or --follow to stream until the job ends")
    events.add_argument("job_id")
    events.add_argument("--follow", action="store_true")
    events.add_argument("--limit", type=page_limit, default=20)
    events.set_defaults(func=_jobs_events)

    models = subparsers.add_parser("models", help="model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_list = models_sub.add_parser("list")
    models_list.add_argument("--status")
    models_list.add_argument("--limit", type=page_limit)
    models_list.add_argument("--after")
    models_list.add_argument("--skill")
    models_list.add_argument("--alias", help="the version this alias points at")
    models_list.add_argument("--tag")
    models_list.set_defaults(func=_list("/v1/models", "status", "skill", "alias", "tag"))
    models_edit = models_sub.add_parser("edit", help="set a version's description and tags (models:promote)")
    models_edit.add_argument("version_id")
    models_edit.add_argument("--description", help="'' clears it")
    models_edit.add_argument("--tag", action="append", help="repeat for each tag; --tag '' clears them")
    models_edit.set_defaults(func=_models_edit)
    show = models_sub.add_parser("show")
    show.add_argument("version_id")
    show.set_defaults(func=_get("/v1/models/{version_id}"))
    lineage = models_sub.add_parser("lineage")
    lineage.add_argument("version_id")
    lineage.set_defaults(func=_get("/v1/models/{version_id}/lineage"))

    promote = subparsers.add_parser("promote", help="point an alias at a version")
    promote.add_argument("alias")
    promote.add_argument("version")
    promote.add_argument(
        "--expected-version", help="compare-and-set: the version it must point at now ('none')"
    )
    promote.add_argument("--force", action="store_true", help="promote a version that is not accepted")
    promote.add_argument("--reason")
    promote.set_defaults(func=_promote)

    rollback = subparsers.add_parser("rollback", help="move an alias back to its previous version")
    rollback.add_argument("alias")
    rollback.add_argument("--expected-version")
    rollback.add_argument(
        "--force", action="store_true", help="roll back to a version that is not accepted (with --reason)"
    )
    rollback.add_argument("--reason")
    rollback.set_defaults(func=_rollback)

    webhooks = subparsers.add_parser("webhooks", help="webhook endpoints of your team")
    webhooks_sub = webhooks.add_subparsers(dest="webhooks_command", required=True)
    webhooks_create = webhooks_sub.add_parser("create", help="subscribe a URL; prints its secret once")
    webhooks_create.add_argument("url")
    webhooks_create.add_argument(
        "--event",
        action="append",
        required=True,
        choices=["job.status_changed", "version.registered", "alias.moved"],
    )
    webhooks_create.add_argument("--description")
    webhooks_create.set_defaults(func=_webhooks_create)
    webhooks_list = webhooks_sub.add_parser("list")
    webhooks_list.add_argument("--limit", type=page_limit)
    webhooks_list.add_argument("--after")
    webhooks_list.set_defaults(func=_list("/v1/webhooks"))
    webhooks_show = webhooks_sub.add_parser("show")
    webhooks_show.add_argument("webhook_id")
    webhooks_show.set_defaults(func=_get("/v1/webhooks/{webhook_id}"))
    webhooks_delete = webhooks_sub.add_parser("delete")
    webhooks_delete.add_argument("webhook_id")
    webhooks_delete.set_defaults(func=_delete("/v1/webhooks/{webhook_id}"))
    deliveries = webhooks_sub.add_parser("deliveries", help="the delivery log, newest first")
    deliveries.add_argument("webhook_id")
    deliveries.add_argument("--limit", type=page_limit)
    deliveries.add_argument("--after")
    deliveries.set_defaults(func=_list("/v1/webhooks/{webhook_id}/deliveries"))
    return {
        "models": models_sub,
        "jobs": jobs_sub,
        "files": files_sub,
        "tokens": tokens_sub,
        "webhooks": webhooks_sub,
    }


def run_command(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
        return code
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C, typically during --follow: no traceback
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdft", description="sdft-service API client")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
