"""The `sdft` client commands: talk to the API over HTTP, plus `serve` and `tokens create` (direct DB).

Token: `SDFT_TOKEN`, else ``token`` in ``~/.config/sdft/config.json`` (``$XDG_CONFIG_HOME`` honoured).
Base URL: `SDFT_API_URL`, else ``api_url`` in that file, else http://127.0.0.1:8000.
`add_client_commands(subparsers)` registers the commands on another argparse parser (the `sdft`
console script); `main(argv)` runs them standalone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_API_URL = "http://127.0.0.1:8000"
TIMEOUT_SECONDS = 60.0
FOLLOW_RECONNECTS = 5
BUSY_RETRIES = 5
MAX_RETRY_AFTER_SECONDS = 30.0


class ClientError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sdft" / "config.json"


def _config() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}") from None
    return value if isinstance(value, dict) else {}


class ApiClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT_SECONDS)

    @classmethod
    def from_environment(cls) -> ApiClient:
        config = _config()
        base_url = os.environ.get("SDFT_API_URL") or config.get("api_url") or DEFAULT_API_URL
        token = os.environ.get("SDFT_TOKEN") or config.get("token")
        return cls(str(base_url), str(token) if token else None)

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
                return response.content if raw else response.json()
            wait = retry_after_seconds(response)
            if not repeatable or wait is None or attempt == BUSY_RETRIES:
                break
            time.sleep(wait)
        raise ClientError(_describe_error(response))

    def stream_events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, data) from the job's server-sent events until the server says `end`; reconnects
        with Last-Event-ID when the connection drops."""
        last_id: str | None = None
        for _attempt in range(FOLLOW_RECONNECTS):
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with self.http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/events",
                    params={"stream": "true"},
                    headers=headers,
                    timeout=None,
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise ClientError(_describe_error(response))
                    for event_id, event_type, data in _parse_sse(response.iter_lines()):
                        if event_type == "end":
                            yield event_type, data
                            return
                        last_id = event_id or last_id
                        yield event_type, data
            except httpx.TransportError:
                time.sleep(1.0)
        raise ClientError(f"lost the event stream of {job_id} {FOLLOW_RECONNECTS} times", exit_code=2)


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a 503 asks for (Retry-After in seconds, capped), or None if it asks for none."""
    value = response.headers.get("Retry-After", "")
    if response.status_code != 503 or not value.isdigit():
        return None
    return min(float(value), MAX_RETRY_AFTER_SECONDS)


def _describe_error(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        param = f" (param: {error['param']})" if error.get("param") else ""
        return f"{response.status_code} {error['code']}: {error['message']}{param}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:500]}"


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, dict[str, Any]]]:
    event_id: str | None = None
    event_type = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, event_type, json.loads("\n".join(data))
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


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


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
    from app.auth.service import Scope, create_token
    from app.db import make_engine, make_sessionmaker, session_scope
    from app.settings import get_settings

    engine = make_engine(get_settings().database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            token, secret = create_token(
                session, name=args.name, scopes=[Scope(s) for s in args.scope], team=args.team
            )
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
    _print(ApiClient.from_environment().request("DELETE", f"/v1/tokens/{args.token_id}"))
    return 0


def _files_upload(args: argparse.Namespace) -> int:
    path = Path(args.path)
    data = {"purpose": args.purpose}
    if args.model:
        data["model"] = args.model
    if args.grader:
        data["grader"] = args.grader
    with path.open("rb") as f:
        _print(
            ApiClient.from_environment().request(
                "POST", "/v1/files", data=data, files={"file": (path.name, f)}
            )
        )
    return 0


def _jobs_create(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.body == "-" else Path(args.body).read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"{args.body} is not JSON: {exc}") from None
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    _print(ApiClient.from_environment().request("POST", "/v1/jobs", json=body, headers=headers))
    return 0


def _list(path: str, *filters: str) -> Callable[[argparse.Namespace], int]:
    """GET a page; `filters` name the arguments sent as query parameters besides limit and after."""

    def handler(args: argparse.Namespace) -> int:
        names = (*filters, "limit", "after")
        params: dict[str, Any] = {k: getattr(args, k) for k in names if getattr(args, k, None)}
        for pair in getattr(args, "metadata", None) or []:
            key, sep, value = pair.partition("=")
            if not sep:
                raise ClientError(f"--metadata takes KEY=VALUE, not {pair!r}")
            params[f"metadata[{key}]"] = value
        _print(ApiClient.from_environment().request("GET", path.format(**vars(args)), params=params))
        return 0

    return handler


def _delete(path_template: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        _print(ApiClient.from_environment().request("DELETE", path_template.format(**vars(args))))
        return 0

    return handler


def _files_content(args: argparse.Namespace) -> int:
    content = ApiClient.from_environment().request("GET", f"/v1/files/{args.file_id}/content", raw=True)
    if args.output:
        Path(args.output).write_bytes(content)
    else:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    return 0


def _jobs_metrics(args: argparse.Namespace) -> int:
    params = {"format": args.format}
    content = ApiClient.from_environment().request(
        "GET", f"/v1/jobs/{args.job_id}/metrics", params=params, raw=True
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
    _print(ApiClient.from_environment().request("PATCH", f"/v1/models/{args.version_id}", json=body))
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
    client = ApiClient.from_environment()
    if not args.follow:
        _print(client.request("GET", f"/v1/jobs/{args.job_id}/events", params={"limit": args.limit}))
        return 0
    for event_type, data in client.stream_events(args.job_id):
        print(json.dumps({"event": event_type, **data}), flush=True)
    return 0


def _get(path_template: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        _print(ApiClient.from_environment().request("GET", path_template.format(**vars(args))))
        return 0

    return handler


def _jobs_cancel(args: argparse.Namespace) -> int:
    _print(ApiClient.from_environment().request("POST", f"/v1/jobs/{args.job_id}/cancel"))
    return 0


def _promote(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"version": args.version, "force": args.force}
    if args.expected_version is not None:
        body["expected_version"] = None if args.expected_version == "none" else args.expected_version
    if args.reason:
        body["reason"] = args.reason
    _print(ApiClient.from_environment().request("PUT", f"/v1/aliases/{args.alias}", json=body))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"force": args.force}
    if args.expected_version is not None:
        body["expected_version"] = args.expected_version
    if args.reason:
        body["reason"] = args.reason
    _print(ApiClient.from_environment().request("POST", f"/v1/aliases/{args.alias}/rollback", json=body))
    return 0


# --------------------------------------------------------------------------- parser


def add_client_commands(subparsers: Any) -> dict[str, Any]:
    """Register serve, tokens, files, jobs, models, promote, rollback and webhooks on an argparse subparsers
    object.
    Each command sets `func(args) -> int`; run it through `run_command(args)` for uniform error output.
    Returns the nested subparsers by command name, so the `sdft` script can add its own verbs there."""
    serve = subparsers.add_parser("serve", help="run the API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
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
    files_list.add_argument("--limit", type=int)
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
    jobs_list.add_argument("--limit", type=int)
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
    events.add_argument("--limit", type=int, default=20)
    events.set_defaults(func=_jobs_events)

    models = subparsers.add_parser("models", help="model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_list = models_sub.add_parser("list")
    models_list.add_argument("--status")
    models_list.add_argument("--limit", type=int)
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
    webhooks_list.add_argument("--limit", type=int)
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
    deliveries.add_argument("--limit", type=int)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sdft", description="sdft-service API client")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
