"""The production deployment files (docker-compose.yml, docker/) agree with the code they deploy.

No Docker engine needed: the compose file is read with PyYAML, the Dockerfiles as text, and the
settings, modules and `sdft` commands they name are checked against the package itself, so renaming
a setting, a module or a CLI flag breaks this test rather than a production start. When the
`docker-compose` client is installed, it validates the file as well.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
API_DOCKERFILE = ROOT / "docker" / "api.Dockerfile"
WORKER_DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "models-init",
    "api",
    "worker-default",
    "worker-gpu",
    "vllm",
}
ONE_SHOT = {"migrate", "models-init"}
GPU_SERVICES = {"worker-gpu", "vllm"}
# The services that run the package and so need to find the database, the broker and the storage.
SDFT_SERVICES = {"migrate", "api", "worker-default", "worker-gpu"}
VOLUMES = {"pgdata", "redisdata", "storage", "adapters", "models"}
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """What Compose makes of a value when none of the referenced variables is set."""
    if isinstance(value, str):
        return INTERPOLATION.sub(lambda m: m.group(2) or "", value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `- KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(interpolate(v)) for k, v in env.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Named volume -> container path."""
    return {v.split(":")[0]: v.split(":")[1] for v in service.get("volumes", []) if isinstance(v, str)}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in interpolate(cmd)]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def exec_form(path: Path, keyword: str) -> list[str]:
    forms = [json.loads(args) for kw, args in dockerfile_instructions(path) if kw == keyword]
    assert forms, f"{path.name} has no {keyword} (in exec form)"
    return forms[-1]


def known_setting_names() -> set[str]:
    from app.contracts.rollout_settings import ENV_PREFIX, RolloutSettings
    from app.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    names = {f"{prefix}{name.upper()}" for name in Settings.model_fields if name != "rollout"}
    return names | {f"{ENV_PREFIX}{name.upper()}" for name in RolloutSettings.model_fields}


def sdft_args(argv: list[str]) -> Any:
    """Parse an `sdft ...` command line as the installed console script would."""
    from workers.cli import build_parser

    assert argv[0] == "sdft", argv
    return build_parser().parse_args(argv[1:])


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the service graph


def test_required_services_volumes_and_no_version_key(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= REQUIRED_SERVICES
    assert set(compose["volumes"]) >= VOLUMES
    assert "version" not in compose  # obsolete in the Compose Specification; v2 warns about it


def test_long_running_services_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name in REQUIRED_SERVICES - ONE_SHOT:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert services[name].get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert services[name].get("restart") == "no", name


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    def condition(service: str, dependency: str) -> str:
        return services[service]["depends_on"][dependency]["condition"]

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("api", "migrate") == "service_completed_successfully"
    assert condition("api", "redis") == "service_healthy"
    assert condition("vllm", "models-init") == "service_completed_successfully"
    assert condition("worker-gpu", "vllm") == "service_healthy"
    assert condition("worker-gpu", "api") == "service_healthy"
    assert condition("worker-default", "api") == "service_healthy"
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["vllm"]["healthcheck"]["test"])


def test_gpu_reservations_on_distinct_default_gpus(services: dict[str, dict[str, Any]]) -> None:
    defaults = {}
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        device = devices[0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert ("count" in device) != ("device_ids" in device), name  # Docker rejects both at once
        defaults[name] = interpolate(device.get("device_ids")) or list(range(int(device["count"])))
    # `count: N` means GPUs 0..N-1 to Docker, so two services with counts would share GPU 0.
    assert not set(map(str, defaults["worker-gpu"])) & set(map(str, defaults["vllm"])), defaults
    for name in set(services) - GPU_SERVICES:
        assert "devices" not in str(services[name].get("deploy", "")), f"{name} should not reserve a GPU"


def test_no_password_in_the_file(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${SDFT_POSTGRES_PASSWORD")
    url = services["api"]["environment"]["SDFT_DATABASE_URL"]
    assert "${SDFT_POSTGRES_PASSWORD" in url
    for name in {"postgres", "redis", "vllm"}:
        assert "ports" not in services[name], f"{name} must not be published: it has no authentication"


# --------------------------------------------------------------------------- settings


def test_every_sdft_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = known_setting_names()
    for name, service in services.items():
        unknown = {k for k in environment(service) if k.startswith("SDFT_")} - known
        assert not unknown, f"{name} sets {sorted(unknown)}, which app.settings does not read"


def test_package_services_find_database_broker_and_storage(services: dict[str, dict[str, Any]]) -> None:
    for name in SDFT_SERVICES:
        env = environment(services[name])
        for key in ("SDFT_DATABASE_URL", "SDFT_BROKER_URL", "SDFT_STORAGE_DIR"):
            assert env.get(key), f"{name} lacks {key}"
        assert env["SDFT_BROKER_URL"].startswith("redis://redis:"), name
        assert "@postgres:" in env["SDFT_DATABASE_URL"], name
        if name != "migrate":
            assert volume_mounts(services[name]).get("storage") == env["SDFT_STORAGE_DIR"], name


@pytest.mark.parametrize("name", sorted(SDFT_SERVICES))
def test_service_environment_builds_settings(
    services: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    from app.settings import Settings

    for key in [k for k in os.environ if k.startswith("SDFT_")]:
        monkeypatch.delenv(key)
    env = environment(services[name])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert make_url(settings.database_url).drivername == "postgresql+psycopg"
    importlib.import_module("psycopg")  # the driver that URL names is installed
    assert str(settings.storage_path) == env["SDFT_STORAGE_DIR"]
    if name == "worker-gpu":
        rollout = settings.rollout
        assert rollout.backend == "vllm-server"
        assert rollout.server_url == "http://vllm:8000"
        # The server reads each adapter at the path the worker wrote it to.
        assert volume_mounts(services["worker-gpu"])["adapters"] == rollout.server_adapter_dir
        assert volume_mounts(services["vllm"])["adapters"] == rollout.server_adapter_dir


# --------------------------------------------------------------------------- commands and images


def test_sdft_commands_parse(services: dict[str, dict[str, Any]]) -> None:
    from app.queue import TASK_QUEUES

    consumed: set[str] = set()
    sdft_args(command(services["models-init"]))
    worker_cmd = exec_form(WORKER_DOCKERFILE, "CMD")
    for argv in (command(services["worker-default"]), worker_cmd):
        args = sdft_args(argv)
        assert args.command == "worker" and args.concurrency == 1, argv
        consumed |= set(args.queues.split(","))
    assert sdft_args(worker_cmd).queues == "gpu"  # one job per GPU; validation runs elsewhere
    assert "command" not in services["worker-gpu"]  # the image's CMD above
    assert consumed == set(TASK_QUEUES.values()), "every task queue needs a worker"


def test_base_model_is_shared(services: dict[str, dict[str, Any]]) -> None:
    out = sdft_args(command(services["models-init"])).out
    assert command(services["vllm"])[0] == out  # the served model is the imported directory
    models_path = volume_mounts(services["models-init"])["models"]
    assert out.startswith(models_path + "/")
    for name in ("api", "worker-default", "worker-gpu", "vllm"):
        assert volume_mounts(services[name]).get("models") == models_path, name
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" in services["vllm"]["environment"]
    assert "--enable-lora" in command(services["vllm"])


def test_vllm_versions_match(services: dict[str, dict[str, Any]]) -> None:
    image_tag = services["vllm"]["image"].rsplit(":", 1)[1].removeprefix("v")
    pinned = [args for kw, args in dockerfile_instructions(WORKER_DOCKERFILE) if kw == "ARG"]
    assert f"VLLM_VERSION={image_tag}" in pinned


def test_api_image(services: dict[str, dict[str, Any]]) -> None:
    instructions = dockerfile_instructions(API_DOCKERFILE)
    assert next(args for kw, args in instructions if kw == "FROM").startswith("python:3.11")
    cmd = exec_form(API_DOCKERFILE, "CMD")
    assert cmd[0] == "uvicorn" and "--factory" in cmd
    module, _, attribute = next(a for a in cmd[1:] if ":" in a).partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    assert ("EXPOSE", "8000") in instructions
    assert "/healthz" in next(args for kw, args in instructions if kw == "HEALTHCHECK")
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert "[gpu]" not in runs and "vllm" not in runs
    # The CPU wheel must be the exact version the package pins, or pip swaps in the CUDA build.
    torch_pin = next(d for d in pyproject()["project"]["dependencies"] if d.startswith("torch"))
    assert f"download.pytorch.org/whl/cpu {torch_pin}" in runs
    for name in ("migrate", "models-init", "api", "worker-default"):
        assert services[name]["build"]["dockerfile"] == "docker/api.Dockerfile", name


def test_worker_image() -> None:
    instructions = dockerfile_instructions(WORKER_DOCKERFILE)
    assert "nvidia/cuda" in " ".join(args for kw, args in instructions if kw in {"ARG", "FROM"})
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert "[gpu]" in runs
    assert pyproject()["project"]["optional-dependencies"]["gpu"] == ["vllm"]
    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_console_script_and_entrypoint(services: dict[str, dict[str, Any]]) -> None:
    target = pyproject()["project"]["scripts"]["sdft"]
    module, _, attribute = target.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    for dockerfile in (API_DOCKERFILE, WORKER_DOCKERFILE):
        copies = [args for kw, args in dockerfile_instructions(dockerfile) if kw == "COPY"]
        assert any("docker/entrypoint.sh /usr/local/bin/sdft-entrypoint" in c for c in copies), dockerfile
    assert services["migrate"]["entrypoint"] == ["sdft-entrypoint"]
    script = ENTRYPOINT.read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in script and 'exec "$@"' in script
    assert "ensure_database(get_settings())" in script
    from app.bootstrap import ensure_database  # the function the script calls

    assert callable(ensure_database)
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(ENTRYPOINT)], check=True, timeout=10)


def test_dockerignore_keeps_what_the_images_need() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= patterns
    needed = {"pyproject.toml", "app", "workers", "migrations", "docker", "docker/entrypoint.sh", "README.md"}
    assert not needed & patterns


def test_docker_compose_validates_the_file() -> None:
    client = shutil.which("docker-compose")
    if client is None:
        pytest.skip("docker-compose (the v1 client, e.g. Debian's package) is not installed")

    def config(**env: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SDFT_")}
        return subprocess.run(
            [client, "-f", str(COMPOSE_FILE), "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**clean, **env},
        )

    result = config(SDFT_POSTGRES_PASSWORD="s3cret")
    assert result.returncode == 0, result.stderr
    # No default password: compose refuses to start without one.
    missing = config()
    assert missing.returncode != 0 and "SDFT_POSTGRES_PASSWORD" in missing.stderr


def test_postgres_accepts_every_api_connection_with_room_for_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    from app.capacity import request_slots
    from app.settings import Settings

    api_env = dict(arg.split("=", 1) for kw, arg in dockerfile_instructions(API_DOCKERFILE) if kw == "ENV")
    api_processes = int(api_env["WEB_CONCURRENCY"])
    command = services["postgres"]["command"]
    max_connections = int(command[command.index("-c") + 1].removeprefix("max_connections="))
    worker_room = 50  # Celery workers and the reaper: a SQLAlchemy pool of at most 15 each
    assert api_processes * request_slots(Settings()) + worker_room <= max_connections
